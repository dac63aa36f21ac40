"""The wire format and negotiation: framing a message stream, decoding payloads, features."""

from __future__ import annotations

import pytest

from pymacvtap.core.frame import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VIRTIO_NET_HDR_GSO_UDP_L4,
    VnetHeader,
)
from pymacvtap.virtio import features as vf
from pymacvtap.virtio import messages as vm

PARTIAL = VnetHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6)  # a UDP checksum to complete


def test_reader_frames_header_then_payload_with_its_fds() -> None:
    reader = vm.MessageReader()
    assert reader.want() == 12
    raw = vm.HDR.pack(vm.SET_VRING_KICK, vm.VERSION, 8) + vm.U64.pack(1)
    assert reader.feed(raw[:5], []) is None
    assert reader.want() == 7
    assert reader.feed(raw[5:12], [42]) is None
    assert reader.want() == 8
    got = reader.feed(raw[12:], [])
    assert got is not None
    assert (got.request, got.flags, got.payload, got.fds) == (
        vm.SET_VRING_KICK,
        vm.VERSION,
        vm.U64.pack(1),
        [42],
    )
    assert reader.want() == 12 and reader.fds == []
    empty = reader.feed(vm.HDR.pack(vm.SET_OWNER, vm.VERSION, 0), [])
    assert empty is not None and empty.payload == b""


@pytest.mark.parametrize(
    "header",
    [
        vm.HDR.pack(vm.SET_OWNER, 2, 0),  # another version
        vm.HDR.pack(vm.SET_OWNER, 0, 0),
        vm.HDR.pack(vm.SET_MEM_TABLE, vm.VERSION, vm.MAX_PAYLOAD + 1),  # a lying size
    ],
)
def test_reader_refuses_a_bad_header(header: bytes) -> None:
    reader = vm.MessageReader()
    with pytest.raises(vm.Refused) as refused:
        reader.feed(header, [7])
    assert refused.value.kind == "protocol"
    assert reader.fds == [7]  # the caller's to close


def test_reader_takes_no_more_than_it_wants() -> None:
    with pytest.raises(ValueError, match="wanted"):
        vm.MessageReader().feed(bytes(13), [])


def test_reply_encoding() -> None:
    assert vm.encode_reply(vm.GET_FEATURES, vm.U64.pack(5)) == (
        vm.HDR.pack(vm.GET_FEATURES, vm.VERSION | vm.F_REPLY, 8) + vm.U64.pack(5)
    )


def test_payload_decoders_refuse_short_payloads() -> None:
    for decode in (vm.u64, vm.vring_state, vm.vring_addr, vm.vring_fd):
        with pytest.raises(vm.Refused):
            decode(b"\x00" * 7)
    assert vm.vring_fd(vm.U64.pack(3 | vm.VRING_NOFD)) == (3, False)
    assert vm.vring_fd(vm.U64.pack(3)) == (3, True)


def test_negotiated_features() -> None:
    legacy = vf.Negotiated(0)
    assert legacy.hdr_len == 10 and not legacy.rings_need_enable
    assert not legacy.accepts_offloads
    full, unoffered = vf.negotiate(vf.OFFERED_FEATURES | 1 << 34)
    assert unoffered == 1 << 34 and full.value == vf.OFFERED_FEATURES
    assert full.hdr_len == 12 and full.mergeable and full.event_idx and full.indirect
    assert full.accepts_offloads and full.rings_need_enable
    assert vf.negotiate_protocol(1 << 40 | 1) == (1, 1 << 40)


@pytest.mark.parametrize(
    ("bits", "vnet", "accepted"),
    [
        ((), None, True),
        ((), VnetHeader(), True),
        ((), VnetHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6), False),
        (
            (vf.VIRTIO_NET_F_GUEST_CSUM,),
            VnetHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6),
            True,
        ),
        ((vf.VIRTIO_NET_F_GUEST_TSO4,), VnetHeader(0, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448), True),
        ((vf.VIRTIO_NET_F_GUEST_TSO4,), VnetHeader(0, VIRTIO_NET_HDR_GSO_TCPV6, 74, 1428), False),
        (
            (vf.VIRTIO_NET_F_GUEST_TSO4,),
            VnetHeader(0, VIRTIO_NET_HDR_GSO_TCPV4 | VIRTIO_NET_HDR_GSO_ECN, 54, 1448),
            False,
        ),
        ((vf.VIRTIO_NET_F_GUEST_TSO6,), VnetHeader(0, VIRTIO_NET_HDR_GSO_TCPV6, 74, 1428), True),
        ((vf.VIRTIO_NET_F_GUEST_TSO4,), VnetHeader(0, VIRTIO_NET_HDR_GSO_UDP_L4, 42, 1400), False),
    ],
)
def test_what_a_guest_accepts(
    bits: tuple[int, ...], vnet: VnetHeader | None, accepted: bool
) -> None:
    assert vf.Negotiated(vf.bits(*bits)).accepts(vnet) is accepted
