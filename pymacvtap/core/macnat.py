"""MAC translation for lowers whose next hop accepts only the lower's own MAC (SPEC 9).

A Wi-Fi access point drops frames from MACs that did not associate with it; clouds and
hypervisor switches drop unknown MACs.  An endpoint with ``macnat on`` keeps its own MAC
inside, but what it sends to the wire carries the lower's MAC wherever a MAC says "send
to me": the Ethernet source, the ARP sender hardware address, the ND source/target
link-layer options (checksum recomputed).  Frames coming back to the lower's MAC are
given to the endpoint that owns the destination IP (ARP by target IP, IPv4 by
destination, IPv6 by destination then ND target, DHCP replies by transaction), with the
endpoint's MAC put back; the rest stay the host's.  This is what Wi-Fi drivers call
NAT25 (Broadcom "WET", Realtek) and what VirtualBox does for bridged Wi-Fi.

DHCP works with an unmodified client: requests get the BOOTP broadcast flag, so a server
answers to broadcast rather than to a MAC the access point would not deliver to, and
replies are matched back by (xid, chaddr).  ``chaddr`` and the client-id are left as the
client wrote them, so each endpoint keeps its own lease.

What cannot be translated is dropped and counted by name (:class:`MacNatDrop`): non-IP
ethertypes (their MACs would be the endpoint's, which the network refuses or cannot
answer), ARP other than Ethernet/IPv4, ND whose options do not parse (RFC 4861 drops
those anyway), ND redirects (their target link-layer address names another machine).

Only the wire copy is translated: in bridge mode, two macnat endpoints reach each other
directly with their own MACs.  Sans-I/O: frames in, bytes and decisions out, time passed.
"""

from __future__ import annotations

import enum
from collections import OrderedDict

from pymacvtap.core import headers as h
from pymacvtap.core.addresses import AddressBook

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pymacvtap.core.headers import L3, Buffer

XID_CAPACITY = 256  # DHCP transactions in flight per lower
XID_TTL = 60.0  # seconds a transaction waits for its replies after the last request


class MacNatDrop(enum.Enum):
    """Frames an endpoint sent that cannot go out translated; the value is the counter."""

    RUNT = "macnat_runt"
    NON_IP = "macnat_non_ip"
    ARP_UNSUPPORTED = "macnat_arp_unsupported"
    ICMPV6_MALFORMED = "macnat_icmpv6_malformed"
    ND_REDIRECT = "macnat_nd_redirect"


class Inbound:
    """A frame from the wire for the lower's MAC that belongs to ``endpoint``, rewritten."""

    __slots__ = ("data", "endpoint")

    def __init__(self, endpoint: str, data: bytes) -> None:
        self.endpoint = endpoint
        self.data = data

    def __repr__(self) -> str:
        return f"Inbound({self.endpoint!r}, {len(self.data)} bytes)"


