"""One lower's addresses and MAC translation, as the forwarding code meets them (SPEC 9).

:class:`LowerAddressing` joins the lower's :class:`~pymacvtap.core.addresses.AddressBook`
and its :class:`~pymacvtap.core.macnat.MacNat` to the :class:`~pymacvtap.core.port.Port`:
the port calls it at three points only (a frame an endpoint sends, a frame the wire
brings for the lower's MAC, a group frame echoed back with the lower's MAC), so the
forwarding rules in ``port.py`` stay readable as macvlan's.

The clock is the caller's: the daemon's loop sets :attr:`LowerAddressing.now` (seconds of
a monotonic clock) before it feeds frames, as aioquic passes ``now`` in.
"""

from __future__ import annotations

from pymacvtap.core import headers as h
from pymacvtap.core.addresses import AddressBook, Origin
from pymacvtap.core.macnat import Inbound, MacNat, MacNatDrop

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Protocol

    from pymacvtap.core.headers import Buffer

    class Named(Protocol):
        @property
        def name(self) -> str: ...


_ETH_P_ARP_HI, _ETH_P_ARP_LO = 0x08, 0x06


def shows_addresses(data: Buffer) -> bool:
    """Whether a frame an endpoint sends can show one of its addresses: ARP, or ICMPv6
    (ND, whose IPv6 source counts too), judged by a few bytes (untagged frames only).

    Plain IP traffic is left out on purpose: learning from every frame would cost the
    data path a parse per frame, and ARP and ND come regularly from every live host.
    """
    if len(data) < 21:
        return False
    if data[12] == _ETH_P_ARP_HI:
        return data[13] == _ETH_P_ARP_LO
    return data[12] == 0x86 and data[13] == 0xDD and data[20] == h.IPPROTO_ICMPV6


def may_be_dhcp_reply(data: Buffer) -> bool:
    """Whether a frame from the wire may be a DHCP reply (IPv4, no options, UDP to 68)."""
    return (
        len(data) > 37
        and data[12] == 0x08
        and data[13] == 0x00
        and data[14] == 0x45
        and data[23] == h.IPPROTO_UDP
        and data[36] == 0
        and data[37] == h.BOOTP_CLIENT_PORT
    )


class LowerAddressing:
    """The addresses of one lower's endpoints and the translation of its macnat ones."""

    __slots__ = ("book", "nat", "now")

    def __init__(self, lower_mac: bytes) -> None:
        self.book = AddressBook()
        self.nat = MacNat(lower_mac, self.book)
        self.now = 0.0

    # -- configuration (through the Engine) --

    def set_lower_mac(self, mac: bytes) -> None:
        self.nat.lower_mac = mac

    def set_macnat(self, name: str, mac: bytes, on: bool) -> None:
        if on:
            self.nat.add_endpoint(name, mac)
        else:
            self.nat.remove_endpoint(name)

    def remove_endpoint(self, name: str) -> None:
        self.nat.remove_endpoint(name)
        self.book.remove_endpoint(name)

    # -- frames --

    def sent(self, name: str, mac: bytes, data: Buffer) -> None:
        """Learn from a frame a plain (not translated) endpoint sent."""
        self.book.learn_from_sent(name, mac, data, self.now)

    def translate_out(self, name: str, data: Buffer, partial_checksum: bool) -> bytes | MacNatDrop:
        """The wire copy of a macnat endpoint's frame (learning from it on the way)."""
        return self.nat.translate_out(name, data, self.now, partial_checksum=partial_checksum)

    def claim(self, data: Buffer) -> Inbound | None:
        """A frame from the wire that a macnat endpoint owns, rewritten for it."""
        found = self.nat.classify_in(data, self.now)
        if found is not None:
            mac = self.nat.mac_of(found.endpoint)
            self.book.learn_from_received(found.endpoint, mac, found.data, self.now)
        return found

    def echoed_sender(self, data: Buffer) -> str | None:
        """The macnat endpoint whose group frame came back from the wire, if any."""
        return self.nat.sender_of(data, self.now)

    def dhcp_reply(self, data: Buffer, endpoints: Mapping[bytes, Named]) -> None:
        """A DHCP ACK for one of the lower's endpoints (by chaddr) gives it its address."""
        l3 = h.l3_header(data)
        if l3 is None:
            return
        udp = h.udp_of_ipv4(data, l3)
        if udp is None:
            return
        ip, udp_at = udp
        bootp = h.parse_bootp(data, udp_at + 8, l3.offset + ip.total_len)
        if bootp is None:
            return
        ep = endpoints.get(bootp.chaddr)
        if ep is not None:
            self.book.learn_from_received(ep.name, bootp.chaddr, data, self.now)

    # -- time and reading --

    def expire(self, now: float) -> None:
        self.now = now
        self.book.expire(now)
        self.nat.expire(now)

    def next_expiry(self) -> float | None:
        return self.book.next_expiry()

    def learn_netdev(self, name: str, address: bytes) -> bool:
        """An address the kernel reports on the endpoint's netdev (RTM_NEWADDR)."""
        return self.book.learn(name, address, Origin.NETDEV, self.now)

    def forget_netdev(self, name: str, address: bytes) -> bool:
        return self.book.forget(name, address)

    def set_host_address(self, address: bytes, present: bool) -> None:
        """The lower itself has (or lost) ``address``: frames for it stay the host's."""
        if present:
            self.nat.reserved.add(address)
        else:
            self.nat.reserved.discard(address)

    @property
    def active(self) -> bool:
        """Whether any endpoint of the lower has macnat on."""
        return len(self.nat) > 0
