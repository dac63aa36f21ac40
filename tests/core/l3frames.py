"""Frames above Ethernet for the address, announcement and MAC translation tests (scapy).

Addresses are raw bytes, as the modules under test take them; these turn them into the
text scapy wants and hand back ``bytes``.
"""

from __future__ import annotations

import ipaddress

from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6ND_Redirect,
    ICMPv6ND_RS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.packet import Packet, Raw

from pymacvtap.core.mac import format_mac

LOWER = bytes.fromhex("525400a00001")
OUTSIDE = bytes.fromhex("5254000000ee")
EP_A = bytes.fromhex("020000000001")
EP_B = bytes.fromhex("020000000002")
IP_A = bytes([192, 168, 1, 11])
IP_B = bytes([192, 168, 1, 12])
IP_HOST = bytes([192, 168, 1, 2])
IP_OUT = bytes([192, 168, 1, 1])
IP6_A = bytes.fromhex("fe800000000000000000000000000011")
IP6_A_GLOBAL = bytes.fromhex("20010db8000000000000000000000011")
IP6_OUT = bytes.fromhex("fe8000000000000000000000000000ee")
BROADCAST = b"\xff" * 6


def m(mac: bytes) -> str:
    return format_mac(mac)


def ip(address: bytes) -> str:
    return str(ipaddress.ip_address(address))


def ether(dst: bytes, src: bytes, vlan: int | None = None) -> Packet:
    frame = Ether(dst=m(dst), src=m(src))
    return frame / Dot1Q(vlan=vlan) if vlan is not None else frame


def arp(
    src: bytes,
    spa: bytes,
    tpa: bytes,
    *,
    op: int = 1,
    dst: bytes = BROADCAST,
    sha: bytes | None = None,
    tha: bytes = bytes(6),
    vlan: int | None = None,
) -> bytes:
    body = ARP(op=op, hwsrc=m(sha or src), psrc=ip(spa), hwdst=m(tha), pdst=ip(tpa))
    return bytes(ether(dst, src, vlan) / body)


def udp4(src: bytes, dst: bytes, sip: bytes, dip: bytes, sport: int = 5000) -> bytes:
    return bytes(ether(dst, src) / IP(src=ip(sip), dst=ip(dip)) / UDP(sport=sport, dport=53) / b"q")


def tcp4(src: bytes, dst: bytes, sip: bytes, dip: bytes) -> bytes:
    return bytes(ether(dst, src) / IP(src=ip(sip), dst=ip(dip)) / TCP(sport=40000, dport=22))


def udp6(src: bytes, dst: bytes, sip: bytes, dip: bytes) -> bytes:
    return bytes(
        ether(dst, src) / IPv6(src=ip(sip), dst=ip(dip)) / UDP(sport=5000, dport=53) / b"q"
    )


def neighbour_solicit(
    src: bytes, sip: bytes, target: bytes, *, dst: bytes | None = None, lladdr: bool = True
) -> bytes:
    dip = "ff02::1:ff" + target.hex()[26:28] + ":" + target.hex()[28:32]
    if dst is None:
        dst = b"\x33\x33\xff" + target[13:]
    else:
        dip = ip(target)
    pkt = ether(dst, src) / IPv6(src=ip(sip), dst=dip, hlim=255) / ICMPv6ND_NS(tgt=ip(target))
    if lladdr:
        pkt = pkt / ICMPv6NDOptSrcLLAddr(lladdr=m(src))
    return bytes(pkt)


def neighbour_advert(
    src: bytes, sip: bytes, dst: bytes, dip: bytes, *, solicited: int = 1
) -> bytes:
    return bytes(
        ether(dst, src)
        / IPv6(src=ip(sip), dst=ip(dip), hlim=255)
        / ICMPv6ND_NA(tgt=ip(sip), R=0, S=solicited, O=1)
        / ICMPv6NDOptDstLLAddr(lladdr=m(src))
    )


def router_solicit(src: bytes, sip: bytes) -> bytes:
    return bytes(
        ether(b"\x33\x33\x00\x00\x00\x02", src)
        / IPv6(src=ip(sip), dst="ff02::2", hlim=255)
        / ICMPv6ND_RS()
        / ICMPv6NDOptSrcLLAddr(lladdr=m(src))
    )


def router_advert(src: bytes, sip: bytes) -> bytes:
    return bytes(
        ether(b"\x33\x33\x00\x00\x00\x01", src)
        / IPv6(src=ip(sip), dst="ff02::1", hlim=255)
        / ICMPv6ND_RA()
        / ICMPv6NDOptSrcLLAddr(lladdr=m(src))
    )


def redirect(src: bytes, sip: bytes, dip: bytes) -> bytes:
    return bytes(
        ether(OUTSIDE, src)
        / IPv6(src=ip(sip), dst=ip(dip), hlim=255)
        / ICMPv6ND_Redirect(tgt=ip(sip), dst=ip(dip))
        / ICMPv6NDOptDstLLAddr(lladdr=m(EP_B))
    )


def dhcp(
    src: bytes,
    xid: int,
    message: str,
    *,
    reply: bool = False,
    chaddr: bytes | None = None,
    flags: int = 0,
    yiaddr: bytes = bytes(4),
    dst: bytes = BROADCAST,
    lease: int | None = None,
    udp_checksum: int | None = None,
) -> bytes:
    """A DHCP message: a client's request (68 -> 67) or a server's reply (67 -> 68)."""
    options: list[object] = [("message-type", message)]
    if lease is not None:
        options.append(("lease_time", lease))
    if not reply:
        options.append(("client_id", b"\x01" + (chaddr or src)))
    options.append("end")
    ports = (67, 68) if reply else (68, 67)
    addresses = ("192.168.1.1", "255.255.255.255") if reply else ("0.0.0.0", "255.255.255.255")
    datagram = UDP(sport=ports[0], dport=ports[1])
    if udp_checksum is not None:
        datagram.chksum = udp_checksum
    return bytes(
        ether(dst, src)
        / IP(src=addresses[0], dst=addresses[1])
        / datagram
        / BOOTP(
            op=2 if reply else 1,
            xid=xid,
            flags=flags,
            yiaddr=ip(yiaddr),
            chaddr=(chaddr or src) + bytes(10),
        )
        / DHCP(options=options)
    )


def raw(dst: bytes, src: bytes, ethertype: int, payload: bytes = bytes(46)) -> bytes:
    return bytes(Ether(dst=m(dst), src=m(src), type=ethertype) / Raw(payload))


def icmpv6_checksum_ok(frame: bytes) -> bool:
    """Whether the ICMPv6 checksum scapy recomputes is the one in the frame."""
    pkt = Ether(frame)
    icmp = pkt[IPv6].payload
    sent = icmp.cksum
    del icmp.cksum
    return bool(Ether(bytes(pkt))[IPv6].payload.cksum == sent)


def udp_checksum_ok(frame: bytes) -> bool:
    pkt = Ether(frame)
    sent = pkt[UDP].chksum
    del pkt[UDP].chksum
    return bool(Ether(bytes(pkt))[UDP].chksum == sent)
