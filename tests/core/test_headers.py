"""The header parsers and builders of pymacvtap.core.headers, against scapy's frames."""

from __future__ import annotations

import pytest
from scapy.layers.inet import UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import checksum as scapy_checksum

from pymacvtap.core import headers as h

from .l3frames import (
    EP_A,
    IP6_A,
    IP6_OUT,
    IP_A,
    IP_OUT,
    OUTSIDE,
    arp,
    dhcp,
    icmpv6_checksum_ok,
    neighbour_advert,
    neighbour_solicit,
    raw,
    router_advert,
    udp4,
    udp_checksum_ok,
)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (arp(EP_A, IP_A, IP_OUT), h.L3(h.ETH_P_ARP, 14)),
        (arp(EP_A, IP_A, IP_OUT, vlan=5), h.L3(h.ETH_P_ARP, 18)),
        (b"\xff" * 12 + b"\x88\xa8\x00\x05\x81\x00\x00\x06\x86\xdd", h.L3(h.ETH_P_IPV6, 22)),
        (b"\xff" * 12 + b"\x81\x00\x00", None),  # a tag cut short
        (b"\xff" * 13, None),
    ],
)
def test_l3_header(data: bytes, expected: h.L3 | None) -> None:
    assert h.l3_header(data) == expected


def test_parse_arp() -> None:
    frame = arp(EP_A, IP_A, IP_OUT, op=2, tha=OUTSIDE)
    assert h.parse_arp(frame, 14) == h.Arp(2, EP_A, IP_A, OUTSIDE, IP_OUT)
    assert h.parse_arp(frame[:41], 14) is None
    not_ethernet = bytearray(frame)
    not_ethernet[15] = 6  # htype IEEE 802
    assert h.parse_arp(bytes(not_ethernet), 14) is None


def test_parse_ipv4_and_udp() -> None:
    frame = udp4(EP_A, OUTSIDE, IP_A, IP_OUT)
    ip4 = h.parse_ipv4(frame, 14)
    assert ip4 is not None
    assert (ip4.src, ip4.dst, ip4.protocol, ip4.header_len) == (IP_A, IP_OUT, 17, 20)
    assert not ip4.is_fragment
    udp = h.udp_of_ipv4(frame, h.L3(h.ETH_P_IP, 14))
    assert udp is not None and udp[1] == 34
    assert h.udp_ports(frame, 34) == (5000, 53)
    frag = bytearray(frame)
    frag[20] |= 0x20  # more fragments: the UDP header cannot be trusted as whole
    assert h.udp_of_ipv4(bytes(frag), h.L3(h.ETH_P_IP, 14)) is None
    assert h.parse_ipv4(frame[:30], 14) is None
    assert h.parse_ipv4(b"\x00" * 14 + b"\x65" + bytes(19), 14) is None  # version 6 nibble


def test_parse_bootp() -> None:
    frame = dhcp(OUTSIDE, 0xDEADBEEF, "ack", reply=True, chaddr=EP_A, yiaddr=IP_A, lease=3600)
    udp = h.udp_of_ipv4(frame, h.L3(h.ETH_P_IP, 14))
    assert udp is not None
    ip4, udp_at = udp
    bootp = h.parse_bootp(frame, udp_at + 8, 14 + ip4.total_len)
    assert bootp == h.Bootp(2, 0xDEADBEEF, 0, IP_A, EP_A, h.DHCPACK, 3600)
    assert h.parse_bootp(frame, udp_at + 8, udp_at + 8 + 200) is None


def test_parse_icmpv6_and_nd_options() -> None:
    frame = neighbour_solicit(EP_A, IP6_A, IP6_OUT)
    parsed = h.parse_icmpv6(frame, h.L3(h.ETH_P_IPV6, 14))
    assert parsed is not None
    ip6, nd = parsed
    assert (ip6.src, nd.icmp_type, nd.target, nd.icmp_at) == (IP6_A, 135, IP6_OUT, 54)
    assert h.nd_options(frame, nd) == [h.NdOption(h.ND_OPT_SOURCE_LL, 78, 8)]
    advert = router_advert(OUTSIDE, IP6_OUT)
    parsed = h.parse_icmpv6(advert, h.L3(h.ETH_P_IPV6, 14))
    assert parsed is not None and parsed[1].target is None
    assert h.nd_options(advert, parsed[1]) == [h.NdOption(h.ND_OPT_SOURCE_LL, 70, 8)]


