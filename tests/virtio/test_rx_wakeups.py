"""Frames waiting for the guest's receive buffers are never left without a wake-up.

When ``Rings.write`` stops for want of buffers, something must call it again once the guest
has added some: the guest's kick (with EVENT_IDX, only if it adds the entry at avail_event)
or a kick the device gives itself.  Both cases here lost it before: a ring holding buffers
too few for the frame (avail_event was set below the guest's index, which the guest never
passes again), and buffers that kept coming just as the device re-armed, more times in a
row than it retries.  Found by reading the code after a guest's fetch stalled in a bench run.
"""

from __future__ import annotations

import struct
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymacvtap.core.frame import Frame
from pymacvtap.virtio import features as vf
from pymacvtap.virtio.actions import WAKE_WRITER, Notify
from pymacvtap.virtio.device import Device
from pymacvtap.virtio.virtqueue import Virtqueue

from .guest import BASE, KICK_FD, Driver, Ring

FEATURES = vf.bits(
    vf.VIRTIO_F_VERSION_1,
    vf.VHOST_USER_F_PROTOCOL_FEATURES,
    vf.VIRTIO_NET_F_MRG_RXBUF,
    vf.VIRTIO_RING_F_EVENT_IDX,
)
BUFFER = 1536  # what Linux posts at least, per mergeable receive buffer


def need_event(event: int, new: int, old: int) -> bool:
    """vring_need_event: does a driver that moved its index from old to new kick?"""
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


def avail_event(ring: Ring) -> int:
    return int(struct.unpack_from("<H", ring.mem.buf, ring.used - BASE + 4 + 8 * ring.num)[0])


def refill_kicks(ring: Ring, count: int) -> bool:
    """The guest adds ``count`` buffers, then decides whether to kick, as Linux does."""
    old = ring.avail_idx
    ring.post_rx(count, BUFFER)
    return need_event(avail_event(ring), ring.avail_idx, old)


def frame(size: int, n: int = 0) -> Frame:
    return Frame(b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02\x88\xb5" + bytes([n & 0xFF]) * (size - 14))


def device(num: int = 64) -> tuple[Device, Ring]:
    dev = Device(1)
    drv = Driver(dev)
    drv.negotiate(features=FEATURES, num=num)
    dev.take_actions()
    return dev, drv.rings[0]


def self_kicked(actions: list[object]) -> bool:
    return any(isinstance(a, Notify) and a.why == "kick" and a.fd == KICK_FD for a in actions)


def test_buffers_too_few_for_a_frame_still_bring_the_guests_kick() -> None:
    dev, rx = device(16)
    rx.post_rx(2, BUFFER)
    queue = deque([frame(4000)])  # three mergeable buffers' worth
    assert dev.rings.write(queue, 256) is True  # waits, the two buffers left in the ring
    dev.take_actions()
    # The guest's next buffers must kick (the kick is what wakes the writer).
    assert refill_kicks(rx, 6), (avail_event(rx), rx.avail_idx)
    dev.rings.kicked(0, 64)
    assert WAKE_WRITER in dev.take_actions()
    assert dev.rings.write(queue, 256) is False and not queue
    assert sum(n for _, n in rx.collect()) == 12 + 4000


def test_buffers_racing_every_rearm_end_in_a_kick_of_our_own(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The guest adds one buffer each time just before the device re-arms, and does not
    kick (it read the old avail_event); each time one buffer is too few for the frame."""
    dev, rx = device(64)
    real_enable = Virtqueue.enable_notify

    def racing_enable(vq: Virtqueue) -> None:
        if vq.index == 0:
            rx.post_rx(1, BUFFER)  # published, kick decided against, all before our store
        real_enable(vq)

    monkeypatch.setattr(Virtqueue, "enable_notify", racing_enable)
    queue = deque([frame(60000)])  # needs 40 buffers: the retries run out first
    assert dev.rings.write(queue, 256) is True
    monkeypatch.setattr(Virtqueue, "enable_notify", real_enable)
    # The guest's next buffers would not kick (avail_event is behind them): we do.
    assert self_kicked(dev.take_actions())


@settings(max_examples=300, deadline=None)
@given(
    first=st.integers(0, 8),
    races=st.lists(st.integers(0, 3), max_size=12),
    sizes=st.lists(st.sampled_from([60, 1500, 3000, 9000, 20000]), min_size=1, max_size=12),
)
def test_a_writer_that_stops_is_always_woken(
    first: int, races: list[int], sizes: list[int]
) -> None:
    """Whatever the guest adds while the device re-arms (``races``: buffers added, unkicked,
    just before each re-arm), a write that stops leaves a wake-up behind: a kick of our own,
    or a guest whose very next buffer kicks."""
    dev, rx = device(64)
    rx.post_rx(first, BUFFER)
    dev.take_actions()
    pending = list(races)
    real_enable = Virtqueue.enable_notify

    def racing_enable(vq: Virtqueue) -> None:
        if vq.index == 0 and pending:
            count = pending.pop(0)
            if count and (rx.avail_idx - dev.rings.vqs[0].last_avail) & 0xFFFF <= 64 - count:
                rx.post_rx(count, BUFFER)
        real_enable(vq)

    queue = deque(frame(size, n) for n, size in enumerate(sizes))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Virtqueue, "enable_notify", racing_enable)
        blocked = dev.rings.write(queue, 256)
    actions = dev.take_actions()
    if not blocked:
        assert not queue
        return
    assert queue
    assert self_kicked(actions) or refill_kicks(rx, 1), (avail_event(rx), rx.avail_idx)
