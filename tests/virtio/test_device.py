"""The vhost-user device as a state machine: feed a message, check the actions.

No socket, fd or mmap anywhere: fds are made-up numbers, guest memory is a bytearray (see
``guest.py``).  The same behaviour through real sockets and eventfds is in
tests/frontends/vhost_user.
"""

from __future__ import annotations

import struct
from collections import deque

import pytest

from pymacvtap.core.frame import Frame
from pymacvtap.virtio import features as vf
from pymacvtap.virtio import messages as vm
from pymacvtap.virtio.actions import (
    KICKS_CHANGED,
    WAKE_WRITER,
    Close,
    Fault,
    MapMemory,
    Notify,
    Reply,
    SendRarp,
)
from pymacvtap.virtio.device import Device

from .guest import BASE, CALL_FD, ERR_FD, KICK_FD, MEMORY_FD, Driver, message, notifier

ZERO12 = bytes(12)
ETH = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x88\xb5" + bytes(50)


def ack(request: int, ok: bool = True) -> Reply:
    return Reply(request, vm.U64.pack(0 if ok else 1))


def faults(actions: list[object]) -> list[str]:
    return [a.kind for a in actions if isinstance(a, Fault)]


def test_gets_are_answered_with_what_we_offer() -> None:
    drv = Driver(Device(queues=4))
    assert vm.U64.unpack(drv.ask(vm.GET_FEATURES))[0] == vf.OFFERED_FEATURES
    assert vm.U64.unpack(drv.ask(vm.GET_PROTOCOL_FEATURES))[0] == vf.OFFERED_PROTOCOL_FEATURES
    assert vm.U64.unpack(drv.ask(vm.GET_QUEUE_NUM))[0] == 4
    assert drv.device.messages == 3


def test_send_rarp_asks_the_io_layer_to_announce_the_mac() -> None:
    """QEMU sends SEND_RARP (after a migration, on QMP announce-self) when we offer F_RARP."""
    assert vf.OFFERED_PROTOCOL_FEATURES & vf.bits(vf.PROTOCOL_F_RARP)
    mac = bytes.fromhex("525400123456")
    drv = Driver(Device())
    refused = drv.send(vm.SEND_RARP, mac + bytes(2))
    assert faults(refused) == ["protocol"]  # not negotiated: refused, not acted on
    drv.send(vm.SET_PROTOCOL_FEATURES, vm.U64.pack(vf.bits(vf.PROTOCOL_F_RARP)))
    assert drv.send(vm.SEND_RARP, mac + bytes(2)) == [SendRarp(mac)]
    assert faults(drv.send(vm.SEND_RARP, mac[:4])) == ["protocol"]


def test_reply_ack_only_when_asked() -> None:
    drv = Driver(Device())
    assert drv.send(vm.SET_OWNER) == []
    assert drv.send(vm.SET_OWNER, ack=True) == [ack(vm.SET_OWNER)]
    # refused: counted, and NACKed only when a reply was asked for
    assert drv.send(999) == [Fault("unknown", "request 999: unsupported request 999")]
    assert drv.send(999, ack=True)[1:] == [ack(999, ok=False)]
    # a GET always gets an answer, zero when refused
    actions = drv.send(vm.GET_VRING_BASE, vm.STATE.pack(7, 0))
    assert faults(actions) == ["protocol"] and actions[1] == Reply(
        vm.GET_VRING_BASE, vm.STATE.pack(0, 0)
    )


def test_features_are_masked_to_what_we_offered() -> None:
    dev = Device()
    drv = Driver(dev)
    asked = vf.bits(vf.VIRTIO_F_VERSION_1, 34)  # 34: packed rings, never offered
    actions = drv.send(vm.SET_FEATURES, vm.U64.pack(asked), ack=True)
    assert faults(actions) == ["features"] and actions[-1] == ack(vm.SET_FEATURES)
    assert dev.features == vf.bits(vf.VIRTIO_F_VERSION_1)
    assert dev.rings.negotiated.hdr_len == 12 and not dev.rings.negotiated.mergeable
    drv.send(vm.SET_FEATURES, vm.U64.pack(0))
    assert dev.rings.negotiated.hdr_len == 10


