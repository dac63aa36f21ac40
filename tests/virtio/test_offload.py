"""Software GSO and checksum completion (pymacvtap.virtio.offload).

Three layers of evidence: known checksum vectors and scapy's checksums; property
tests on frames built with scapy (reassembly restores the payload, every segment
verifies); and the kernel itself — super-frames captured from a real TCP/UDP
stream in a private network namespace, segmented by us and by the kernel (a
tap without offloads makes the kernel segment in software) and compared.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import random
import secrets
import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import checksum as scapy_checksum

from pymacvtap.core.frame import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VNET_HDR_LEN,
    Frame,
    VnetHeader,
)
from pymacvtap.virtio.offload import (
    OffloadError,
    complete_checksum,
    internet_checksum,
    ones_sum,
    segment,
    to_plain,
)

MAC_A = "02:00:00:00:00:0a"
MAC_B = "02:00:00:00:00:0b"

# --------------------------------------------------------------------------------------
# building frames the way a kernel/virtio sender hands them over
# --------------------------------------------------------------------------------------


def _pseudo_sum(pkt: Packet) -> int:
    """The non-inverted pseudo-header sum a NEEDS_CSUM sender leaves in the L4 field."""
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    l4_len = len(bytes(l4))
    proto = 6 if TCP in pkt else 17
    if IP in pkt:
        ip = pkt[IP]
        ph = (
            socket.inet_aton(ip.src)
            + socket.inet_aton(ip.dst)
            + struct.pack("!BBH", 0, proto, l4_len)
        )
    else:
        ip6 = pkt[IPv6]
        ph = (
            socket.inet_pton(socket.AF_INET6, ip6.src)
            + socket.inet_pton(socket.AF_INET6, ip6.dst)
            + struct.pack("!IxxxB", l4_len, proto)
        )
    return ~scapy_checksum(ph) & 0xFFFF


def _l4_offset(raw: bytes, pkt: Packet) -> int:
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    return len(raw) - len(bytes(l4))


def partial(pkt: Packet, gso_type: int = VIRTIO_NET_HDR_GSO_NONE, gso_size: int = 0) -> Frame:
    """``pkt`` as a NEEDS_CSUM (and optionally GSO) frame, pseudo-header sum in place."""
    raw = bytearray(bytes(pkt))
    start = _l4_offset(bytes(raw), pkt)
    off = 16 if TCP in pkt else 6
    struct.pack_into("!H", raw, start + off, _pseudo_sum(pkt))
    hdr_len = start + (len(bytes(pkt[TCP])) - len(pkt[TCP].payload) if TCP in pkt else 8)
    vnet = VnetHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type, hdr_len, gso_size, start, off)
    return Frame(bytes(raw), vnet)


def tcp4(payload: bytes, **tcp: object) -> Packet:
    tcp.setdefault("flags", "PA")
    return (
        Ether(src=MAC_A, dst=MAC_B)
        / IP(src="10.1.2.3", dst="10.4.5.6", id=0xFFFE, flags="DF")
        / TCP(sport=40000, dport=5001, seq=0xFFFFF000, ack=77, **tcp)
        / Raw(payload)
    )


def tcp6(payload: bytes, **tcp: object) -> Packet:
    tcp.setdefault("flags", "PA")
    return (
        Ether(src=MAC_A, dst=MAC_B)
        / IPv6(src="fd00::1", dst="fd00::2")
        / TCP(sport=40000, dport=5001, seq=12345, ack=77, **tcp)
        / Raw(payload)
    )


def udp4(payload: bytes) -> Packet:
    return (
        Ether(src=MAC_A, dst=MAC_B)
        / IP(src="10.1.2.3", dst="10.4.5.6", id=4242)
        / UDP(sport=4000, dport=5000)
        / Raw(payload)
    )


def udp6(payload: bytes) -> Packet:
    return (
        Ether(src=MAC_A, dst=MAC_B)
        / IPv6(src="fd00::1", dst="fd00::2")
        / UDP(sport=4000, dport=5000)
        / Raw(payload)
    )


def verified(seg: Frame) -> Packet:
    """Parse a segment with scapy and assert its IP and L4 checksums are right."""
    assert seg.vnet is None or not seg.vnet.needs_csum
    pkt = Ether(seg.data)
    fresh = pkt.copy()
    if IP in fresh:
        del fresh[IP].chksum
        if fresh[IP].frag == 0 and not fresh[IP].flags.MF:
            del fresh[IP].len
    for layer in (TCP, UDP):
        if layer in fresh and not (
            IPv6ExtHdrFragment in fresh or (IP in fresh and fresh[IP].flags.MF)
        ):
            del fresh[layer].chksum
    rebuilt = Ether(bytes(fresh))
    assert bytes(rebuilt) == seg.data, f"checksum or length mismatch in {pkt!r}"
    return pkt


def payload_of(pkt: Packet) -> bytes:
    l4 = pkt[TCP] if TCP in pkt else pkt[UDP]
    return bytes(l4.payload)


# --------------------------------------------------------------------------------------
# 1. checksums
# --------------------------------------------------------------------------------------


def test_checksum_rfc1071_vector() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    data = bytes.fromhex("0001f203f4f5f6f7")
    assert ones_sum(data) == 0xDDF2
    assert internet_checksum(data) == 0x220D


def test_checksum_edge_values() -> None:
    assert ones_sum(b"") == 0
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\x00" * 9) == 0xFFFF
    # 0xFFFF words are "negative zero": the sum stays 0xFFFF, the checksum 0.
    assert ones_sum(b"\xff\xff" * 3) == 0xFFFF
    assert internet_checksum(b"\xff\xff") == 0
    # odd length: the last byte is the high byte of a zero-padded word
    assert ones_sum(b"\x12") == 0x1200
    assert ones_sum(b"\x00\x01\x02") == 0x0201
    # carries wrap around
    assert ones_sum(b"\xff\xfe\x00\x03") == 0x0002
    assert ones_sum(b"\x00\x01", initial=0xFFFF) == 0x0001
    # an IPv4 header with a correct checksum sums to 0xFFFF
    hdr = bytes(IP(src="192.0.2.1", dst="198.51.100.7", ttl=3))
    assert internet_checksum(hdr) == 0


def test_checksum_known_ipv4_header() -> None:
    # The classic example header (Wikipedia "IPv4 header checksum"): b861.
    hdr = bytes.fromhex("450000730000400040110000c0a80001c0a800c7")
    assert internet_checksum(hdr) == 0xB861


@given(st.binary(max_size=3000), st.integers(0, 0xFFFF))
def test_checksum_matches_scapy(data: bytes, start: int) -> None:
    assert internet_checksum(data) == scapy_checksum(data)
    assert internet_checksum(memoryview(bytearray(data))) == scapy_checksum(data)
    two = data + struct.pack("!H", start) if len(data) % 2 == 0 else None
    if two is not None:
        assert ones_sum(data, start) == ones_sum(two)


@pytest.mark.parametrize("builder", [tcp4, tcp6, udp4, udp6])
@pytest.mark.parametrize("size", [0, 1, 17, 1000, 1471])
def test_complete_checksum_matches_scapy(builder: Callable[[bytes], Packet], size: int) -> None:
    pkt = builder(random.Random(size).randbytes(size))
    frame = partial(pkt)
    assert frame.data != bytes(pkt) or size == 0
    done = complete_checksum(frame)
    assert done.data == bytes(pkt)
    assert done.vnet is not None and not done.vnet.needs_csum
    assert frame.vnet is not None and frame.vnet.needs_csum  # input untouched
    # what a frontend without vnet headers gets
    (plain,) = to_plain(frame)
    assert plain.vnet is None and plain.data == bytes(pkt)


def test_complete_checksum_udp_zero_becomes_ffff() -> None:
    # A payload word equal to the checksum of the zero payload makes the sum 0xFFFF,
    # i.e. a computed checksum of 0, which UDP reserves for "none": 0xFFFF is sent.
    zero = udp4(b"\0\0")
    word = zero[UDP].__class__(bytes(zero[UDP])).chksum
    pkt = udp4(struct.pack("!H", word))
    frame = complete_checksum(partial(pkt))
    assert frame.data[40:42] == b"\xff\xff"
    assert bytes(pkt)[40:42] in (b"\xff\xff", b"\x00\x00")  # scapy may leave 0
    verified(Frame(frame.data))
    (seg,) = segment(partial(pkt, VIRTIO_NET_HDR_GSO_UDP_L4, 1000))
    assert seg.data[40:42] == b"\xff\xff"


def test_complete_checksum_passthrough_and_errors() -> None:
    plain = Frame(bytes(tcp4(b"x")))
    assert complete_checksum(plain) is plain
    noflag = Frame(plain.data, VnetHeader())
    assert complete_checksum(noflag) is noflag
    bad = Frame(plain.data, VnetHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=len(plain) - 1))
    with pytest.raises(OffloadError, match="beyond"):
        complete_checksum(bad)


# --------------------------------------------------------------------------------------
# 2. segmentation: examples and properties
# --------------------------------------------------------------------------------------


def test_tcp4_segments_like_tso() -> None:
    payload = bytes(range(256)) * 20  # 5120 bytes
    pkt = tcp4(payload, flags="FPAC", options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))])
    gso = VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN
    segs = segment(partial(pkt, gso, 1448))
    assert [len(payload_of(Ether(s.data))) for s in segs] == [1448, 1448, 1448, 776]
    parsed = [verified(s) for s in segs]
    assert b"".join(payload_of(p) for p in parsed) == payload
    assert [p[IP].id for p in parsed] == [0xFFFE, 0xFFFF, 0, 1]  # incrementing, wrapping
    assert [p[TCP].seq for p in parsed] == [0xFFFFF000, 0xFFFFF5A8, 0xFFFFFB50, 0x000000F8]
    assert [str(p[TCP].flags) for p in parsed] == ["AC", "A", "A", "FPA"]
    assert all(p[IP].flags == "DF" and p[TCP].options == pkt[TCP].options for p in parsed)
    assert all(s.vnet is None for s in segs)


def test_tcp6_vlan_segments() -> None:
    payload = random.Random(6).randbytes(4000)
    inner = tcp6(payload)
    pkt = Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=42, prio=3) / inner[IPv6]
    segs = segment(partial(pkt, VIRTIO_NET_HDR_GSO_TCPV6, 1000))
    parsed = [verified(s) for s in segs]
    assert [len(payload_of(p)) for p in parsed] == [1000, 1000, 1000, 1000]
    assert all(p[Dot1Q].vlan == 42 and p[Dot1Q].prio == 3 for p in parsed)
    assert [p[IPv6].plen for p in parsed] == [1020] * 4
    assert b"".join(payload_of(p) for p in parsed) == payload


def test_tcp6_with_extension_headers() -> None:
    payload = random.Random(7).randbytes(3000)
    pkt = (
        Ether(src=MAC_A, dst=MAC_B)
        / IPv6(src="fd00::1", dst="fd00::2")
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / TCP(sport=1, dport=2, seq=5, flags="A")
        / Raw(payload)
    )
    segs = segment(partial(pkt, VIRTIO_NET_HDR_GSO_TCPV6, 1200))
    parsed = [verified(s) for s in segs]
    assert b"".join(payload_of(p) for p in parsed) == payload
    assert [p[TCP].seq for p in parsed] == [5, 1205, 2405]


@pytest.mark.parametrize("builder", [udp4, udp6])
def test_uso_segments_are_datagrams(builder: Callable[[bytes], Packet]) -> None:
    payload = random.Random(5).randbytes(3500)
    segs = segment(partial(builder(payload), VIRTIO_NET_HDR_GSO_UDP_L4, 1200))
    parsed = [verified(s) for s in segs]
    assert [p[UDP].len for p in parsed] == [1208, 1208, 1108]
    assert b"".join(payload_of(p) for p in parsed) == payload
    if IP in parsed[0]:
        assert [p[IP].id for p in parsed] == [4242, 4243, 4244]


def reassemble_ufo(frames: list[Frame]) -> tuple[Packet, bytes]:
    """Reassemble UFO fragments by offset; return the first fragment and the datagram."""
    parts: dict[int, bytes] = {}
    more = []
    first = Ether(frames[0].data)
    for f in frames:
        p = Ether(f.data)
        if IP in p:
            assert p[IP].id == first[IP].id
            ip_hdr_len = p[IP].ihl * 4
            off = p[IP].frag * 8
            parts[off] = bytes(p[IP])[ip_hdr_len : p[IP].len]
            more.append(bool(p[IP].flags.MF))
            # the IPv4 header checksum is right
            assert internet_checksum(bytes(p[IP])[:ip_hdr_len]) == 0
        else:
            fh = p[IPv6ExtHdrFragment]
            assert fh.id == first[IPv6ExtHdrFragment].id and fh.nh == 17
            parts[fh.offset * 8] = bytes(fh.payload)
            more.append(bool(fh.m))
            assert p[IPv6].plen == len(bytes(p[IPv6].payload))
    assert more == [True] * (len(frames) - 1) + [False]
    data = b""
    for off in sorted(parts):
        assert off == len(data)
        data += parts[off]
    return first, data


@pytest.mark.parametrize("builder", [udp4, udp6])
def test_ufo_fragments_reassemble(builder: Callable[[bytes], Packet]) -> None:
    payload = random.Random(3).randbytes(5000)
    pkt = builder(payload)
    segs = segment(partial(pkt, VIRTIO_NET_HDR_GSO_UDP, 1483))  # rounded down to 1480
    assert all(len(s.data) <= 14 + 40 + 8 + 1480 for s in segs)
    _, datagram = reassemble_ufo(segs)
    assert datagram == bytes(pkt[UDP])  # header, checksum included, and payload
    assert len(segs) == 4


def test_ufo_small_datagram_is_not_fragmented() -> None:
    pkt = udp4(b"hello")
    (seg,) = segment(partial(pkt, VIRTIO_NET_HDR_GSO_UDP, 1480))
    assert seg.data == bytes(pkt)


def test_non_gso_frame_passes() -> None:
    pkt = tcp4(b"abc")
    frame = Frame(bytes(pkt))
    assert segment(frame) == [frame]
    (seg,) = segment(partial(pkt))
    assert seg.data == bytes(pkt)
    # a GSO frame whose payload fits one segment: one frame, checksum completed
    (one,) = segment(partial(pkt, VIRTIO_NET_HDR_GSO_TCPV4, 1448))
    assert one.data == bytes(pkt) and one.vnet is None
    # no payload at all (a bare ACK marked GSO) still yields one frame
    (ack,) = segment(partial(tcp4(b"", flags="A"), VIRTIO_NET_HDR_GSO_TCPV4, 1448))
    assert ack.data == bytes(tcp4(b"", flags="A"))


def test_mtu_limits_segments_not_superframes() -> None:
    pkt = tcp4(bytes(6000))
    frame = partial(pkt, VIRTIO_NET_HDR_GSO_TCPV4, 1448)
    assert len(segment(frame, mtu=1500)) == 5  # 20 + 20 + 1448 = 1488 <= 1500
    with pytest.raises(OffloadError, match="MTU"):
        segment(frame, mtu=1400)
    with pytest.raises(OffloadError, match="MTU"):
        segment(Frame(bytes(tcp4(bytes(1500)))), mtu=1500)
    assert segment(Frame(bytes(tcp4(bytes(1460)))), mtu=1500)
    ufo = partial(udp6(bytes(5000)), VIRTIO_NET_HDR_GSO_UDP, 1440)
    assert len(segment(ufo, mtu=1496)) == 4  # 40 + 8 (frag) + 1440 + 8 (UDP inside)
    with pytest.raises(OffloadError, match="MTU"):
        segment(ufo, mtu=1487)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: Frame(f.data, _vnet(f, hdr_len=len(f.data) + 1)), "hdr_len"),
        (lambda f: Frame(f.data, _vnet(f, gso_size=0)), "gso_size 0"),
        (lambda f: Frame(f.data, _vnet(f, gso_type=2)), "unknown gso_type"),
        (lambda f: Frame(f.data, _vnet(f, gso_type=0x80)), "unknown gso_type"),
        (lambda f: Frame(f.data, _vnet(f, gso_type=VIRTIO_NET_HDR_GSO_TCPV6)), "IPv4 packet"),
        (lambda f: Frame(f.data, _vnet(f, gso_type=VIRTIO_NET_HDR_GSO_UDP_L4)), "protocol"),
        (lambda f: Frame(f.data, _vnet(f, csum_offset=6)), "csum_offset"),
        (lambda f: Frame(f.data[:12] + b"\x08\x06" + f.data[14:], f.vnet), "not IP"),
        (lambda f: Frame(f.data[:40], _vnet(f, hdr_len=0)), "truncated TCP"),
        (lambda f: Frame(f.data[:20], _vnet(f, hdr_len=0)), "truncated IPv4"),
        (lambda f: Frame(f.data[:10], _vnet(f, hdr_len=0)), "truncated Ethernet"),
        (lambda f: Frame(f.data[:14] + b"\x44" + f.data[15:], f.vnet), "below 20"),
        (lambda f: Frame(f.data[:14] + b"\x65" + f.data[15:], f.vnet), "version"),
        (lambda f: Frame(f.data[:20] + b"\x20" + f.data[21:], f.vnet), "fragment"),
        (lambda f: Frame(f.data[:46] + b"\x40" + f.data[47:], f.vnet), "TCP header length"),
    ],
)
def test_bad_metadata_raises_offload_error(mutate: Callable[[Frame], Frame], message: str) -> None:
    good = partial(tcp4(bytes(3000)), VIRTIO_NET_HDR_GSO_TCPV4, 1000)
    assert len(segment(good)) == 3
    with pytest.raises(OffloadError, match=message):
        segment(mutate(good))
    with pytest.raises(OffloadError):
        to_plain(mutate(good))


def _vnet(frame: Frame, **fields: int) -> VnetHeader:
    assert frame.vnet is not None
    return frame.vnet.replace(**fields)


BUILDERS: dict[str, tuple[Callable[[bytes], Packet], int]] = {
    "tcp4": (tcp4, VIRTIO_NET_HDR_GSO_TCPV4),
    "tcp6": (tcp6, VIRTIO_NET_HDR_GSO_TCPV6),
    "uso4": (udp4, VIRTIO_NET_HDR_GSO_UDP_L4),
    "uso6": (udp6, VIRTIO_NET_HDR_GSO_UDP_L4),
    "ufo4": (udp4, VIRTIO_NET_HDR_GSO_UDP),
    "ufo6": (udp6, VIRTIO_NET_HDR_GSO_UDP),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    kind=st.sampled_from(sorted(BUILDERS)),
    size=st.integers(0, 40000),
    seed=st.integers(0, 2**32),
    vlan=st.booleans(),
    data=st.data(),
)
def test_segment_property(kind: str, size: int, seed: int, vlan: bool, data: st.DataObject) -> None:
    builder, gso = BUILDERS[kind]
    payload = random.Random(seed).randbytes(size)
    # at most ~40 segments keeps scapy's verification fast
    mss = data.draw(st.integers(max(1 if gso != VIRTIO_NET_HDR_GSO_UDP else 8, size // 40), 9000))
    pkt = builder(payload)
    if vlan:
        pkt = Ether(src=MAC_A, dst=MAC_B) / Dot1Q(vlan=7) / pkt.payload
    segs = segment(partial(pkt, gso, mss))
    plain = to_plain(partial(pkt, gso, mss))
    assert [_same_frag_id(s.data) for s in plain] == [_same_frag_id(s.data) for s in segs]
    if gso == VIRTIO_NET_HDR_GSO_UDP:
        if len(segs) == 1 and len(payload) + 8 <= mss:
            assert segs[0].data == bytes(pkt)
            return
        _, datagram = reassemble_ufo(segs)
        assert datagram == bytes(pkt[UDP])
        assert all(
            len(s.data) <= len(bytes(pkt)) - len(bytes(pkt[UDP])) + 8 + (mss & ~7) for s in segs
        )
        return
    parsed = [verified(s) for s in segs]
    pieces = [payload_of(p) for p in parsed]
    assert b"".join(pieces) == payload
    assert all(len(piece) <= mss for piece in pieces)
    assert all(len(piece) == mss for piece in pieces[:-1])
    assert len(segs) == max(1, -(-size // mss))
    if vlan:
        assert all(p[Dot1Q].vlan == 7 for p in parsed)


def _same_frag_id(data: bytes) -> bytes:
    """An IPv6 fragment's bytes with its identification zeroed (it is a per-call counter)."""
    pkt = Ether(data)
    if IPv6ExtHdrFragment in pkt:
        pkt[IPv6ExtHdrFragment].id = 0
    return bytes(pkt)


