"""The vhost-user back-end against a Python front-end: negotiation, both data directions, MQ,
mergeable buffers, blocking, stop/restart, disconnect/reconnect."""

from __future__ import annotations

import os
import select
import struct
from collections import deque
from collections.abc import Callable

from pymacvtap.core.frame import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    Frame,
    VnetHeader,
)
from pymacvtap.frontends import vhost_user as vu
from pymacvtap.virtio import features as vf
from pymacvtap.virtio import messages as vm
from pymacvtap.virtio.offload import internet_checksum

from .frontend import FrontEnd, bits

Make = Callable[..., vu.VhostUserFrontend]

HDR12 = struct.Struct("<BBHHHHH")
ZERO12 = bytes(12)


def eth(n: int, size: int = 100) -> bytes:
    body = bytes((n + k) & 0xFF for k in range(size - 14))
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x88\xb5" + body


def udp4(payload: bytes, csum_partial: bool = False) -> bytes:
    src, dst = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
    ulen = 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, 1, 0, 64, 17, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", internet_checksum(ip)) + ip[12:]
    pseudo = src + dst + struct.pack("!BBH", 0, 17, ulen)
    udp = struct.pack("!HHHH", 1000, 2000, ulen, 0) + payload
    if csum_partial:
        # what a sender with checksum offload leaves: the pseudo-header sum, not inverted
        from pymacvtap.virtio.offload import ones_sum

        part = ones_sum(pseudo)
        udp = udp[:6] + struct.pack("!H", part) + udp[8:]
    else:
        csum = internet_checksum(pseudo + udp)
        udp = udp[:6] + struct.pack("!H", csum or 0xFFFF) + udp[8:]
    return b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x08\x00" + ip + udp


def test_negotiation_replies(make_backend: Make) -> None:
    be = make_backend(queues=4)
    fe = FrontEnd(be)
    assert be.connected
    features = fe.get_u64(vm.GET_FEATURES)
    for bit in (0, 1, 7, 8, 11, 12, 15, 22, 28, 29, 30, 32):
        assert features >> bit & 1, bit
    assert not features >> 34 & 1  # no packed rings
    assert fe.get_u64(vm.GET_PROTOCOL_FEATURES) & bits(0, 3) == bits(0, 3)
    assert fe.get_u64(vm.GET_QUEUE_NUM) == 4
    # REPLY_ACK: success and failure
    fe.send(vm.SET_PROTOCOL_FEATURES, struct.pack("=Q", bits(0, 3)))
    assert fe.call_ack(vm.SET_OWNER) == 0
    assert fe.call_ack(999) != 0
    assert fe.call_ack(vm.SET_VRING_NUM, struct.pack("=II", 0, 100)) != 0  # not a power of 2
    assert fe.call_ack(vm.SET_VRING_NUM, struct.pack("=II", 99, 64)) != 0  # no such queue
    assert be.error_counts["unknown"] == 1
    fe.close()


def test_tx_and_rx_one_pair(make_backend: Make) -> None:
    be = make_backend()
    fe = FrontEnd(be)
    features = fe.negotiate(features=bits(vf.VIRTIO_F_VERSION_1, vf.VHOST_USER_F_PROTOCOL_FEATURES))
    assert features >> 32 & 1
    assert not be.accepts_offloads
    rx, tx = fe.rings[0], fe.rings[1]
    # guest -> back-end, in 1, 2 and 3 descriptors
    sent = [eth(i, 60 + 37 * i) for i in range(12)]
    for i, frame in enumerate(sent):
        tx.send(ZERO12 + frame, pieces=1 + i % 3)
    frames = fe.pump()
    assert [f.data for f in frames] == sent
    assert all(f.vnet is None for f in frames)
    assert [h for h, _ in tx.collect()] != [] and tx.used_idx == 12
    assert tx.called()
    stats = be.queue_stats()[1]
    assert stats["frames"] == 12 and stats["bytes"] == sum(map(len, sent))
    # back-end -> guest
    rx.post_rx(8, 2048)
    fe.pump()
    queue = deque(Frame(eth(100 + i, 200)) for i in range(5))
    assert be.write(queue) is None
    assert not queue
    used = rx.collect()
    assert [length for _, length in used] == [12 + 200] * 5
    for k, (head, length) in enumerate(used):
        addr, _ = rx.buffers[head][0]
        data = fe.mem.read(addr, length)
        assert data[:12] == HDR12.pack(0, 0, 0, 0, 0, 0, 1)
        assert data[12:] == eth(100 + k, 200)
    assert rx.called()
    assert be.queue_stats()[0]["frames"] == 5
    fe.close()