@pytest.mark.parametrize(
    ("request_", "payload", "kind"),
    [
        (vm.SET_VRING_NUM, vm.STATE.pack(0, 100), "ring"),  # not a power of two
        (vm.SET_VRING_NUM, vm.STATE.pack(0, 65536), "ring"),
        (vm.SET_VRING_NUM, vm.STATE.pack(2, 64), "protocol"),  # one pair: queues 0 and 1
        (vm.SET_VRING_NUM, b"\x00" * 7, "protocol"),
        (vm.SET_VRING_ADDR, vm.ADDR.pack(2, 0, 0, 0, 0, 0), "protocol"),
        (vm.SET_VRING_ENABLE, vm.STATE.pack(0, 2), "protocol"),
        (vm.SET_FEATURES, b"\x00" * 4, "protocol"),
        (vm.SET_VRING_CALL, vm.U64.pack(0x200), "protocol"),  # unknown bits
    ],
)
def test_malformed_messages_are_refused(request_: int, payload: bytes, kind: str) -> None:
    drv = Driver(Device())
    actions = drv.send(request_, payload, ack=True)
    assert faults(actions) == [kind]
    assert actions[-1] == ack(request_, ok=False)


def test_memory_table_waits_for_the_mapping() -> None:
    dev = Device()
    payload = vm.STATE.pack(1, 0) + struct.pack("=QQQQ", BASE, 0x10000, BASE, 0x1000)
    fd = vm.Fd(MEMORY_FD, memory_size=0x11000)
    dev.receive(message(vm.SET_MEM_TABLE, payload, [fd], ack=True))
    (mapping,) = dev.take_actions()
    assert isinstance(mapping, MapMemory)
    (region,) = mapping.regions
    assert (region.fd, region.length, region.gpa, region.offset) == (
        MEMORY_FD,
        0x11000,
        BASE,
        0x1000,
    )
    # the reply comes with the answer; the fd stays with the caller (to close once mapped)
    assert dev.memory_mapped([bytearray(0x11000)])
    assert dev.take_actions() == [ack(vm.SET_MEM_TABLE)]
    dev.receive(message(vm.SET_MEM_TABLE, payload, [fd], ack=True))
    dev.take_actions()
    dev.memory_refused("no memory")
    assert dev.take_actions() == [
        Fault("memory", f"request {vm.SET_MEM_TABLE}: mapping guest memory: no memory"),
        ack(vm.SET_MEM_TABLE, ok=False),
    ]
    # a mapping shorter than the region is refused by the device itself
    dev.receive(message(vm.SET_MEM_TABLE, payload, [fd], ack=True))
    dev.take_actions()
    assert not dev.memory_mapped([bytearray(0x100)])
    assert faults(dev.take_actions()) == ["memory"]


@pytest.mark.parametrize(
    ("count", "fds", "kind"),
    [
        (0, [vm.Fd(1, memory_size=1 << 20)], "memory"),
        (9, [vm.Fd(1, memory_size=1 << 20)] * 9, "memory"),
        (1, [], "fds"),
        (1, [vm.Fd(1, memory_size=1 << 20)] * 2, "fds"),
        (1, [vm.Fd(1)], "memory"),  # not a regular file
        (1, [vm.Fd(1, memory_size=0x8000)], "memory"),  # region beyond the file
    ],
)
def test_bad_memory_tables(count: int, fds: list[vm.Fd], kind: str) -> None:
    dev = Device()
    regions = struct.pack("=QQQQ", BASE, 0x10000, BASE, 0) * count
    message_ = message(vm.SET_MEM_TABLE, vm.STATE.pack(count, 0) + regions, list(fds), ack=True)
    dev.receive(message_)
    actions = dev.take_actions()
    assert faults(actions) == [kind] and actions[-1] == ack(vm.SET_MEM_TABLE, ok=False)
    assert len(message_.fds) == len(fds)  # none kept: the caller closes them


def test_notifier_fds_are_kept_or_left_to_close() -> None:
    dev = Device()
    drv = Driver(dev)
    kick = message(vm.SET_VRING_KICK, vm.U64.pack(1), [notifier(KICK_FD)])
    dev.receive(kick)
    assert kick.fds == [] and dev.rings.kick_fds() == [KICK_FD]
    assert dev.take_actions() == [KICKS_CHANGED]
    # a new kick replaces the old one, which is closed once the daemon stops polling it
    assert drv.send(vm.SET_VRING_KICK, vm.U64.pack(1), [notifier(KICK_FD + 9)]) == [
        Close(KICK_FD),
        KICKS_CHANGED,
    ]
    assert dev.rings.kick_to_vq == {KICK_FD + 9: 1}
    for payload, fds in [
        (vm.U64.pack(1 | vm.VRING_NOFD), [notifier(7)]),  # an fd despite the no-fd flag
        (vm.U64.pack(1), [notifier(7), notifier(8)]),
        (vm.U64.pack(1), [vm.Fd(7, notifier_error="not an eventfd")]),
    ]:
        refused = message(vm.SET_VRING_CALL, payload, fds)
        dev.receive(refused)
        assert faults(dev.take_actions()) == ["fds"] and refused.fds == fds
    assert dev.rings.call == [-1, -1]


