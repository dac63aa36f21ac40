"""Software GSO and checksum completion: what a frontend without offloads needs.

Frames normally cross the daemon as the kernel and virtio hand them over: TCP/UDP
*super-frames* of up to 64 KiB with a partial checksum, described by the
``virtio_net_hdr`` beside the bytes (SPEC 2.2).  Only when the receiving
frontend negotiated no vnet header must the daemon do what a NIC (or the
kernel's ``validate_xmit_skb``) would: cut the super-frame into wire frames and
fill in every checksum.  This module does that, following the kernel's
``inet_gso_segment`` / ``ipv6_gso_segment`` / ``tcp_gso_segment`` /
``__udp_gso_segment`` / ``udp4_ufo_fragment`` rules so a receiver cannot tell
our segments from the kernel's.

It is sans-I/O like the rest of :mod:`pymacvtap.virtio`.  Every problem with a
frame's bytes or metadata raises :class:`OffloadError` (never ``IndexError`` or
``struct.error``), which the frontend turns into a counted error: a guest or a
peer controls these bytes.

Checksums use one big-integer trick instead of a per-word Python loop: read
the region as one big-endian integer; since ``2**16 == 1 (mod 0xFFFF)`` that
integer is congruent to the sum of its 16-bit words modulo ``0xFFFF``, which is
the ones' complement sum (apart from the 0 / 0xFFFF ambiguity handled by
:func:`_fold`).  ``int.from_bytes`` and the modulo are both linear C loops:
about 3x faster than ``sum(memoryview.cast("H"))`` on 64 KiB (measured,
~140 µs vs ~430 µs).
"""

from __future__ import annotations

import struct