def test_nd_options_with_bad_lengths_are_refused() -> None:
    frame = bytearray(neighbour_solicit(EP_A, IP6_A, IP6_OUT))
    frame[79] = 0  # option length 0: RFC 4861 says drop
    parsed = h.parse_icmpv6(bytes(frame), h.L3(h.ETH_P_IPV6, 14))
    assert parsed is not None and h.nd_options(bytes(frame), parsed[1]) is None
    frame[79] = 2  # runs past the end
    assert h.nd_options(bytes(frame), parsed[1]) is None
    assert h.parse_icmpv6(bytes(frame[:70]), h.L3(h.ETH_P_IPV6, 14)) is None  # cut short


def test_checksums_agree_with_scapy() -> None:
    for length in (0, 1, 2, 7, 64, 1501):
        data = bytes((i * 7 + 3) & 0xFF for i in range(length))
        assert h.internet_checksum(data) == scapy_checksum(data)
    frame = bytearray(neighbour_advert(EP_A, IP6_A, OUTSIDE, IP6_OUT))
    parsed = h.parse_icmpv6(frame, h.L3(h.ETH_P_IPV6, 14))
    assert parsed is not None
    frame[parsed[1].icmp_at + 2 : parsed[1].icmp_at + 4] = b"\x12\x34"
    h.fix_icmpv6_checksum(frame, 14, parsed[1])
    assert icmpv6_checksum_ok(bytes(frame))
    frame = bytearray(udp4(EP_A, OUTSIDE, IP_A, IP_OUT))
    frame[-1] ^= 0xFF
    udp = h.udp_of_ipv4(frame, h.L3(h.ETH_P_IP, 14))
    assert udp is not None
    h.fix_udp4_checksum(frame, *udp)
    assert udp_checksum_ok(bytes(frame))


def test_fix_udp4_checksum_leaves_no_checksum_alone() -> None:
    frame = bytearray(dhcp(EP_A, 1, "discover", udp_checksum=0))
    udp = h.udp_of_ipv4(frame, h.L3(h.ETH_P_IP, 14))
    assert udp is not None
    before = bytes(frame)
    h.fix_udp4_checksum(frame, *udp)
    assert bytes(frame) == before and Ether(before)[UDP].chksum == 0


def test_builders() -> None:
    frame = h.ethernet(b"\xff" * 6, EP_A, 0x88B5, b"x")
    assert len(frame) == 60 and frame[12:15] == b"\x88\xb5x"
    ip6 = h.ipv6_header(IP6_A, IP6_OUT, 58, 8, 255)
    parsed = IPv6(ip6 + bytes(8))
    assert (parsed.src, parsed.dst, parsed.hlim, parsed.plen) == ("fe80::11", "fe80::ee", 255, 8)
    assert h.solicited_node_mac(IP6_A) == bytes.fromhex("3333ff000011")
    assert h.ipv6_multicast_mac(h.IPV6_ALL_NODES) == h.ALL_NODES_MAC
    assert raw(OUTSIDE, EP_A, 0x88CC)[12:14] == b"\x88\xcc"


@pytest.mark.parametrize(
    ("address", "unicast"),
    [
        ("0.0.0.0", False),
        ("127.0.0.1", False),
        ("224.0.0.1", False),
        ("255.255.255.255", False),
        ("10.1.2.3", True),
        ("192.168.1.1", True),
    ],
)
def test_is_ipv4_unicast(address: str, unicast: bool) -> None:
    assert h.is_ipv4_unicast(bytes(int(p) for p in address.split("."))) is unicast


def test_is_ipv6_unicast() -> None:
    assert h.is_ipv6_unicast(IP6_A)
    assert not h.is_ipv6_unicast(h.IPV6_UNSPECIFIED)
    assert not h.is_ipv6_unicast(h.IPV6_ALL_NODES)
    assert not h.is_ipv6_unicast(IP_A)
