"""Just enough of Ethernet, ARP, IPv4/UDP/BOOTP, IPv6 and ICMPv6 ND to learn and translate.

Address learning, announcements and MAC translation (SPEC 9) read a handful of fields
from frames and rewrite fewer.  Every parser here takes the frame's bytes (``bytes``,
``bytearray`` or ``memoryview``) and an offset, checks the lengths it relies on, and
returns ``None`` for anything it does not understand: frames come from untrusted users,
so a short or odd frame is an answer ("not this protocol"), never an exception.
Builders return fresh ``bytes``.  Addresses are raw bytes throughout (4 or 16 of them),
as the engine keys its tables by raw MACs.
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeAlias

    Buffer: TypeAlias = bytes | bytearray | memoryview

ETH_HLEN = 14
ETH_ZLEN = 60  # the shortest frame without FCS: builders pad to it
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
ETH_P_RARP = 0x8035
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
_VLAN_TYPES = (ETH_P_8021Q, ETH_P_8021AD)
_MAX_VLAN_TAGS = 2  # QinQ: an outer and an inner tag

ARPOP_REQUEST = 1
ARPOP_REPLY = 2
ARPOP_RREQUEST = 3  # RARP "request reverse"
ARP_HLEN = 28  # Ethernet/IPv4 ARP body

IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPV6_HLEN = 40

BOOTP_SERVER_PORT = 67
BOOTP_CLIENT_PORT = 68
BOOTREQUEST = 1
BOOTREPLY = 2
BOOTP_BROADCAST_FLAG = 0x8000
BOOTP_FIXED_LEN = 236  # up to (not including) the magic cookie
DHCP_MAGIC = b"\x63\x82\x53\x63"
DHCP_OPT_PAD = 0
DHCP_OPT_LEASE_TIME = 51
DHCP_OPT_MESSAGE_TYPE = 53
DHCP_OPT_CLIENT_ID = 61
DHCP_OPT_END = 255
DHCPACK = 5

ND_ROUTER_SOLICIT = 133
ND_ROUTER_ADVERT = 134
ND_NEIGHBOR_SOLICIT = 135
ND_NEIGHBOR_ADVERT = 136
ND_REDIRECT = 137
ND_OPT_SOURCE_LL = 1
ND_OPT_TARGET_LL = 2
ND_NA_FLAG_OVERRIDE = 0x20  # first byte of the NA flags word
# Where each ND message's options start, counted from the ICMPv6 header.
ND_OPTIONS_AT = {
    ND_ROUTER_SOLICIT: 8,
    ND_ROUTER_ADVERT: 16,
    ND_NEIGHBOR_SOLICIT: 24,
    ND_NEIGHBOR_ADVERT: 24,
    ND_REDIRECT: 40,
}

IPV4_ZERO = bytes(4)
IPV6_UNSPECIFIED = bytes(16)
IPV6_ALL_NODES = bytes.fromhex("ff020000000000000000000000000001")
ALL_NODES_MAC = bytes.fromhex("333300000001")

_ARP = struct.Struct("!HHBBH6s4s6s4s")


class Record:
    """A few named fields, compared by value (``typing.NamedTuple`` would load ``os``)."""

    __slots__: tuple[str, ...] = ()

    def astuple(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Record)
            and type(other) is type(self)
            and self.astuple() == other.astuple()
        )

    def __hash__(self) -> int:
        return hash(self.astuple())

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class L3(Record):
    """Where a frame's network header is: its ethertype after any VLAN tags, and offset."""

    __slots__ = ("ethertype", "offset")
    ethertype: int
    offset: int

    def __init__(self, ethertype: int, offset: int) -> None:
        self.ethertype, self.offset = ethertype, offset