def test_guest_offload_header_kept(make_backend: Make) -> None:
    be = make_backend()
    fe = FrontEnd(be)
    fe.negotiate()
    assert be.accepts_offloads
    tx = fe.rings[1]
    vnet = VnetHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16)
    tx.send(vnet.pack() + b"\x00\x01" + eth(1, 3000))
    (frame,) = fe.pump()
    assert frame.vnet == vnet and frame.data == eth(1, 3000)
    fe.close()


def test_plain_frames_for_guest_without_offloads(make_backend: Make) -> None:
    be = make_backend()
    fe = FrontEnd(be)
    fe.negotiate(features=bits(vf.VIRTIO_F_VERSION_1, vf.VHOST_USER_F_PROTOCOL_FEATURES))
    rx = fe.rings[0]
    rx.post_rx(4, 2048)
    fe.pump()
    partial = udp4(b"hello world", csum_partial=True)
    vnet = VnetHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, 0, 0, 0, 34, 6)
    assert not be.accepts(vnet)
    queue = deque([Frame(partial, vnet)])
    assert be.write(queue) is None
    ((head, length),) = rx.collect()
    got = fe.mem.read(rx.buffers[head][0][0], length)
    assert got[:12] == HDR12.pack(0, 0, 0, 0, 0, 0, 1)
    assert got[12:] == udp4(b"hello world")  # checksum completed by to_plain
    fe.close()


def test_mq_and_mergeable(make_backend: Make) -> None:
    be = make_backend(queues=2)
    fe = FrontEnd(be)
    features = fe.negotiate(pairs=2)
    assert features >> vf.VIRTIO_NET_F_MRG_RXBUF & 1
    # TX on both pairs
    fe.rings[1].send(ZERO12 + eth(1))
    fe.rings[3].send(ZERO12 + eth(3), indirect=True)
    frames = fe.pump()
    assert sorted(f.data for f in frames) == sorted([eth(1), eth(3)])
    st = be.queue_stats()
    assert st[1]["frames"] == 1 and st[3]["frames"] == 1
    # RX: a 3000-byte frame over 1024-byte buffers takes 3 of them
    for q in (0, 2):
        fe.rings[q].post_rx(16, 1024)
    fe.pump()
    big = eth(7, 3000)
    assert be.write(deque([Frame(big)])) is None
    used = fe.rings[0].collect() + fe.rings[2].collect()
    assert [n for _, n in used] == [1024, 1024, 3012 - 2048]
    q = 0 if fe.rings[0].used_idx else 2
    ring = fe.rings[q]
    data = b"".join(fe.mem.read(ring.buffers[h][0][0], n) for h, n in used)
    assert data[:12] == HDR12.pack(0, 0, 0, 0, 0, 0, 3)
    assert data[12:] == big
    # many flows spread over both RX queues
    frames_out = deque(
        Frame(udp4(bytes([i]) * 20)[:26] + bytes([10, 0, i, 1, 10, 0, 0, 2]) + bytes(30))
        for i in range(24)
    )
    assert be.write(frames_out) is None
    assert fe.rings[0].collect() and fe.rings[2].collect()
    fe.close()