def test_frames_both_ways() -> None:
    dev = Device()
    drv = Driver(dev)
    drv.negotiate(features=vf.bits(vf.VIRTIO_F_VERSION_1, vf.VHOST_USER_F_PROTOCOL_FEATURES))
    rx, tx = drv.rings[0], drv.rings[1]
    assert dev.rings.ready(0) and dev.rings.ready(1)
    # guest -> device: the kick brings the frame, the used ring and an interrupt
    tx.send(ZERO12 + ETH)
    frames = dev.rings.kicked(1, 64)
    assert [f.data for f in frames] == [ETH] and tx.used_idx == 1
    assert dev.take_actions() == [Notify(CALL_FD + 1, 1, "call")]
    # device -> guest: blocked without buffers, then placed once buffers come
    queue = deque([Frame(ETH)])
    assert dev.rings.write(queue, 256) is True and len(queue) == 1
    rx.post_rx(4, 2048)
    assert dev.rings.kicked(0, 64) == [] and dev.take_actions()[-1] == WAKE_WRITER
    assert dev.rings.write(queue, 256) is False and not queue
    assert rx.received() == [bytes(10) + b"\x01\x00" + ETH]  # num_buffers 1 (VERSION_1)
    assert dev.take_actions() == [Notify(CALL_FD, 0, "call")]
    # the budget bounds one write
    queue = deque(Frame(ETH) for _ in range(3))
    assert dev.rings.write(queue, 2) is False and len(queue) == 1


def test_no_guest_drops_and_counts() -> None:
    dev = Device()
    queue = deque([Frame(ETH), Frame(ETH)])
    assert dev.rings.write(queue, 256) is False
    assert not queue and dev.rings.rx_dropped == 2


def test_get_vring_base_stops_the_ring_and_lets_its_fds_go() -> None:
    dev = Device()
    drv = Driver(dev)
    drv.negotiate()
    tx = drv.rings[1]
    for _ in range(3):
        tx.send(ZERO12 + ETH)
    assert len(dev.rings.kicked(1, 64)) == 3
    dev.take_actions()
    actions = drv.send(vm.GET_VRING_BASE, vm.STATE.pack(1, 0))
    assert Close(KICK_FD + 1) in actions and Close(CALL_FD + 1) in actions
    assert KICKS_CHANGED in actions
    assert actions[-1] == Reply(vm.GET_VRING_BASE, vm.STATE.pack(1, 3))
    assert dev.rings.kick_fds() == [KICK_FD]
    assert not dev.rings.ready(1)


def test_a_broken_ring_is_reported_and_repaired_by_reconfiguring() -> None:
    dev = Device()
    drv = Driver(dev)
    drv.negotiate()
    drv.send(vm.SET_VRING_ERR, vm.U64.pack(1), [notifier(ERR_FD + 1)])
    tx = drv.rings[1]
    tx.set_desc(0, 0xDEAD_0000_0000, 64, 0, 0)  # outside guest memory
    tx.publish(0)
    assert dev.rings.kicked(1, 64) == []
    actions = dev.take_actions()
    assert faults(actions) == ["ring"] and Notify(ERR_FD + 1, 1, "err") in actions
    assert dev.rings.ring_state(1)["broken"] is not None
    assert dev.rings.queue_stats()[1]["errors"] == 1
    drv.setup_ring(1, base=1)  # the front-end sets the ring up again
    assert dev.rings.ring_state(1)["broken"] is None and dev.rings.ready(1)


def test_reset_lets_every_fd_go_and_forgets_the_session() -> None:
    dev = Device()
    drv = Driver(dev)
    drv.negotiate()
    dev.take_actions()
    dev.reset()
    actions = dev.take_actions()
    closed = sorted(a.fd for a in actions if isinstance(a, Close))
    assert closed == [KICK_FD, KICK_FD + 1, CALL_FD, CALL_FD + 1]
    assert dev.features == 0 and dev.rings.kick_fds() == [] and not dev.rings.ready(1)
    assert dev.messages > 0  # counters outlive sessions


def test_queue_pairs_are_bounded() -> None:
    with pytest.raises(ValueError, match="queues"):
        Device(queues=0)
    with pytest.raises(ValueError, match="queues"):
        Device(queues=129)
