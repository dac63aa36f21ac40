"""Ethernet + IPv4 + UDP around a DHCP payload, for a client that has no IP stack yet.

A DHCP client speaks before it has an address, so whoever carries its messages
as frames (the daemon, on an endpoint's behalf) needs the headers built and
checked here.  Parsing returns None for anything that is not an unfragmented
IPv4 UDP datagram with correct lengths; it never raises.  It does not verify the
UDP checksum: a frame read from a local veth or tap may still carry a partial
one (checksum offload), and the client matches replies by xid and chaddr anyway.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address

from pymacvtap.core.dhcp.value import Value

ETH_P_IP = 0x0800
IPPROTO_UDP = 17
_ETH = struct.Struct("!6s6sH")
_IP = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
TTL = 64


class Datagram(Value):
    """A UDP datagram with the addresses it travels between."""

    __slots__ = ("dst_ip", "dst_mac", "dst_port", "payload", "src_ip", "src_mac", "src_port")

    def __init__(
        self,
        payload: bytes,
        src_ip: IPv4Address,
        dst_ip: IPv4Address,
        src_port: int,
        dst_port: int,
        src_mac: bytes = b"\x00" * 6,
        dst_mac: bytes = b"\xff" * 6,
    ) -> None:
        self.payload = payload
        self.src_ip = src_ip
        self.dst_ip = dst_ip
        self.src_port = src_port
        self.dst_port = dst_port
        self.src_mac = src_mac
        self.dst_mac = dst_mac


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_frame(dgram: Datagram) -> bytes:
    """The Ethernet frame carrying ``dgram`` (IPv4 without options, UDP checksummed)."""
    udp_len = _UDP.size + len(dgram.payload)
    pseudo = dgram.src_ip.packed + dgram.dst_ip.packed + struct.pack("!BBH", 0, 17, udp_len)
    udp = _UDP.pack(dgram.src_port, dgram.dst_port, udp_len, 0) + dgram.payload
    udp_sum = _checksum(pseudo + udp) or 0xFFFF  # 0 means "no checksum" in UDP over IPv4
    udp = udp[:6] + struct.pack("!H", udp_sum) + udp[8:]
    header = _IP.pack(
        0x45, 0x10, _IP.size + udp_len, 0, 0, TTL, IPPROTO_UDP, 0,
        dgram.src_ip.packed, dgram.dst_ip.packed,
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", _checksum(header)) + header[12:]
    return _ETH.pack(dgram.dst_mac, dgram.src_mac, ETH_P_IP) + header + udp


def parse_frame(frame: bytes) -> Datagram | None:
    """The UDP datagram in an Ethernet frame, None for anything else or anything broken."""
    if len(frame) < _ETH.size + _IP.size + _UDP.size:
        return None
    dst_mac, src_mac, ethertype = _ETH.unpack_from(frame)
    if ethertype != ETH_P_IP:
        return None
    ver_ihl, _tos, total, _id, frag, _ttl, proto, _sum, src, dst = _IP.unpack_from(frame, _ETH.size)
    ihl = (ver_ihl & 0x0F) * 4
    if ver_ihl >> 4 != 4 or ihl < _IP.size or proto != IPPROTO_UDP:
        return None
    if frag & 0x3FFF:  # a fragment (MF set or an offset): DHCP is never fragmented here
        return None
    ip_end = _ETH.size + total
    udp_at = _ETH.size + ihl
    if total < ihl + _UDP.size or ip_end > len(frame):
        return None
    src_port, dst_port, udp_len, _udp_sum = _UDP.unpack_from(frame, udp_at)
    if udp_len < _UDP.size or udp_at + udp_len > ip_end:
        return None
    return Datagram(
        payload=bytes(frame[udp_at + _UDP.size : udp_at + udp_len]),
        src_ip=IPv4Address(src),
        dst_ip=IPv4Address(dst),
        src_port=src_port,
        dst_port=dst_port,
        src_mac=bytes(src_mac),
        dst_mac=bytes(dst_mac),
    )