def test_blocked_until_guest_adds_buffers(make_backend: Make) -> None:
    be = make_backend()
    fe = FrontEnd(be)
    fe.negotiate(features=bits(vf.VIRTIO_F_VERSION_1, vf.VHOST_USER_F_PROTOCOL_FEATURES))
    rx = fe.rings[0]
    rx.post_rx(2, 2048)
    fe.pump()
    queue = deque(Frame(eth(i)) for i in range(5))
    fd = be.write(queue)
    assert fd == be.blocked_fd
    assert len(queue) == 3
    assert select.select([], [fd], [], 0)[1] == []  # not writable: the daemon sleeps
    fe.pump()
    assert select.select([], [fd], [], 0)[1] == []
    rx.post_rx(8, 2048)
    rx.do_kick()
    fe.pump()
    assert select.select([], [fd], [], 0)[1] == [fd]  # the daemon's writer callback fires
    assert be.write(queue) is None
    assert not queue
    assert len(rx.collect()) == 5
    fe.close()


def test_too_big_frame_dropped_without_mergeable(make_backend: Make) -> None:
    be = make_backend()
    fe = FrontEnd(be)
    fe.negotiate(features=bits(vf.VIRTIO_F_VERSION_1, vf.VHOST_USER_F_PROTOCOL_FEATURES))
    rx = fe.rings[0]
    rx.post_rx(2, 512)
    fe.pump()
    queue = deque([Frame(eth(1, 1000)), Frame(eth(2, 400))])
    assert be.write(queue) is None
    assert [n for _, n in rx.collect()] == [412]
    assert be.queue_stats()[0]["dropped"] == 1
    fe.close()


def test_disabled_and_unready(make_backend: Make) -> None:
    be = make_backend()
    # no front-end: frames are dropped, not queued forever
    q = deque([Frame(eth(1))])
    assert be.write(q) is None and not q and be.rx_dropped == 1
    fe = FrontEnd(be)
    fe.negotiate(features=bits(vf.VIRTIO_F_VERSION_1, vf.VHOST_USER_F_PROTOCOL_FEATURES))
    fe.rings[0].post_rx(4, 2048)
    fe.send(vm.SET_VRING_ENABLE, struct.pack("=II", 0, 0))
    fe.send(vm.SET_VRING_ENABLE, struct.pack("=II", 1, 0))
    fe.pump()
    q = deque([Frame(eth(1))])
    assert be.write(q) is None and be.rx_dropped == 2
    # a disabled TX ring is drained and its frames discarded
    fe.rings[1].send(ZERO12 + eth(5))
    assert fe.pump() == []
    assert fe.rings[1].used_idx == 1 and be.queue_stats()[1]["dropped"] == 1
    fe.close()


def test_get_vring_base_stops_and_restarts(make_backend: Make) -> None:
    be = make_backend()
    changes: list[list[int]] = []
    be.on_fds_changed = lambda: changes.append(be.readable_fds())
    fe = FrontEnd(be)
    fe.negotiate()
    tx = fe.rings[1]
    for i in range(5):
        tx.send(ZERO12 + eth(i))
    assert len(fe.pump()) == 5
    kick_fds = len(be.readable_fds())
    assert kick_fds == 4  # listener, connection, two kicks
    body = fe.call(vm.GET_VRING_BASE, struct.pack("=II", 1, 0))
    assert struct.unpack("=II", body) == (1, 5)
    assert len(be.readable_fds()) == 3
    assert changes and len(changes[-1]) == 3
    # stopped: a kick is not served (its fd is gone); buffers wait
    tx.send(ZERO12 + eth(9))
    assert fe.pump() == []
    # restart as QEMU does: base, addr, kick, call
    fe.setup_ring(1, base=5)
    frames = fe.pump()
    assert [f.data for f in frames] == [eth(9)]
    assert be.ring_state(1)["last_avail"] == 6
    fe.close()