class MacNat:
    """The translation state of one lower: its macnat endpoints (by name), DHCP transactions.

    ``book`` is the lower's :class:`AddressBook`; translating a frame out also learns
    from it (before the rewrite, while it still shows the endpoint's own MAC), so the
    replies can be found again.
    """

    def __init__(
        self,
        lower_mac: bytes,
        book: AddressBook,
        *,
        xid_capacity: int = XID_CAPACITY,
        xid_ttl: float = XID_TTL,
    ) -> None:
        self.lower_mac = lower_mac
        self.book = book
        self.xid_capacity = xid_capacity
        self.xid_ttl = xid_ttl
        self._macs: dict[str, bytes] = {}
        self._xids: OrderedDict[tuple[int, bytes], tuple[str, float]] = OrderedDict()
        self.drops: dict[MacNatDrop, int] = {}
        # The host's own addresses on the lower: never an endpoint's, whatever it claims
        # (a container sending ARP for the host's address must not take the host's frames).
        self.reserved: set[bytes] = set()

    # -- configuration ---------------------------------------------------------------------

    def add_endpoint(self, name: str, mac: bytes) -> None:
        self._macs[name] = mac
        self.book.add_endpoint(name)

    def remove_endpoint(self, name: str) -> None:
        """Stop translating for ``name`` (its addresses stay in the book: the caller's)."""
        self._macs.pop(name, None)
        for xid in [x for x, (owner, _) in self._xids.items() if owner == name]:
            del self._xids[xid]

    def __contains__(self, name: object) -> bool:
        return name in self._macs

    def __len__(self) -> int:
        return len(self._macs)

    def mac_of(self, name: str) -> bytes:
        return self._macs[name]

    # -- endpoint -> wire ------------------------------------------------------------------

    def translate_out(
        self, name: str, data: Buffer, now: float, *, partial_checksum: bool = False
    ) -> bytes | MacNatDrop:
        """The frame ``name`` sent, as it must go on the wire, or why it cannot.

        ``partial_checksum``: the frame's L4 checksum is still to be completed (a vnet
        header with NEEDS_CSUM); a rewrite inside the payload then leaves it alone, as the
        completion will sum the new bytes.  The result is never longer than ``data``.
        """
        mac = self._macs[name]
        l3 = h.l3_header(data)
        if l3 is None:
            return self._drop(MacNatDrop.RUNT)
        self.book.learn_from_sent(name, mac, data, now)
        kind = l3.ethertype
        if _source_only(data, l3):
            # Most traffic (TCP, UDP other than DHCP, super-frames of 64 KiB): one copy.
            return bytes(data[:6]) + self.lower_mac + bytes(data[12:])
        buf = bytearray(data)
        buf[6:12] = self.lower_mac
        if kind == h.ETH_P_IP:
            self._dhcp_out(name, buf, l3, now, partial_checksum)
        elif kind == h.ETH_P_IPV6:
            problem = self._nd_out(buf, l3, partial_checksum)
            if problem is not None:
                return self._drop(problem)
        elif kind in (h.ETH_P_ARP, h.ETH_P_RARP):
            arp = h.parse_arp(buf, l3.offset)
            if arp is None:
                return self._drop(MacNatDrop.ARP_UNSUPPORTED)
            sha_at = l3.offset + h.ARP_SHA_AT
            buf[sha_at : sha_at + 6] = self.lower_mac
            if kind == h.ETH_P_RARP and arp.tha == mac:  # "who am I": ask for the lower
                tha_at = l3.offset + h.ARP_THA_AT
                buf[tha_at : tha_at + 6] = self.lower_mac
        else:
            return self._drop(MacNatDrop.NON_IP)
        return bytes(buf)

    def _dhcp_out(self, name: str, buf: bytearray, l3: L3, now: float, partial: bool) -> None:
        """A DHCP request: broadcast flag on, transaction remembered for the replies."""
        udp = h.udp_of_ipv4(buf, l3)
        if udp is None:
            return
        ip, udp_at = udp
        if h.udp_ports(buf, udp_at) != (h.BOOTP_CLIENT_PORT, h.BOOTP_SERVER_PORT):
            return
        bootp_at = udp_at + 8
        bootp = h.parse_bootp(buf, bootp_at, l3.offset + ip.total_len)
        if bootp is None or bootp.op != h.BOOTREQUEST:
            return
        self._remember_xid((bootp.xid, bootp.chaddr), name, now)
        if bootp.flags & h.BOOTP_BROADCAST_FLAG:
            return
        flags = bootp.flags | h.BOOTP_BROADCAST_FLAG
        buf[bootp_at + h.BOOTP_FLAGS_AT : bootp_at + h.BOOTP_FLAGS_AT + 2] = flags.to_bytes(
            2, "big"
        )
        udp_len = (buf[udp_at + 4] << 8) | buf[udp_at + 5]
        if not partial and 8 <= udp_len <= ip.total_len - ip.header_len:
            h.fix_udp4_checksum(buf, ip, udp_at)

    def _nd_out(self, buf: bytearray, l3: L3, partial: bool) -> MacNatDrop | None:
        """Link-layer options of ND messages rewritten to the lower's MAC."""
        ip6 = h.parse_ipv6(buf, l3.offset)
        if ip6 is None or ip6.next_header != h.IPPROTO_ICMPV6:
            return None
        icmp = h.parse_icmpv6(buf, l3)
        if icmp is None:
            # An ND message we could not read would leave with the endpoint's MAC inside.
            return MacNatDrop.ICMPV6_MALFORMED
        _, nd = icmp
        if nd.icmp_type == h.ND_REDIRECT:
            return MacNatDrop.ND_REDIRECT
        options = h.nd_options(buf, nd)
        if options is None:
            return MacNatDrop.ICMPV6_MALFORMED
        changed = False
        for option in options:
            if option.kind in (h.ND_OPT_SOURCE_LL, h.ND_OPT_TARGET_LL):
                if option.length != 8:
                    return MacNatDrop.ICMPV6_MALFORMED  # not an Ethernet address
                buf[option.offset + 2 : option.offset + 8] = self.lower_mac
                changed = True
        if changed and not partial:
            h.fix_icmpv6_checksum(buf, l3.offset, nd)
        return None

    def _remember_xid(self, transaction: tuple[int, bytes], name: str, now: float) -> None:
        self._xids[transaction] = (name, now + self.xid_ttl)
        self._xids.move_to_end(transaction)
        while len(self._xids) > self.xid_capacity:
            self._xids.popitem(last=False)

    def _drop(self, reason: MacNatDrop) -> MacNatDrop:
        self.drops[reason] = self.drops.get(reason, 0) + 1
        return reason

    # -- wire -> endpoint ------------------------------------------------------------------

    def classify_in(self, data: Buffer, now: float) -> Inbound | None:
        """The macnat endpoint a frame from the wire is for, and the frame it gets.

        None: not a macnat endpoint's; the engine handles it as usual (the host's when it
        is for the lower's MAC, flooded when it is a group frame).  A group frame is only
        claimed when it is a DHCP reply to one of our transactions: it then goes to that
        endpoint alone, as a unicast to its MAC.
        """
        l3 = h.l3_header(data)
        if l3 is None:
            return None
        dst = bytes(data[0:6])
        is_group = bool(dst[0] & 1)
        if not is_group and dst != self.lower_mac:
            return None
        kind = l3.ethertype
        name: str | None = None
        if kind == h.ETH_P_IP:
            name = self._dhcp_reply_owner(data, l3, now)
            if name is None and not is_group:
                ip = h.parse_ipv4(data, l3.offset)
                name = None if ip is None else self._owner(ip.dst, now)
        elif is_group:
            return None
        elif kind == h.ETH_P_ARP:
            arp = h.parse_arp(data, l3.offset)
            name = None if arp is None else self._owner(arp.tpa, now)
        elif kind == h.ETH_P_IPV6:
            name = self._ipv6_owner(data, l3, now)
        if name is None:
            return None
        return Inbound(name, self._to_endpoint(data, l3, self._macs[name]))

    def sender_of(self, data: Buffer, now: float) -> str | None:
        """The macnat endpoint that sent a frame now coming back from the wire, if any.

        A group frame an endpoint sent comes back when a VEPA switch hairpins it (or an
        access point echoes it); macvlan spares the sender its own echo by source MAC,
        but translated frames all carry the lower's.  The sender is found by what it
        claimed instead: ARP sender IP, IPv4/IPv6 source, the target of a DAD probe.
        """
        l3 = h.l3_header(data)
        if l3 is None or bytes(data[6:12]) != self.lower_mac:
            return None
        if l3.ethertype == h.ETH_P_ARP:
            arp = h.parse_arp(data, l3.offset)
            return None if arp is None else self._owner(arp.spa, now)
        if l3.ethertype == h.ETH_P_IP:
            ip = h.parse_ipv4(data, l3.offset)
            return None if ip is None else self._owner(ip.src, now)
        if l3.ethertype != h.ETH_P_IPV6:
            return None
        ip6 = h.parse_ipv6(data, l3.offset)
        if ip6 is None:
            return None
        if ip6.src == h.IPV6_UNSPECIFIED:
            icmp = h.parse_icmpv6(data, l3)
            target = None if icmp is None else icmp[1].target
            return None if target is None else self._owner(target, now)
        return self._owner(ip6.src, now)

    def _owner(self, address: bytes, now: float) -> str | None:
        if address in self.reserved:
            return None
        name = self.book.owner(address, now)
        return name if name is not None and name in self._macs else None

    def _ipv6_owner(self, data: Buffer, l3: L3, now: float) -> str | None:
        ip6 = h.parse_ipv6(data, l3.offset)
        if ip6 is None:
            return None
        name = self._owner(ip6.dst, now)
        if name is None and ip6.next_header == h.IPPROTO_ICMPV6:
            icmp = h.parse_icmpv6(data, l3)
            if icmp is not None and icmp[1].target is not None:
                name = self._owner(icmp[1].target, now)
        return name

    def _dhcp_reply_owner(self, data: Buffer, l3: L3, now: float) -> str | None:
        bootp = h.bootp_reply(data, l3)
        if bootp is None:
            return None
        found = self._xids.get((bootp.xid, bootp.chaddr))
        if found is None:
            return None
        name, expires = found
        if expires <= now:
            del self._xids[(bootp.xid, bootp.chaddr)]
            return None
        return name if name in self._macs else None

    def _to_endpoint(self, data: Buffer, l3: L3, mac: bytes) -> bytes:
        """The frame with the endpoint's MAC where the lower's stood for it."""
        buf = bytearray(data)
        buf[0:6] = mac
        if l3.ethertype == h.ETH_P_ARP:
            tha_at = l3.offset + h.ARP_THA_AT
            if buf[tha_at : tha_at + 6] == self.lower_mac:
                buf[tha_at : tha_at + 6] = mac
        return bytes(buf)

    # -- time --------------------------------------------------------------------------------

    def expire(self, now: float) -> int:
        """Forget DHCP transactions whose replies are overdue; returns how many went."""
        gone = [t for t, (_, expires) in self._xids.items() if expires <= now]
        for transaction in gone:
            del self._xids[transaction]
        return len(gone)

    def transactions(self) -> int:
        return len(self._xids)


def _source_only(data: Buffer, l3: L3) -> bool:
    """Whether nothing but the source MAC needs rewriting: IP that is neither UDP over
    IPv4 (DHCP) nor ICMPv6 (ND), judged by the protocol byte alone."""
    at = l3.offset
    if l3.ethertype == h.ETH_P_IP:
        return len(data) > at + 9 and data[at] >> 4 == 4 and data[at + 9] != h.IPPROTO_UDP
    if l3.ethertype == h.ETH_P_IPV6:
        return len(data) > at + 6 and data[at] >> 4 == 6 and data[at + 6] != h.IPPROTO_ICMPV6
    return False