def _random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


vnet_headers = st.builds(
    VnetHeader,
    st.integers(0, 255),
    st.sampled_from([0, 1, 3, 4, 5, 0x81, 0x84, 2, 6, 0x80, 255]) | st.integers(0, 255),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
)


def _check_only_offload_error(frame: Frame) -> None:
    for fn in (segment, to_plain, lambda f: [complete_checksum(f)]):
        try:
            out = fn(frame)
        except OffloadError as e:
            assert str(e)
            continue
        assert all(isinstance(f, Frame) for f in out)


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.builds(_random_bytes, st.integers(0, 65600), st.integers(0, 2**32)),
    vnet_headers,
)
def test_fuzz_arbitrary_bytes(data: bytes, vnet: VnetHeader) -> None:
    _check_only_offload_error(Frame(data, vnet))


@settings(max_examples=300, deadline=None)
@given(
    kind=st.sampled_from(sorted(BUILDERS)),
    size=st.integers(0, 3000),
    cut=st.integers(0, 4000),
    flips=st.lists(st.tuples(st.integers(0, 120), st.integers(0, 255)), max_size=4),
    vnet=vnet_headers | st.none(),
    keep_vnet=st.booleans(),
)
def test_fuzz_mutated_frames(
    kind: str,
    size: int,
    cut: int,
    flips: list[tuple[int, int]],
    vnet: VnetHeader | None,
    keep_vnet: bool,
) -> None:
    builder, gso = BUILDERS[kind]
    good = partial(builder(bytes(size)), gso, 500)
    raw = bytearray(good.data[:cut])
    for pos, val in flips:
        if pos < len(raw):
            raw[pos] = val
    _check_only_offload_error(Frame(bytes(raw), good.vnet if keep_vnet else vnet))


