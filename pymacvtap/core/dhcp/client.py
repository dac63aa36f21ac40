"""A DHCPv4 client as a sans-I/O state machine (RFC 2131 section 4.4), in the manner of aioquic.

The caller owns the clock and the wire.  It passes ``now`` into every call,
feeds received frames (or UDP payloads) in, sends what
:meth:`DhcpClient.frames_to_send` (or :meth:`~DhcpClient.datagrams_to_send`)
hands out, calls :meth:`~DhcpClient.handle_timer` when :meth:`~DhcpClient.get_timer`
is due, and reads what happened from :meth:`~DhcpClient.next_event`.  Randomness
(the transaction id, the retransmission jitter) comes from the ``entropy``
callable, as for the engine, so a test can make every run the same.

States, as in the RFC's figure 5::

    INIT ─DISCOVER─▶ SELECTING ─OFFER/REQUEST─▶ REQUESTING ─ACK─▶ BOUND
    (a saved lease)  REBOOTING ─ACK─▶ BOUND         (NAK anywhere: back to INIT)
    BOUND ─T1─▶ RENEWING (unicast to the server) ─T2─▶ REBINDING (broadcast)
    RENEWING/REBINDING ─ACK─▶ BOUND;  REBINDING ─lease expires─▶ INIT
"""

from __future__ import annotations

import hashlib
from enum import Enum
from ipaddress import IPv4Address

from pymacvtap.core.dhcp.lease import Lease
from pymacvtap.core.dhcp.message import (
    ANY,
    BOOTREPLY,
    BOOTREQUEST,
    BROADCAST_IP,
    CLIENT_PORT,
    FLAG_BROADCAST,
    SERVER_PORT,
    Message,
    MessageType,
    Option,
    decode,
    encode,
)
from pymacvtap.core.dhcp.packet import Datagram, build_frame, parse_frame
from pymacvtap.core.dhcp.value import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

BROADCAST_MAC = b"\xff" * 6
# What the client asks for (option 55): mask, routers, DNS, domain, MTU, broadcast, T1, T2.
PARAMETERS = bytes(
    (
        Option.SUBNET_MASK,
        Option.ROUTER,
        Option.DNS,
        Option.DOMAIN_NAME,
        Option.MTU,
        Option.BROADCAST_ADDRESS,
        Option.LEASE_TIME,
        Option.RENEWAL_TIME,
        Option.REBINDING_TIME,
    )
)
MAX_MESSAGE_SIZE = 1500
DECLINE_WAIT = 10.0  # seconds before discovering again after a DECLINE (RFC 2131 3.1)


class State(Enum):
    INIT = "init"
    SELECTING = "selecting"
    REQUESTING = "requesting"
    REBOOTING = "rebooting"  # INIT-REBOOT: confirming a saved lease
    BOUND = "bound"
    RENEWING = "renewing"
    REBINDING = "rebinding"
    STOPPED = "stopped"  # released, or never started


class LeaseAcquired(Value):
    """A lease to apply: addresses, routes (from INIT or a confirmed saved lease)."""

    __slots__ = ("lease",)

    def __init__(self, lease: Lease) -> None:
        self.lease = lease


class LeaseRenewed(Value):
    """The same address for longer: only the state file needs the new lease."""

    __slots__ = ("lease",)

    def __init__(self, lease: Lease) -> None:
        self.lease = lease


class LeaseLost(Value):
    """The address must come off the netdev.

    ``reason``: nak, expired, released, declined, or changed (a renewal gave another).
    """

    __slots__ = ("lease", "reason")

    def __init__(self, lease: Lease, reason: str) -> None:
        self.lease = lease
        self.reason = reason


Event = LeaseAcquired | LeaseRenewed | LeaseLost


def client_id_for(name: str, mac: bytes, duid: bytes | None = None) -> bytes:
    """A stable client identifier (option 61) in the form of RFC 4361.

    ``0xff``, an IAID, then a DUID.  The IAID is derived from the endpoint's
    name so two endpoints never share one; the DUID is the caller's (the daemon
    may pass one made from the machine id, so that a re-created endpoint with a
    new MAC keeps its address), else a DUID-LL of ``mac`` (RFC 3315 9.4).
    """
    iaid = hashlib.sha256(name.encode()).digest()[:4]
    if duid is None:
        duid = b"\x00\x03\x00\x01" + mac  # DUID-LL, hardware type 1 (Ethernet)
    return b"\xff" + iaid + duid


