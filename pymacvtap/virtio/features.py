"""Feature negotiation: the bits we offer, and what the bits the front-end took mean.

The front-end (QEMU, for the guest's driver) reads what we offer with GET_FEATURES and sets a
subset with SET_FEATURES; :class:`Negotiated` turns that subset into the few facts the rings
and the receive path need: the vnet header length, mergeable buffers, which offloads the guest
takes, notification suppression and indirect descriptors.
"""

from __future__ import annotations

from pymacvtap.core.frame import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR_LEN,
    VnetHeader,
)
from pymacvtap.virtio.virtqueue import VNET_HDR_MRG_LEN

# Device features (virtio 1.x 5.1.3 and 6), as bit numbers.
VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_MQ = 22
VIRTIO_F_ANY_LAYOUT = 27
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32

# vhost-user protocol features (GET/SET_PROTOCOL_FEATURES), as bit numbers.
PROTOCOL_F_MQ = 0
PROTOCOL_F_RARP = 2  # SEND_RARP: QEMU asks us to announce the guest after a migration
PROTOCOL_F_REPLY_ACK = 3
PROTOCOL_F_RESET_DEVICE = 13


def bits(*numbers: int) -> int:
    value = 0
    for number in numbers:
        value |= 1 << number
    return value


OFFERED_FEATURES = bits(
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MQ,
    VIRTIO_F_ANY_LAYOUT,
    VIRTIO_RING_F_INDIRECT_DESC,
    VIRTIO_RING_F_EVENT_IDX,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VIRTIO_F_VERSION_1,
)
OFFERED_PROTOCOL_FEATURES = bits(
    PROTOCOL_F_MQ, PROTOCOL_F_RARP, PROTOCOL_F_REPLY_ACK, PROTOCOL_F_RESET_DEVICE
)


class Negotiated:
    """What a set of negotiated feature bits means for the rings and the receive path."""

    __slots__ = (
        "event_idx",
        "guest_csum",
        "guest_ecn",
        "guest_tso4",
        "guest_tso6",
        "hdr_len",
        "indirect",
        "mergeable",
        "rings_need_enable",
        "value",
    )

    def __init__(self, value: int = 0) -> None:
        def has(bit: int) -> bool:
            return bool(value >> bit & 1)

        self.value = value
        self.mergeable = has(VIRTIO_NET_F_MRG_RXBUF)
        # VERSION_1 makes num_buffers part of every header, mergeable or not.
        self.hdr_len = (
            VNET_HDR_MRG_LEN if self.mergeable or has(VIRTIO_F_VERSION_1) else VNET_HDR_LEN
        )
        self.guest_csum = has(VIRTIO_NET_F_GUEST_CSUM)
        self.guest_tso4 = has(VIRTIO_NET_F_GUEST_TSO4)
        self.guest_tso6 = has(VIRTIO_NET_F_GUEST_TSO6)
        self.guest_ecn = has(VIRTIO_NET_F_GUEST_ECN)
        self.event_idx = has(VIRTIO_RING_F_EVENT_IDX)
        self.indirect = has(VIRTIO_RING_F_INDIRECT_DESC)
        # With VHOST_USER_F_PROTOCOL_FEATURES rings start disabled until SET_VRING_ENABLE;
        # without it a ring is enabled as soon as it is started.
        self.rings_need_enable = has(VHOST_USER_F_PROTOCOL_FEATURES)

    @property
    def accepts_offloads(self) -> bool:
        """True when the guest takes TCP GSO super-frames and partial checksums as they are."""
        return self.guest_csum and self.guest_tso4 and self.guest_tso6

    def accepts(self, vnet: VnetHeader | None) -> bool:
        """Can the guest take a frame with this vnet header as it is (no ``to_plain``)?"""
        if vnet is None:
            return True
        if vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and not self.guest_csum:
            return False
        gso = vnet.gso_type & ~VIRTIO_NET_HDR_GSO_ECN
        if gso == VIRTIO_NET_HDR_GSO_NONE:
            return True
        if vnet.gso_type & VIRTIO_NET_HDR_GSO_ECN and not self.guest_ecn:
            return False
        if gso == VIRTIO_NET_HDR_GSO_TCPV4:
            return self.guest_tso4
        if gso == VIRTIO_NET_HDR_GSO_TCPV6:
            return self.guest_tso6
        return False


def negotiate(value: int) -> tuple[Negotiated, int]:
    """The features a SET_FEATURES value gives, and the bits it set that we never offered."""
    return Negotiated(value & OFFERED_FEATURES), value & ~OFFERED_FEATURES


def negotiate_protocol(value: int) -> tuple[int, int]:
    """The protocol features a SET_PROTOCOL_FEATURES value gives, and its unoffered bits."""
    return value & OFFERED_PROTOCOL_FEATURES, value & ~OFFERED_PROTOCOL_FEATURES