def test_disconnect_and_reconnect(make_backend: Make) -> None:
    be = make_backend()
    changes: list[list[int]] = []
    be.on_fds_changed = lambda: changes.append(be.readable_fds())
    fe = FrontEnd(be)
    fe.negotiate()
    fe.rings[1].send(ZERO12 + eth(1))
    assert len(fe.pump()) == 1
    # a second front-end is refused while the first is connected
    fe2 = FrontEnd(be)
    assert be.error_counts["busy"] == 1
    fe2.sock.settimeout(1)
    assert fe2.sock.recv(10) == b""
    fe2.sock.close()
    fe.close()
    fe.pump()
    assert not be.connected
    assert be.readable_fds() == [changes[-1][0]] == changes[-1]
    # a new session starts from scratch
    fe3 = FrontEnd(be)
    assert be.connected and be.features == 0 and be.sessions == 2
    fe3.negotiate(pairs=1)
    fe3.rings[1].send(ZERO12 + eth(2))
    assert [f.data for f in fe3.pump()] == [eth(2)]
    fe3.rings[0].post_rx(2, 2048)
    fe3.pump()
    assert be.write(deque([Frame(eth(3))])) is None
    assert len(fe3.rings[0].collect()) == 1
    fe3.close()
    fe3.pump()
    assert not be.connected


def test_event_idx_suppresses_interrupts(make_backend: Make) -> None:
    be = make_backend()
    fe = FrontEnd(be)
    fe.negotiate()  # EVENT_IDX offered and taken
    tx = fe.rings[1]
    o = fe.mem.off(tx.avail) + 4 + 2 * tx.num
    struct.pack_into("<H", fe.mem.mm, o, 100)  # used_event: interrupt only after 100
    for i in range(3):
        tx.send(ZERO12 + eth(i))
    assert len(fe.pump()) == 3
    assert not tx.called()
    struct.pack_into("<H", fe.mem.mm, o, 3)
    tx.send(ZERO12 + eth(4))
    fe.pump()
    assert tx.called()
    # avail_event tells the guest where to kick next
    avail_event = struct.unpack_from("<H", fe.mem.mm, fe.mem.off(tx.used) + 4 + 8 * tx.num)[0]
    assert avail_event == 4
    fe.close()


def test_budget_rearms_kick(make_backend: Make) -> None:
    be = make_backend()
    fe = FrontEnd(be)
    fe.negotiate()
    tx = fe.rings[1]
    for i in range(50):
        tx.send(ZERO12 + eth(i))
    kick_fd = be.readable_fds()[-1]
    assert len(be.read(kick_fd, 20)) == 20
    assert select.select([kick_fd], [], [], 0)[0] == [kick_fd]  # still ready
    assert len(fe.pump()) == 30
    fe.close()


def test_fd_numbers_not_leaked(make_backend: Make) -> None:
    before = len(os.listdir("/proc/self/fd"))
    be = make_backend()
    for _ in range(5):
        fe = FrontEnd(be)
        fe.negotiate(pairs=1)
        fe.set_mem_table()  # a second table replaces (and unmaps) the first
        fe.close()
        fe.pump()
    be.close(delete=True)
    assert len(os.listdir("/proc/self/fd")) <= before + 1


def test_send_rarp_hands_the_endpoint_a_rarp(make_backend: Make) -> None:
    """VHOST_USER_SEND_RARP (QEMU after a migration): the back-end's next read returns a
    broadcast RARP from the MAC given, which the daemon forwards as the guest's."""
    be = make_backend()
    fe = FrontEnd(be)
    fe.negotiate(protocol=bits(vf.PROTOCOL_F_MQ, vf.PROTOCOL_F_REPLY_ACK, vf.PROTOCOL_F_RARP))
    mac = bytes.fromhex("525400abcdef")
    fe.send(vm.SEND_RARP, mac + bytes(2))
    [rarp] = fe.pump()
    assert rarp.data[:6] == b"\xff" * 6 and rarp.data[6:12] == mac
    assert rarp.data[12:14] == b"\x80\x35" and rarp.data[20:22] == b"\x00\x03"
    assert rarp.data[22:28] == mac and rarp.data[32:38] == mac
    fe.close()