def prefixlen_of(mask: IPv4Address | None, address: IPv4Address) -> int:
    """The prefix length of a subnet mask; the classful default when it is absent or odd."""
    if mask is not None:
        bits = int(mask)
        length = bin(bits).count("1")
        if bits == (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF:
            return length
    first = int(address) >> 24
    return 8 if first < 128 else 16 if first < 192 else 24


class DhcpClient:
    """One endpoint's DHCP client.

    ``mac`` is the endpoint's address (chaddr and the frames' source);
    ``entropy(n)`` returns n random bytes.  ``min_retry`` is RFC 2131's 60-second
    floor between retransmissions while RENEWING or REBINDING; ``request_attempts``
    is how many times a REQUEST is sent in REQUESTING or REBOOTING before giving up.
    """

    def __init__(
        self,
        mac: bytes,
        entropy: Callable[[int], bytes],
        *,
        client_id: bytes | None = None,
        hostname: str | None = None,
        broadcast_flag: bool = False,
        min_retry: float = 60.0,
        request_attempts: int = 4,
    ) -> None:
        if len(mac) != 6:
            raise ValueError("mac: 6 bytes expected")
        self.mac = bytes(mac)
        self.client_id = client_id
        self.hostname = hostname
        self.broadcast_flag = broadcast_flag
        self.min_retry = min_retry
        self.request_attempts = request_attempts
        self._entropy = entropy
        self.state = State.STOPPED
        self.lease: Lease | None = None
        self._xid = 0
        self._timer: float | None = None
        self._attempt = 0
        self._started = 0.0  # when this exchange began (the secs field)
        self._request_sent = 0.0  # when the latest REQUEST went out: a lease dates from it
        self._offer: Message | None = None
        self._naks = 0
        self._outbox: list[Datagram] = []
        self._events: list[Event] = []

    # -- the caller's interface -----------------------------------------------------------

    def start(self, now: float, lease: Lease | None = None) -> None:
        """Begin: from a saved ``lease`` still valid (INIT-REBOOT), else from INIT."""
        if lease is not None and not lease.expired(now):
            self.lease = lease
            self._new_exchange(now)
            self.state = State.REBOOTING
            self._send_request(now)
        else:
            self.lease = None
            self._discover(now)

    def release(self, now: float) -> None:
        """Give the address back (unicast RELEASE to the server) and stop."""
        lease = self.lease
        if lease is not None and self.state in _HOLDING:
            self._xid = self._new_xid()
            options: dict[int, bytes] = {Option.SERVER_ID: lease.server_id.packed}
            self._queue(MessageType.RELEASE, now, options, ciaddr=lease.address, to_server=True)
            self._events.append(LeaseLost(lease, "released"))
        self.lease = None
        self.state = State.STOPPED
        self._timer = None

    def decline(self, now: float) -> None:
        """The lease's address is in use by another host (the caller found out, by ARP):
        tell the server and start over after 10 seconds (RFC 2131 3.1 step 5)."""
        lease = self.lease
        if lease is None or self.state not in (State.BOUND, State.RENEWING, State.REBINDING):
            return
        self._xid = self._new_xid()
        options: dict[int, bytes] = {
            Option.REQUESTED_IP: lease.address.packed,
            Option.SERVER_ID: lease.server_id.packed,
        }
        self._queue(MessageType.DECLINE, now, options)
        self._events.append(LeaseLost(lease, "declined"))
        self.lease = None
        self._offer = None
        self.state = State.INIT
        self._timer = now + DECLINE_WAIT

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called; None: nothing pending."""
        return self._timer

    def handle_timer(self, now: float) -> None:
        if self._timer is None or now < self._timer:
            return
        state = self.state
        if state is State.INIT:
            self._discover(now)
        elif state is State.SELECTING:
            self._attempt += 1
            self._queue(MessageType.DISCOVER, now, self._discover_options())
            self._timer = now + self._backoff()
        elif state in (State.REQUESTING, State.REBOOTING):
            self._attempt += 1
            if self._attempt < self.request_attempts:
                self._send_request(now)
            elif state is State.REBOOTING and self.lease and not self.lease.expired(now):
                # RFC 2131 3.2: no answer at all, so the saved lease stands until it ends.
                self._bind(now, self.lease, LeaseAcquired(self.lease))
            else:
                self._lose(now, "expired")
        else:
            self._lease_timer(now)

    def receive_frame(self, frame: bytes, now: float) -> None:
        """An Ethernet frame seen on the endpoint; anything not for this client is ignored."""
        dgram = parse_frame(frame)
        if dgram is None or dgram.dst_port != CLIENT_PORT:
            return
        if dgram.dst_mac not in (self.mac, BROADCAST_MAC):
            return
        self.receive_datagram(dgram.payload, now, server_mac=dgram.src_mac)

    def receive_datagram(self, payload: bytes, now: float, server_mac: bytes | None = None) -> None:
        """A UDP payload received on port 68 (``server_mac``: its frame's source, if known)."""
        msg = decode(payload)
        if msg is None or msg.op != BOOTREPLY or msg.xid != self._xid or msg.chaddr != self.mac:
            return
        kind = msg.message_type
        if kind is MessageType.OFFER and self.state is State.SELECTING:
            self._select(msg, now)
        elif kind is MessageType.ACK and self.state in _WAITING_FOR_ACK:
            self._acknowledged(msg, now, server_mac)
        elif kind is MessageType.NAK and self.state in _WAITING_FOR_ACK:
            selected = self._offer.address(Option.SERVER_ID) if self._offer else None
            sender = msg.address(Option.SERVER_ID)
            if self.state is State.REQUESTING and sender not in (None, selected):
                return  # another server's answer to our broadcast: not about our choice
            self._naks += 1
            self._lose(now, "nak")

    def datagrams_to_send(self) -> list[Datagram]:
        """The UDP datagrams to send, oldest first (taken: a second call returns [])."""
        out, self._outbox = self._outbox, []
        return out

    def frames_to_send(self) -> list[bytes]:
        """The same, as Ethernet frames from the endpoint's MAC."""
        return [build_frame(d) for d in self.datagrams_to_send()]

    def next_event(self) -> Event | None:
        return self._events.pop(0) if self._events else None

    # -- transitions ---------------------------------------------------------------------

    def _discover(self, now: float) -> None:
        self._new_exchange(now)
        self.state = State.SELECTING
        self._offer = None
        self._queue(MessageType.DISCOVER, now, self._discover_options())
        self._timer = now + self._backoff()

    def _select(self, offer: Message, now: float) -> None:
        if offer.yiaddr == ANY or offer.address(Option.SERVER_ID) is None:
            return
        self._offer = offer
        self.state = State.REQUESTING
        self._attempt = 0
        self._send_request(now)

    def _acknowledged(self, ack: Message, now: float, server_mac: bytes | None) -> None:
        if self.state is State.REQUESTING:
            assert self._offer is not None
            if ack.address(Option.SERVER_ID) not in (None, self._offer.address(Option.SERVER_ID)):
                return
        lease = self._lease_from(ack, server_mac)
        if lease is None or lease.expired(now):
            return  # unusable, or so late that what it grants is over already
        old = self.lease
        self._naks = 0
        if self.state in (State.RENEWING, State.REBINDING) and old is not None:
            if old.address == lease.address:
                self._bind(now, lease, LeaseRenewed(lease))
                return
            self._events.append(LeaseLost(old, "changed"))
        self._bind(now, lease, LeaseAcquired(lease))

    def _bind(self, now: float, lease: Lease, event: Event) -> None:
        self.lease = lease
        self.state = State.BOUND
        self._events.append(event)
        self._timer = None if lease.infinite else max(now, lease.t1)

    def _lease_timer(self, now: float) -> None:
        """BOUND, RENEWING or REBINDING: the lease's own clock has struck."""
        lease = self.lease
        assert lease is not None
        if lease.expired(now):
            self._lose(now, "expired")
            return
        if now >= lease.t2:
            if self.state is not State.REBINDING:
                self.state = State.REBINDING
                self._new_exchange(now)
            self._send_request(now)
            self._attempt += 1
            self._timer = min(lease.expires, now + max(self.min_retry, (lease.expires - now) / 2))
        elif now >= lease.t1:
            if self.state is not State.RENEWING:
                self.state = State.RENEWING
                self._new_exchange(now)
            self._send_request(now)
            self._attempt += 1
            self._timer = min(lease.t2, now + max(self.min_retry, (lease.t2 - now) / 2))
        else:
            self._timer = lease.t1

    def _lose(self, now: float, reason: str) -> None:
        """Back to INIT: the lease (if any) is gone; discovery starts again."""
        if self.lease is not None:
            self._events.append(LeaseLost(self.lease, reason))
        self.lease = None
        self._offer = None
        self.state = State.INIT
        # Straight away after the first NAK in a row, then 1, 3, 7 ... 63 s: a server
        # NAKing every request must not get a storm of DISCOVERs.
        self._timer = now + (2 ** min(self._naks - 1, 6) - 1 if self._naks > 1 else 0)
        if self._timer <= now:
            self._discover(now)

    # -- building messages -------------------------------------------------------------

    def _new_exchange(self, now: float) -> None:
        self._xid = self._new_xid()
        self._attempt = 0
        self._started = now

    def _new_xid(self) -> int:
        return int.from_bytes(self._entropy(4), "big")

    def _backoff(self) -> float:
        """4, 8, 16, 32, 64, 64 ... seconds, each ±1 s at random (RFC 2131 4.1)."""
        jitter = int.from_bytes(self._entropy(2), "big") / 0x8000 - 1.0
        return float(min(4 << self._attempt, 64)) + jitter

    def _discover_options(self) -> dict[int, bytes]:
        options: dict[int, bytes] = {
            Option.PARAMETER_REQUEST_LIST: PARAMETERS,
            Option.MAX_MESSAGE_SIZE: MAX_MESSAGE_SIZE.to_bytes(2, "big"),
        }
        if self.hostname:
            options[Option.HOSTNAME] = self.hostname.encode()
        return options

    def _send_request(self, now: float) -> None:
        """The REQUEST of the current state (RFC 2131 table 5), and its retransmission.

        The lease an ACK grants dates from the latest transmission: RFC 2131 4.4.1 says
        the original request, but with renewals retransmitted over minutes that would
        shorten the lease by as much, for an ACK that answers the latest one anyway.
        """
        self._request_sent = now
        options = self._discover_options()
        ciaddr = ANY
        to_server = False
        if self.state is State.REQUESTING:
            assert self._offer is not None
            options[Option.REQUESTED_IP] = self._offer.yiaddr.packed
            server = self._offer.address(Option.SERVER_ID)
            assert server is not None
            options[Option.SERVER_ID] = server.packed
            self._timer = now + self._backoff()
        elif self.state is State.REBOOTING:
            assert self.lease is not None
            options[Option.REQUESTED_IP] = self.lease.address.packed
            self._timer = now + self._backoff()
        else:  # RENEWING (to the server) or REBINDING (to anyone): ciaddr says who we are
            assert self.lease is not None
            ciaddr = self.lease.address
            to_server = self.state is State.RENEWING
        self._queue(MessageType.REQUEST, now, options, ciaddr=ciaddr, to_server=to_server)

    def _queue(
        self,
        kind: MessageType,
        now: float,
        options: dict[int, bytes],
        *,
        ciaddr: IPv4Address = ANY,
        to_server: bool = False,
    ) -> None:
        head: dict[int, bytes] = {Option.MESSAGE_TYPE: bytes((kind,))}
        if self.client_id is not None:
            head[Option.CLIENT_ID] = self.client_id
        message = Message(
            op=BOOTREQUEST,
            xid=self._xid,
            chaddr=self.mac,
            options=head | options,
            secs=max(0, min(int(now - self._started), 0xFFFF)),
            flags=FLAG_BROADCAST if self.broadcast_flag and ciaddr == ANY else 0,
            ciaddr=ciaddr,
        )
        lease = self.lease
        unicast = to_server and lease is not None
        self._outbox.append(
            Datagram(
                payload=encode(message),
                src_ip=ciaddr,
                dst_ip=lease.server_id if unicast and lease else BROADCAST_IP,
                src_port=CLIENT_PORT,
                dst_port=SERVER_PORT,
                src_mac=self.mac,
                dst_mac=(lease.server_mac or BROADCAST_MAC) if unicast and lease else BROADCAST_MAC,
            )
        )

    def _lease_from(self, ack: Message, server_mac: bytes | None) -> Lease | None:
        """The lease an ACK grants; None when the ACK is unusable (no address, no time)."""
        lease_time = ack.seconds(Option.LEASE_TIME)
        server = ack.address(Option.SERVER_ID) or (self.lease.server_id if self.lease else None)
        if ack.yiaddr == ANY or lease_time is None or server is None:
            return None
        t1 = ack.seconds(Option.RENEWAL_TIME)
        t2 = ack.seconds(Option.REBINDING_TIME)
        if lease_time != Lease.INFINITE:
            # Defaults of RFC 2131 4.4.5; a server's values are kept only when in order.
            if t2 is None or not 0 < t2 <= lease_time:
                t2 = lease_time * 7 // 8
            if t1 is None or not 0 < t1 <= t2:
                t1 = lease_time // 2
        mtu = ack.options.get(Option.MTU)
        return Lease(
            address=ack.yiaddr,
            prefixlen=prefixlen_of(ack.address(Option.SUBNET_MASK), ack.yiaddr),
            server_id=server,
            obtained=self._request_sent,
            lease_time=lease_time,
            renewal_time=t1 if t1 is not None else Lease.INFINITE,
            rebinding_time=t2 if t2 is not None else Lease.INFINITE,
            routers=tuple(ack.addresses(Option.ROUTER)),
            dns=tuple(ack.addresses(Option.DNS)),
            domain=ack.text(Option.DOMAIN_NAME),
            mtu=int.from_bytes(mtu, "big") if mtu is not None and len(mtu) == 2 else None,
            server_mac=server_mac
            if server_mac is not None
            else (self.lease.server_mac if self.lease else None),
        )


_WAITING_FOR_ACK = (State.REQUESTING, State.REBOOTING, State.RENEWING, State.REBINDING)
# A lease the client believes valid: a saved one being confirmed (REBOOTING) counts, as its
# address may already be on the netdev.
_HOLDING = (State.REBOOTING, State.BOUND, State.RENEWING, State.REBINDING)