from pymacvtap.core.frame import (
    ETH_HLEN,
    ETH_P_8021AD,
    ETH_P_8021Q,
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    Frame,
    VnetHeader,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeAlias

    Buffer: TypeAlias = bytes | bytearray | memoryview

__all__ = [
    "OffloadError",
    "complete_checksum",
    "internet_checksum",
    "ones_sum",
    "segment",
    "to_plain",
]

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_FRAGMENT = 44

_TCP_FIN = 0x01
_TCP_PSH = 0x08
_TCP_CWR = 0x80
_IP_MF = 0x2000
_IP_OFFSET = 0x1FFF
_IP6_MF = 0x0001
# IPv6 extension headers that may precede the transport header and that the
# kernel's ipv6_gso_pull_exthdrs() walks over: hop-by-hop, routing, dest opts.
_IP6_EXTHDRS = frozenset((0, 43, 60))
_MAX_VLAN_TAGS = 2  # 802.1ad outer + 802.1Q inner, as skb_network_protocol accepts

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_FRAG6 = struct.Struct("!BBHI")  # next header, reserved, offset|M, identification

# RFC 8200 section 4.5: fragment ids must be unique per (src, dst) within the
# reassembly lifetime.  The kernel hashes addresses with a secret; a plain
# counter is as good for uniqueness and keeps this module free of entropy.
_ip6_frag_ident = 0


class OffloadError(ValueError):
    """A frame whose bytes or vnet metadata cannot be segmented or checksummed.

    The engine counts it as an error on the frame's source (SPEC 2.2); the
    message says which field was wrong.
    """


def _fold(total: int) -> int:
    """Reduce an integer sum of 16-bit words to its ones' complement sum.

    ``total % 0xFFFF`` is right except that a non-zero sum congruent to 0 is
    ``0xFFFF`` ("negative zero") in ones' complement, never 0.
    """
    r = total % 0xFFFF
    if r == 0 and total:
        return 0xFFFF
    return r


def _raw_sum(data: Buffer) -> int:
    """The data as one big-endian integer: congruent to its word sum mod 0xFFFF.

    An odd trailing byte is the high byte of a last word padded with zero, as
    RFC 1071 says; shifting by 8 bits does that padding without a copy.
    """
    n = int.from_bytes(data, "big")
    if len(memoryview(data)) & 1:
        n <<= 8
    return n


def ones_sum(data: Buffer, initial: int = 0) -> int:
    """The 16-bit ones' complement sum of ``data`` (not inverted), plus ``initial``.

    ``initial`` is another sum (e.g. a pseudo-header) to fold in; any
    non-negative integer sum of 16-bit words works.
    """
    return _fold(_raw_sum(data) + initial)


def internet_checksum(data: Buffer, initial: int = 0) -> int:
    """The RFC 1071 checksum of ``data``: the complement of :func:`ones_sum`."""
    return ~ones_sum(data, initial) & 0xFFFF


def _vnet_without_csum(vnet: VnetHeader) -> VnetHeader:
    return VnetHeader(
        vnet.flags & ~VIRTIO_NET_HDR_F_NEEDS_CSUM, vnet.gso_type, vnet.hdr_len, vnet.gso_size
    )


def complete_checksum(frame: Frame) -> Frame:
    """Fill in a partial checksum the virtio way; return a frame without NEEDS_CSUM.

    The sender already stored the pseudo-header sum (not inverted) at
    ``csum_start + csum_offset``; summing from ``csum_start`` to the end of the
    frame therefore yields the full checksum, stored inverted.  A result of 0
    is sent as 0xFFFF, as the kernel's ``skb_checksum_help`` does, because 0
    means "no checksum" to UDP and both are the same value to every verifier.
    A frame without NEEDS_CSUM is returned unchanged.
    """
    vnet = frame.vnet
    if vnet is None or not vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM:
        return frame
    data = frame.data
    start = vnet.csum_start
    where = start + vnet.csum_offset
    if where + 2 > len(data):
        raise OffloadError(
            f"checksum at csum_start {start} + csum_offset {vnet.csum_offset} "
            f"is beyond the {len(data)}-byte frame"
        )
    csum = internet_checksum(memoryview(data)[start:]) or 0xFFFF
    buf = bytearray(data)
    _U16.pack_into(buf, where, csum)
    return Frame(bytes(buf), _vnet_without_csum(vnet))


class _Layout:
    """Where the headers of a GSO frame are, found by parsing (not trusting hdr_len)."""

    __slots__ = (
        "ipv4",
        "l3",
        "l4",
        "payload",
        "proto",
        "pseudo_addr_sum",
        "unfrag_end",
        "unfrag_nh_at",
    )

    def __init__(self) -> None:
        self.ipv4 = True
        self.l3 = 0  # offset of the IP header
        self.l4 = 0  # offset of the TCP/UDP header
        self.payload = 0  # offset of the L4 payload (end of the repeated headers)
        self.proto = 0
        self.pseudo_addr_sum = 0  # raw sum of the pseudo-header's addresses
        # IPv6 UFO: where the fragment header goes (after the unfragmentable
        # part), and the offset of the next-header byte that must point at it.
        self.unfrag_end = 0
        self.unfrag_nh_at = 0


def _need(data: bytes, end: int, what: str) -> None:
    if end > len(data):
        raise OffloadError(f"truncated {what}: needs {end} bytes, frame has {len(data)}")


def _parse_l2(data: bytes) -> tuple[int, int]:
    """Return (ethertype, offset of the L3 header), skipping up to two VLAN tags."""
    _need(data, ETH_HLEN, "Ethernet header")
    off = 12
    ethertype = (data[12] << 8) | data[13]
    tags = 0
    while ethertype in (ETH_P_8021Q, ETH_P_8021AD):
        tags += 1
        if tags > _MAX_VLAN_TAGS:
            raise OffloadError("more than two VLAN tags")
        off += 4
        _need(data, off + 2, "VLAN tag")
        ethertype = (data[off] << 8) | data[off + 1]
    return ethertype, off + 2


def _parse_ipv4(data: bytes, lay: _Layout) -> None:
    l3 = lay.l3
    _need(data, l3 + 20, "IPv4 header")
    vihl = data[l3]
    if vihl >> 4 != 4:
        raise OffloadError(f"ethertype says IPv4 but the IP version is {vihl >> 4}")
    ihl = (vihl & 0x0F) * 4
    if ihl < 20:
        raise OffloadError(f"IPv4 header length {ihl} is below 20")
    _need(data, l3 + ihl, "IPv4 header")
    (frag,) = _U16.unpack_from(data, l3 + 6)
    if frag & (_IP_MF | _IP_OFFSET):
        raise OffloadError("a GSO frame cannot be an IPv4 fragment")
    lay.ipv4 = True
    lay.proto = data[l3 + 9]
    lay.l4 = l3 + ihl
    lay.pseudo_addr_sum = int.from_bytes(data[l3 + 12 : l3 + 20], "big")


def _parse_ipv6(data: bytes, lay: _Layout) -> None:
    l3 = lay.l3
    _need(data, l3 + 40, "IPv6 header")
    if data[l3] >> 4 != 6:
        raise OffloadError(f"ethertype says IPv6 but the IP version is {data[l3] >> 4}")
    lay.ipv4 = False
    src = data[l3 + 8 : l3 + 24]
    dst = data[l3 + 24 : l3 + 40]
    nh_at = l3 + 6  # offset of the byte holding the next-header value
    off = l3 + 40
    unfrag_end, unfrag_nh_at = off, nh_at
    nh = data[nh_at]
    while nh in _IP6_EXTHDRS:
        _need(data, off + 8, "IPv6 extension header")
        hlen = (data[off + 1] + 1) * 8
        _need(data, off + hlen, "IPv6 extension header")
        if nh == 43 and data[off + 3]:
            # RFC 8200 8.1: a routing header with segments left means the
            # pseudo-header carries the final destination, not the next hop.
            rtype = data[off + 2]
            if rtype == 0 and hlen >= 24:
                last = off + hlen - 16
                dst = data[last : last + 16]
            elif rtype in (2, 4) and hlen >= 24:
                dst = data[off + 8 : off + 24]
        nh_at = off
        off += hlen
        if nh in (0, 43) or (nh == 60 and data[off - hlen] == 43):
            # ip6_find_1stfragopt: hop-by-hop, routing and destination options
            # followed by routing stay in front of a fragment header.
            unfrag_end, unfrag_nh_at = off, nh_at
        nh = data[nh_at]
    if nh == IPPROTO_FRAGMENT:
        raise OffloadError("a GSO frame cannot be an IPv6 fragment")
    lay.proto = nh
    lay.l4 = off
    lay.unfrag_end = unfrag_end
    lay.pseudo_addr_sum = int.from_bytes(src + dst, "big")
    lay.unfrag_nh_at = unfrag_nh_at


_GSO_NAMES = {
    VIRTIO_NET_HDR_GSO_TCPV4: "TCPv4",
    VIRTIO_NET_HDR_GSO_TCPV6: "TCPv6",
    VIRTIO_NET_HDR_GSO_UDP: "UDP (UFO)",
    VIRTIO_NET_HDR_GSO_UDP_L4: "UDP_L4",
}


def _parse(frame: Frame, vnet: VnetHeader, gso: int) -> _Layout:
    data = frame.data
    if vnet.hdr_len > len(data):
        raise OffloadError(f"hdr_len {vnet.hdr_len} is beyond the {len(data)}-byte frame")
    ethertype, l3 = _parse_l2(data)
    lay = _Layout()
    lay.l3 = l3
    if ethertype == ETH_P_IP:
        _parse_ipv4(data, lay)
    elif ethertype == ETH_P_IPV6:
        _parse_ipv6(data, lay)
    else:
        raise OffloadError(f"{_GSO_NAMES[gso]} GSO frame is not IP (ethertype {ethertype:#06x})")
    if gso == VIRTIO_NET_HDR_GSO_TCPV4 and not lay.ipv4:
        raise OffloadError("gso_type TCPv4 on an IPv6 packet")
    if gso == VIRTIO_NET_HDR_GSO_TCPV6 and lay.ipv4:
        raise OffloadError("gso_type TCPv6 on an IPv4 packet")
    want = (
        IPPROTO_TCP if gso in (VIRTIO_NET_HDR_GSO_TCPV4, VIRTIO_NET_HDR_GSO_TCPV6) else IPPROTO_UDP
    )
    if lay.proto != want:
        raise OffloadError(
            f"gso_type {_GSO_NAMES[gso]} but the IP protocol is {lay.proto}, not {want}"
        )
    l4 = lay.l4
    if want == IPPROTO_TCP:
        _need(data, l4 + 20, "TCP header")
        thlen = (data[l4 + 12] >> 4) * 4
        if thlen < 20:
            raise OffloadError(f"TCP header length {thlen} is below 20")
        _need(data, l4 + thlen, "TCP header")
        lay.payload = l4 + thlen
        csum_offset = 16
    else:
        _need(data, l4 + 8, "UDP header")
        lay.payload = l4 + 8
        csum_offset = 6
    if vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and (
        vnet.csum_start != l4 or vnet.csum_offset != csum_offset
    ):
        # virtio_net_hdr_to_skb refuses the same: segmentation must know
        # which field it is completing.
        raise OffloadError(
            f"csum_start {vnet.csum_start}/csum_offset {vnet.csum_offset} do not point at the "
            f"{'TCP' if want == IPPROTO_TCP else 'UDP'} checksum ({l4}/{csum_offset})"
        )
    return lay


def _l3_size_limit(size: int, mtu: int | None) -> None:
    """Refuse segments whose L3 packet would exceed ``mtu`` (SPEC 2.2: a counted error)."""
    if mtu is not None and size > mtu:
        raise OffloadError(f"segments of {size} bytes exceed the MTU {mtu}")


def _pseudo(lay: _Layout, l4_len: int) -> int:
    """Raw (unfolded) sum of the pseudo-header for an L4 segment of ``l4_len`` bytes."""
    return lay.pseudo_addr_sum + lay.proto + l4_len


def _fix_ip(buf: bytearray, lay: _Layout, ip_id: int | None, frag_off: int | None) -> None:
    """Set the IP lengths (and for IPv4 id, fragment field and header checksum)."""
    l3 = lay.l3
    if lay.ipv4:
        _U16.pack_into(buf, l3 + 2, len(buf) - l3)
        if ip_id is not None:
            _U16.pack_into(buf, l3 + 4, ip_id)
        if frag_off is not None:
            _U16.pack_into(buf, l3 + 6, frag_off)
        ihl = (buf[l3] & 0x0F) * 4
        _U16.pack_into(buf, l3 + 10, 0)
        hdr = memoryview(buf)[l3 : l3 + ihl]
        _U16.pack_into(buf, l3 + 10, internet_checksum(hdr))
        hdr.release()
    else:
        _U16.pack_into(buf, l3 + 4, len(buf) - l3 - 40)


def _l4_checksum(buf: bytearray, l4: int, where: int, pseudo: int, udp: bool) -> None:
    _U16.pack_into(buf, where, 0)
    view = memoryview(buf)[l4:]
    csum = internet_checksum(view, pseudo)
    view.release()
    if udp and csum == 0:
        csum = 0xFFFF  # RFC 768: 0 means "no checksum"
    _U16.pack_into(buf, where, csum)


def _segment_tcp(data: bytes, lay: _Layout, mss: int) -> list[Frame]:
    """tcp_gso_segment + inet_gso_segment: seq advances by mss, IPv4 id by one.

    FIN and PSH stay only on the last segment; CWR only on the first (the
    kernel clears it on the others, which is what SKB_GSO_TCP_ECN asks for).
    """
    hdr = data[: lay.payload]
    l4 = lay.l4
    (seq,) = _U32.unpack_from(data, l4 + 4)
    flags = data[l4 + 13]
    ip_id = _U16.unpack_from(data, lay.l3 + 4)[0] if lay.ipv4 else None
    payload = memoryview(data)[lay.payload :]
    total = len(payload)
    out: list[Frame] = []
    for i, start in enumerate(range(0, max(total, 1), mss)):
        last = start + mss >= total
        buf = bytearray(hdr)
        buf += payload[start : start + mss]
        _U32.pack_into(buf, l4 + 4, (seq + start) & 0xFFFFFFFF)
        f = flags
        if not last:
            f &= ~(_TCP_FIN | _TCP_PSH)
        if i:
            f &= ~_TCP_CWR
        buf[l4 + 13] = f
        _fix_ip(buf, lay, None if ip_id is None else (ip_id + i) & 0xFFFF, None)
        _l4_checksum(buf, l4, l4 + 16, _pseudo(lay, len(buf) - l4), udp=False)
        out.append(Frame(bytes(buf)))
    payload.release()
    return out


def _segment_uso(data: bytes, lay: _Layout, mss: int) -> list[Frame]:
    """__udp_gso_segment: each segment a full UDP datagram; IPv4 id advances by one."""
    hdr = data[: lay.payload]
    l4 = lay.l4
    ip_id = _U16.unpack_from(data, lay.l3 + 4)[0] if lay.ipv4 else None
    payload = memoryview(data)[lay.payload :]
    total = len(payload)
    out: list[Frame] = []
    for i, start in enumerate(range(0, max(total, 1), mss)):
        buf = bytearray(hdr)
        buf += payload[start : start + mss]
        ulen = len(buf) - l4
        _U16.pack_into(buf, l4 + 4, ulen)
        _fix_ip(buf, lay, None if ip_id is None else (ip_id + i) & 0xFFFF, None)
        _l4_checksum(buf, l4, l4 + 6, _pseudo(lay, ulen), udp=True)
        out.append(Frame(bytes(buf)))
    payload.release()
    return out


def _segment_ufo(data: bytes, lay: _Layout, mss: int, mtu: int | None) -> list[Frame]:
    """udp4_ufo_fragment / udp6_ufo_fragment: one datagram, IP-fragmented.

    The UDP checksum covers the whole datagram and is computed before
    fragmenting; the UDP header travels in the first fragment.  Fragment
    payloads are cut to a multiple of 8 bytes (the kernel trusts the sender's
    gso_size there and would emit misaligned offsets otherwise).  IPv4
    fragments share the original id and lose DF, as in inet_gso_segment; IPv6
    ones get a fragment header after the unfragmentable part.
    """
    global _ip6_frag_ident
    l4 = lay.l4
    buf = bytearray(data)
    ulen = len(buf) - l4
    if ulen > 0xFFFF:
        raise OffloadError(f"UFO datagram of {ulen} bytes does not fit a UDP length")
    _U16.pack_into(buf, l4 + 4, ulen)
    _l4_checksum(buf, l4, l4 + 6, _pseudo(lay, ulen), udp=True)
    if ulen <= mss:  # "too small packets are not really GSO ones"
        _fix_ip(buf, lay, None, None)
        return [Frame(bytes(buf))]
    step = mss & ~7
    if step == 0:
        raise OffloadError(f"gso_size {mss} is too small for UFO (fragments need 8 bytes)")
    out: list[Frame] = []
    if lay.ipv4:
        _l3_size_limit(lay.l4 - lay.l3 + step, mtu)
        hdr = bytes(buf[:l4])
        body = memoryview(buf)[l4:]
        for start in range(0, ulen, step):
            seg = bytearray(hdr)
            seg += body[start : start + step]
            mf = _IP_MF if start + step < ulen else 0
            _fix_ip(seg, lay, None, mf | (start >> 3))
            out.append(Frame(bytes(seg)))
    else:
        # Extension headers after the unfragmentable part (destination options
        # not followed by routing) are fragmentable: they travel in the first
        # fragment with the UDP header, as RFC 8200 section 4.5 says.
        _ip6_frag_ident = (_ip6_frag_ident + 1) & 0xFFFFFFFF or 1
        ue = lay.unfrag_end
        _l3_size_limit(ue + 8 - lay.l3 + step, mtu)
        unfrag = bytearray(buf[:ue])
        next_after = unfrag[lay.unfrag_nh_at]
        unfrag[lay.unfrag_nh_at] = IPPROTO_FRAGMENT
        body = memoryview(buf)[ue:]
        flen = len(body)
        for start in range(0, flen, step):
            seg = bytearray(unfrag)
            more = _IP6_MF if start + step < flen else 0
            seg += _FRAG6.pack(next_after, 0, start | more, _ip6_frag_ident)
            seg += body[start : start + step]
            _fix_ip(seg, lay, None, None)
            out.append(Frame(bytes(seg)))
    body.release()
    return out


def segment(frame: Frame, mtu: int | None = None) -> list[Frame]:
    """Cut a GSO super-frame into wire frames, each with every checksum filled in.

    Each segment carries at most ``vnet.gso_size`` bytes of L4 payload (for UFO:
    of IP payload) and no vnet header.  A frame that is not GSO comes back
    alone, its partial checksum completed (:func:`complete_checksum`).  With
    ``mtu``, segments whose L3 packet exceeds it raise :class:`OffloadError`:
    SPEC 2.2 makes the MTU bound segments, and such frames errors.

    Header lengths come from parsing the frame, not from ``hdr_len``, which
    virtio defines as a hint (guests get it wrong); ``hdr_len`` must still lie
    within the frame.  The TCP/UDP checksum is computed in full from the IP
    addresses, whatever the checksum field held.
    """
    vnet = frame.vnet
    if vnet is None or vnet.gso_type == VIRTIO_NET_HDR_GSO_NONE:
        done = complete_checksum(frame)
        if mtu is not None:
            size = done.segment_size()
            if size > mtu:
                raise OffloadError(f"frame of {size} bytes exceeds the MTU {mtu}")
        return [done]
    gso = vnet.gso_type & ~VIRTIO_NET_HDR_GSO_ECN
    if gso not in _GSO_NAMES:
        raise OffloadError(f"unknown gso_type {vnet.gso_type:#04x}")
    if vnet.gso_size == 0:
        raise OffloadError(f"gso_type {_GSO_NAMES[gso]} with gso_size 0")
    lay = _parse(frame, vnet, gso)
    data = frame.data
    mss = vnet.gso_size
    if gso == VIRTIO_NET_HDR_GSO_UDP:
        return _segment_ufo(data, lay, mss, mtu)
    _l3_size_limit(lay.payload - lay.l3 + min(mss, len(data) - lay.payload), mtu)
    if gso == VIRTIO_NET_HDR_GSO_UDP_L4:
        return _segment_uso(data, lay, mss)
    return _segment_tcp(data, lay, mss)


def to_plain(frame: Frame, mtu: int | None = None) -> list[Frame]:
    """Frames for a frontend without vnet headers: segmented, checksummed, ``vnet=None``."""
    return [f if f.vnet is None else Frame(f.data) for f in segment(frame, mtu)]