class Arp(Record):
    __slots__ = ("op", "sha", "spa", "tha", "tpa")
    op: int
    sha: bytes
    spa: bytes
    tha: bytes
    tpa: bytes

    def __init__(self, op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> None:
        self.op, self.sha, self.spa, self.tha, self.tpa = op, sha, spa, tha, tpa


class Ipv4(Record):
    __slots__ = ("dst", "header_len", "is_fragment", "protocol", "src", "total_len")
    src: bytes
    dst: bytes
    protocol: int
    header_len: int
    total_len: int
    is_fragment: bool  # a later fragment, or one with more to come: no L4 header to trust

    def __init__(
        self,
        src: bytes,
        dst: bytes,
        protocol: int,
        header_len: int,
        total_len: int,
        is_fragment: bool,
    ) -> None:
        self.src, self.dst, self.protocol = src, dst, protocol
        self.header_len, self.total_len, self.is_fragment = header_len, total_len, is_fragment


class Ipv6(Record):
    __slots__ = ("dst", "next_header", "payload_len", "src")
    src: bytes
    dst: bytes
    next_header: int
    payload_len: int

    def __init__(self, src: bytes, dst: bytes, next_header: int, payload_len: int) -> None:
        self.src, self.dst, self.next_header, self.payload_len = src, dst, next_header, payload_len


class Bootp(Record):
    __slots__ = ("chaddr", "flags", "lease_time", "message_type", "op", "xid", "yiaddr")
    op: int
    xid: int
    flags: int
    yiaddr: bytes
    chaddr: bytes  # the first 6 bytes of chaddr (Ethernet clients)
    message_type: int | None  # DHCP option 53, None for plain BOOTP
    lease_time: int | None  # option 51, seconds

    def __init__(
        self,
        op: int,
        xid: int,
        flags: int,
        yiaddr: bytes,
        chaddr: bytes,
        message_type: int | None,
        lease_time: int | None,
    ) -> None:
        self.op, self.xid, self.flags, self.yiaddr, self.chaddr = op, xid, flags, yiaddr, chaddr
        self.message_type, self.lease_time = message_type, lease_time


class NdOption(Record):
    __slots__ = ("kind", "length", "offset")
    kind: int
    offset: int  # of the option's first byte, in the frame
    length: int  # bytes, header included

    def __init__(self, kind: int, offset: int, length: int) -> None:
        self.kind, self.offset, self.length = kind, offset, length


# -- Ethernet ------------------------------------------------------------------------------


def l3_header(data: Buffer) -> L3 | None:
    """The ethertype and offset past up to two VLAN tags, or None for a runt."""
    if len(data) < ETH_HLEN:
        return None
    ethertype = (data[12] << 8) | data[13]
    offset = ETH_HLEN
    for _ in range(_MAX_VLAN_TAGS):
        if ethertype not in _VLAN_TYPES:
            break
        if len(data) < offset + 4:
            return None
        ethertype = (data[offset + 2] << 8) | data[offset + 3]
        offset += 4
    return L3(ethertype, offset)


def ethernet(dst: bytes, src: bytes, ethertype: int, payload: bytes) -> bytes:
    """An Ethernet frame, padded with zeros to the 60-byte minimum."""
    frame = dst + src + ethertype.to_bytes(2, "big") + payload
    return frame + bytes(ETH_ZLEN - len(frame)) if len(frame) < ETH_ZLEN else frame


# -- ARP / RARP ----------------------------------------------------------------------------


def parse_arp(data: Buffer, offset: int) -> Arp | None:
    """An Ethernet/IPv4 ARP or RARP body at ``offset``; None for any other kind."""
    if len(data) < offset + ARP_HLEN:
        return None
    htype, ptype, hlen, plen, op, sha, spa, tha, tpa = _ARP.unpack_from(data, offset)
    if htype != 1 or ptype != ETH_P_IP or hlen != 6 or plen != 4:
        return None
    return Arp(op, sha, spa, tha, tpa)


def arp_body(op: int, sha: bytes, spa: bytes, tha: bytes, tpa: bytes) -> bytes:
    return _ARP.pack(1, ETH_P_IP, 6, 4, op, sha, spa, tha, tpa)


ARP_SHA_AT = 8  # offsets inside the ARP body
ARP_THA_AT = 18


# -- IPv4, UDP, BOOTP/DHCP -----------------------------------------------------------------


def parse_ipv4(data: Buffer, offset: int) -> Ipv4 | None:
    if len(data) < offset + 20 or data[offset] >> 4 != 4:
        return None
    header_len = (data[offset] & 0x0F) * 4
    total_len = (data[offset + 2] << 8) | data[offset + 3]
    if header_len < 20 or total_len < header_len or len(data) < offset + header_len:
        return None
    frag = ((data[offset + 6] << 8) | data[offset + 7]) & 0x3FFF  # MF bit and offset
    src = bytes(data[offset + 12 : offset + 16])
    dst = bytes(data[offset + 16 : offset + 20])
    return Ipv4(src, dst, data[offset + 9], header_len, total_len, frag != 0)


def udp_ports(data: Buffer, offset: int) -> tuple[int, int] | None:
    if len(data) < offset + 8:
        return None
    return (data[offset] << 8) | data[offset + 1], (data[offset + 2] << 8) | data[offset + 3]


def udp_of_ipv4(data: Buffer, l3: L3) -> tuple[Ipv4, int] | None:
    """The IPv4 header and the UDP header's offset, for an unfragmented UDP datagram."""
    if l3.ethertype != ETH_P_IP:
        return None
    ip = parse_ipv4(data, l3.offset)
    if ip is None or ip.protocol != IPPROTO_UDP or ip.is_fragment:
        return None
    udp_at = l3.offset + ip.header_len
    if len(data) < udp_at + 8 or ip.total_len > len(data) - l3.offset:
        return None
    return ip, udp_at


def bootp_reply(data: Buffer, l3: L3) -> Bootp | None:
    """The BOOTP/DHCP reply (server port to client port over IPv4) in a frame, else None."""
    udp = udp_of_ipv4(data, l3)
    if udp is None:
        return None
    ip, udp_at = udp
    if udp_ports(data, udp_at) != (BOOTP_SERVER_PORT, BOOTP_CLIENT_PORT):
        return None
    bootp = parse_bootp(data, udp_at + 8, l3.offset + ip.total_len)
    if bootp is None or bootp.op != BOOTREPLY:
        return None
    return bootp


def parse_bootp(data: Buffer, offset: int, end: int) -> Bootp | None:
    """A BOOTP/DHCP message in ``data[offset:end]``: the fields SPEC 9 needs, options read."""
    if end > len(data) or end < offset + BOOTP_FIXED_LEN:
        return None
    if data[offset + 1] != 1 or data[offset + 2] != 6:
        return None  # not an Ethernet client (htype 1, hlen 6)
    xid = int.from_bytes(data[offset + 4 : offset + 8], "big")
    flags = (data[offset + 10] << 8) | data[offset + 11]
    message_type = lease_time = None
    options = offset + BOOTP_FIXED_LEN
    if bytes(data[options : options + 4]) == DHCP_MAGIC:
        for kind, at, size in _dhcp_options(data, options + 4, end):
            if kind == DHCP_OPT_MESSAGE_TYPE and size >= 1:
                message_type = data[at]
            elif kind == DHCP_OPT_LEASE_TIME and size >= 4:
                lease_time = int.from_bytes(data[at : at + 4], "big")
    return Bootp(
        data[offset],
        xid,
        flags,
        bytes(data[offset + 16 : offset + 20]),
        bytes(data[offset + 28 : offset + 34]),
        message_type,
        lease_time,
    )


def _dhcp_options(data: Buffer, at: int, end: int) -> list[tuple[int, int, int]]:
    """(code, value offset, value length) of each option, stopping at END or a bad length."""
    found = []
    while at < end:
        kind = data[at]
        if kind == DHCP_OPT_END:
            break
        if kind == DHCP_OPT_PAD:
            at += 1
            continue
        if at + 2 > end or at + 2 + data[at + 1] > end:
            break
        size = data[at + 1]
        found.append((kind, at + 2, size))
        at += 2 + size
    return found


BOOTP_FLAGS_AT = 10  # offsets inside the BOOTP message
BOOTP_CHADDR_AT = 28


# -- IPv6, ICMPv6 neighbour discovery ------------------------------------------------------


def parse_ipv6(data: Buffer, offset: int) -> Ipv6 | None:
    if len(data) < offset + IPV6_HLEN or data[offset] >> 4 != 6:
        return None
    payload_len = (data[offset + 4] << 8) | data[offset + 5]
    return Ipv6(
        bytes(data[offset + 8 : offset + 24]),
        bytes(data[offset + 24 : offset + 40]),
        data[offset + 6],
        payload_len,
    )


class Nd(Record):
    """An ICMPv6 message (ND or not): type, offset of the ICMPv6 header, its end, target."""

    __slots__ = ("end", "icmp_at", "icmp_type", "target")
    icmp_type: int
    icmp_at: int
    end: int
    target: bytes | None  # NS, NA and Redirect carry one

    def __init__(self, icmp_type: int, icmp_at: int, end: int, target: bytes | None) -> None:
        self.icmp_type, self.icmp_at, self.end, self.target = icmp_type, icmp_at, end, target


def parse_icmpv6(data: Buffer, l3: L3) -> tuple[Ipv6, Nd] | None:
    """An ICMPv6 message right after the IPv6 header (where ND always is), whole in ``data``."""
    if l3.ethertype != ETH_P_IPV6:
        return None
    ip = parse_ipv6(data, l3.offset)
    if ip is None or ip.next_header != IPPROTO_ICMPV6:
        return None
    icmp_at = l3.offset + IPV6_HLEN
    end = icmp_at + ip.payload_len
    if ip.payload_len < 4 or end > len(data):
        return None
    icmp_type = data[icmp_at]
    target = None
    if icmp_type in (ND_NEIGHBOR_SOLICIT, ND_NEIGHBOR_ADVERT, ND_REDIRECT):
        if end < icmp_at + 24:
            return None
        target = bytes(data[icmp_at + 8 : icmp_at + 24])
    return ip, Nd(icmp_type, icmp_at, end, target)


def nd_options(data: Buffer, nd: Nd) -> list[NdOption] | None:
    """The options of an ND message; None when their lengths do not add up (RFC 4861 says
    drop such a message, so a translator must not pass it on half-rewritten)."""
    start = ND_OPTIONS_AT.get(nd.icmp_type)
    if start is None:
        return []
    at = nd.icmp_at + start
    if at > nd.end:
        return None
    found = []
    while at < nd.end:
        if at + 2 > nd.end:
            return None
        length = data[at + 1] * 8
        if length == 0 or at + length > nd.end:
            return None
        found.append(NdOption(data[at], at, length))
        at += length
    return found


# -- checksums -----------------------------------------------------------------------------


def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """RFC 1071: the ones' complement of the ones' complement sum of 16-bit words."""
    raw = bytes(data)
    if len(raw) % 2:
        raw += b"\x00"
    words: tuple[int, ...] = struct.unpack(f"!{len(raw) // 2}H", raw)
    total = initial + sum(words)
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _pseudo_sum(src: bytes, dst: bytes, protocol: int, length: int) -> int:
    raw = src + dst
    words: tuple[int, ...] = struct.unpack(f"!{len(raw) // 2}H", raw)
    return sum(words) + protocol + length


def icmpv6_checksum(src: bytes, dst: bytes, message: Buffer) -> int:
    """The checksum of an ICMPv6 message whose checksum field is zero."""
    return internet_checksum(message, _pseudo_sum(src, dst, IPPROTO_ICMPV6, len(message)))


def udp4_checksum(src: bytes, dst: bytes, datagram: Buffer) -> int:
    """The checksum of a UDP datagram whose checksum field is zero (0 is sent as 0xffff)."""
    value = internet_checksum(datagram, _pseudo_sum(src, dst, IPPROTO_UDP, len(datagram)))
    return value or 0xFFFF


def fix_icmpv6_checksum(buf: bytearray, l3_offset: int, nd: Nd) -> None:
    """Recompute, in place, the checksum of the ICMPv6 message ``nd`` describes."""
    buf[nd.icmp_at + 2 : nd.icmp_at + 4] = b"\x00\x00"
    src = bytes(buf[l3_offset + 8 : l3_offset + 24])
    dst = bytes(buf[l3_offset + 24 : l3_offset + 40])
    value = icmpv6_checksum(src, dst, buf[nd.icmp_at : nd.end])
    buf[nd.icmp_at + 2 : nd.icmp_at + 4] = value.to_bytes(2, "big")


def fix_udp4_checksum(buf: bytearray, ip: Ipv4, udp_at: int) -> None:
    """Recompute a UDP-over-IPv4 checksum in place; a zero one (none sent) stays zero."""
    if buf[udp_at + 6 : udp_at + 8] == b"\x00\x00":
        return
    udp_len = (buf[udp_at + 4] << 8) | buf[udp_at + 5]
    buf[udp_at + 6 : udp_at + 8] = b"\x00\x00"
    value = udp4_checksum(ip.src, ip.dst, buf[udp_at : udp_at + udp_len])
    buf[udp_at + 6 : udp_at + 8] = value.to_bytes(2, "big")


# -- IPv6 builders (announcements) ---------------------------------------------------------


def ipv6_header(src: bytes, dst: bytes, next_header: int, payload_len: int, hops: int) -> bytes:
    return struct.pack("!IHBB16s16s", 6 << 28, payload_len, next_header, hops, src, dst)


def solicited_node_mac(address: bytes) -> bytes:
    """The Ethernet group of an IPv6 address's solicited-node multicast address."""
    return b"\x33\x33\xff" + address[13:16]


def ipv6_multicast_mac(address: bytes) -> bytes:
    return b"\x33\x33" + address[12:16]


def is_ipv4_unicast(address: bytes) -> bool:
    """An address a host could own: not 0/8, not loopback, not multicast or broadcast."""
    return len(address) == 4 and address[0] not in (0, 127) and address[0] < 224


def is_ipv6_unicast(address: bytes) -> bool:
    return len(address) == 16 and address != IPV6_UNSPECIFIED and address[0] != 0xFF