# --------------------------------------------------------------------------------------
# 3. the kernel's own super-frames and segments
# --------------------------------------------------------------------------------------

CLONE_NEWNET = 0x40000000
TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
SOL_PACKET = 263
PACKET_VNET_HDR = 15
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
UDP_SEGMENT = 103

_libc = ctypes.CDLL(None, use_errno=True)


def _sh(*argv: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip()}")


@contextlib.contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run the block with this thread in netns ``name``; sockets made there stay there."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), f"setns {name}")
        yield
    finally:
        if _libc.setns(home, CLONE_NEWNET):
            raise OSError(ctypes.get_errno(), "setns back to the original namespace")
        os.close(home)
        os.close(target)


class KernelLab:
    """Two namespaces joined by a veth (TSO on), plus a tap without offloads.

    ``a`` sends TCP/UDP to ``b`` over ``va``–``vb``; an AF_PACKET socket with
    PACKET_VNET_HDR on ``va`` sees the super-frames the kernel hands the driver.
    Writing such a frame (vnet header included) to ``tseg`` through AF_PACKET
    makes the kernel segment it in software, because the tap has no TSO/CSUM
    features; the tap's fd then reads the kernel's segments.
    """

    def __init__(self) -> None:
        tag = f"{os.getpid()}x{secrets.token_hex(3)}"
        self.a = f"pmvt-off{tag}-a"
        self.b = f"pmvt-off{tag}-b"
        self.tap_fd = -1
        self.inject: socket.socket | None = None

    def setup(self) -> None:
        a, b = self.a, self.b
        _sh("ip", "netns", "add", a)
        _sh("ip", "netns", "add", b)
        _sh("ip", "-n", a, "link", "add", "va", "type", "veth", "peer", "name", "vb", "netns", b)
        for ns, dev, n in ((a, "va", 1), (b, "vb", 2)):
            _sh("ip", "-n", ns, "addr", "add", f"10.200.0.{n}/24", "dev", dev)
            _sh("ip", "-n", ns, "addr", "add", f"fd00:200::{n}/64", "dev", dev, "nodad")
            _sh("ip", "-n", ns, "link", "set", dev, "up")
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
        with in_netns(a):
            self.tap_fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            ifr = struct.pack("16sH22x", b"tseg", IFF_TAP | IFF_NO_PI)
            fcntl.ioctl(self.tap_fd, TUNSETIFF, ifr)
            fcntl.ioctl(self.tap_fd, TUNSETOFFLOAD, 0)  # no CSUM, no TSO: kernel does it all
        _sh("ip", "netns", "exec", a, "sysctl", "-qw", "net.ipv6.conf.tseg.disable_ipv6=1")
        _sh("ip", "-n", a, "link", "set", "tseg", "mtu", "9000", "up")
        with in_netns(a):
            self.inject = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self.inject.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            self.inject.bind(("tseg", 0))

    def teardown(self) -> None:
        if self.inject is not None:
            self.inject.close()
        if self.tap_fd >= 0:
            os.close(self.tap_fd)
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)

    def capture_superframes(
        self, kind: str, count: int = 4, total: int = 16 << 20, min_len: int = 30000
    ) -> list[Frame]:
        """Send a stream a→b; return ``count`` GSO frames ``va`` sent, ``min_len`` bytes or more.

        The first TCP super-frames are small (slow start); the size floor makes
        sure the comparison covers frames of dozens of segments.
        """
        tcp = kind.startswith("tcp")
        v6 = kind.endswith("6")
        family = socket.AF_INET6 if v6 else socket.AF_INET
        dst = "fd00:200::2" if v6 else "10.200.0.2"
        with in_netns(self.a):
            cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            cap.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            cap.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            cap.bind(("va", ETH_P_ALL))
            client = socket.socket(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
        with in_netns(self.b):
            server = socket.socket(family, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind((dst, 0))
            port = server.getsockname()[1]
            if tcp:
                server.listen(1)  # before the client connects: no refused connection
            server.settimeout(5)
        frames: list[Frame] = []
        stop = threading.Event()

        def sink() -> None:
            conn = server
            if tcp:
                try:
                    conn, _ = server.accept()
                except OSError:
                    return
            conn.settimeout(0.2)
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    if not conn.recv(1 << 16) and tcp:
                        break
            conn.close()

        buf = bytearray(70000)

        def grab() -> None:
            n, addr = cap.recvfrom_into(buf)
            vnet = VnetHeader.unpack(buf)
            if addr[2] == PACKET_OUTGOING and vnet.is_gso and n - VNET_HDR_LEN >= min_len:
                frames.append(Frame(bytes(buf[VNET_HDR_LEN:n]), vnet))

        cap.setblocking(False)
        worker = threading.Thread(target=sink, daemon=True)
        worker.start()
        try:
            chunk = random.Random(1).randbytes(1 << 16)
            if tcp:
                client.connect((dst, port))
                client.settimeout(5)
                sent = 0
                while sent < total and len(frames) < count:
                    sent += client.send(chunk)
                    while select.select([cap], [], [], 0)[0] and len(frames) < count:
                        grab()
            else:
                client.setsockopt(socket.IPPROTO_UDP, UDP_SEGMENT, 1200)
                for _ in range(16):
                    client.sendto(chunk[: 1200 * 40 + 500], (dst, port))
            deadline = time.monotonic() + 5
            while len(frames) < count and time.monotonic() < deadline:
                if select.select([cap], [], [], 0.2)[0]:
                    grab()
        finally:
            stop.set()
            client.close()
            worker.join(5)
            server.close()
            cap.close()
        assert len(frames) == count, f"the kernel sent only {len(frames)} {kind} super-frames"
        return frames

    def kernel_segment(self, frame: Frame, expect: int) -> list[bytes]:
        """Have the kernel segment ``frame`` (tap without offloads) and read the result."""
        assert self.inject is not None and frame.vnet is not None
        while True:  # drain anything left over
            try:
                os.read(self.tap_fd, 70000)
            except BlockingIOError:
                break
        self.inject.send(frame.vnet.pack() + frame.data)
        out: list[bytes] = []
        deadline = time.monotonic() + 3
        while len(out) < expect and time.monotonic() < deadline:
            if not select.select([self.tap_fd], [], [], 0.2)[0]:
                continue
            data = os.read(self.tap_fd, 70000)
            if data[:6] == frame.data[:6]:  # ignore anything else the tap might send
                out.append(data)
        return out


@pytest.fixture(scope="module")
def lab() -> Iterator[KernelLab]:
    kl = KernelLab()
    try:
        kl.setup()
        yield kl
    finally:
        kl.teardown()
    assert not os.path.exists(f"/run/netns/{kl.a}")


def _same_as_kernel(ours: list[Frame], theirs: list[bytes]) -> None:
    assert len(ours) == len(theirs)
    for mine, kernel in zip(ours, theirs, strict=True):
        verified(mine)
        verified(Frame(kernel))
        assert mine.data == kernel


@pytest.mark.root
@pytest.mark.parametrize("kind", ["tcp4", "tcp6"])
def test_kernel_tcp_superframes(lab: KernelLab, kind: str) -> None:
    frames = lab.capture_superframes(kind)
    gso = VIRTIO_NET_HDR_GSO_TCPV4 if kind == "tcp4" else VIRTIO_NET_HDR_GSO_TCPV6
    for frame in frames:
        assert frame.vnet is not None
        assert frame.vnet.gso_type & ~VIRTIO_NET_HDR_GSO_ECN == gso
        assert frame.vnet.needs_csum
        ours = segment(frame)
        assert len(ours) > 1
        theirs = lab.kernel_segment(frame, len(ours))
        _same_as_kernel(ours, theirs)


@pytest.mark.root
@pytest.mark.parametrize("kind", ["uso4", "uso6"])
def test_kernel_udp_gso_superframes(lab: KernelLab, kind: str) -> None:
    frames = lab.capture_superframes(kind, count=3, min_len=40000)
    for frame in frames:
        assert frame.vnet is not None
        assert frame.vnet.gso_type == VIRTIO_NET_HDR_GSO_UDP_L4
        assert frame.vnet.gso_size == 1200
        ours = segment(frame)
        assert len(ours) == 41
        theirs = lab.kernel_segment(frame, len(ours))
        _same_as_kernel(ours, theirs)


@pytest.mark.root
def test_kernel_vlan_tagged_tcp(lab: KernelLab) -> None:
    frame = lab.capture_superframes("tcp4", count=1, min_len=0)[0]
    assert frame.vnet is not None
    tagged = Frame(
        frame.data[:12] + b"\x81\x00\x00\x2a" + frame.data[12:],
        _vnet(frame, csum_start=frame.vnet.csum_start + 4, hdr_len=frame.vnet.hdr_len + 4),
    )
    ours = segment(tagged)
    _same_as_kernel(ours, lab.kernel_segment(tagged, len(ours)))


@pytest.mark.root
@pytest.mark.parametrize("builder", [udp4, udp6])
def test_kernel_ufo(lab: KernelLab, builder: Callable[[bytes], Packet]) -> None:
    payload = random.Random(9).randbytes(6000)
    frame = partial(builder(payload), VIRTIO_NET_HDR_GSO_UDP, 1480)
    ours = segment(frame)
    theirs = lab.kernel_segment(frame, len(ours))
    assert len(ours) == len(theirs) == 5
    if builder is udp4:
        _same_as_kernel(ours, theirs)
        return
    # IPv6: the kernel picks the fragment identification from a keyed hash; the rest
    # of every fragment must match byte for byte.
    for mine, kernel in zip(ours, theirs, strict=True):
        k = Ether(kernel)
        m = Ether(mine.data)
        m[IPv6ExtHdrFragment].id = k[IPv6ExtHdrFragment].id
        assert bytes(m) == kernel
    assert reassemble_ufo([Frame(k) for k in theirs])[1] == reassemble_ufo(ours)[1]


@pytest.mark.root
def test_kernel_tcp_flags_ecn_and_ip_id_wrap(lab: KernelLab) -> None:
    """FIN/PSH/CWR and the IPv4 id on a real super-frame, against the kernel.

    The flags and the id are outside the pseudo-header, so a captured frame can be
    edited without touching its partial checksum; the IPv4 header checksum is left
    stale on purpose (segmentation recomputes it).
    """
    frame = lab.capture_superframes("tcp4", count=1)[0]
    assert frame.vnet is not None
    raw = bytearray(frame.data)
    raw[18:20] = b"\xff\xfe"  # IPv4 id
    raw[47] |= 0x80 | 0x08 | 0x01  # CWR, PSH, FIN
    edited = Frame(bytes(raw), _vnet(frame, gso_type=frame.vnet.gso_type | VIRTIO_NET_HDR_GSO_ECN))
    ours = segment(edited)
    parsed = [Ether(s.data) for s in ours]
    assert [p[IP].id for p in parsed[:3]] == [0xFFFE, 0xFFFF, 0]
    assert "C" in str(parsed[0][TCP].flags) and "F" not in str(parsed[0][TCP].flags)
    assert all(str(p[TCP].flags) == "A" for p in parsed[1:-1])
    assert str(parsed[-1][TCP].flags) == "FPA"
    _same_as_kernel(ours, lab.kernel_segment(edited, len(ours)))
