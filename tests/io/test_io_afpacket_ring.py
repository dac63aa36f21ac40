"""DeviceSocket's receive ring (TPACKET_V2) and its fallback, and send_batch.

Every receive test runs in both modes: with the ring, and without
(``ring_size=0``: one recvmsg per frame, what the socket falls back to when the
kernel refuses a ring).
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections import deque

import pytest
from io_helpers import (
    ETH_P_EXPERIMENTAL,
    RawSocket,
    Veth,
    collect,
    eth_frame,
    sh,
)

from pymacvtap.core.frame import VIRTIO_NET_HDR_GSO_TCPV4, Frame, VnetHeader
from pymacvtap.io import afpacket, rxring
from pymacvtap.io.afpacket import DeviceSocket
from pymacvtap.io.netns import entered

SRC = bytes.fromhex("02000000aa01")
FOREIGN = bytes.fromhex("02000000bb02")
BCAST = b"\xff" * 6
MODES = {afpacket.DEFAULT_RING_SIZE: "tpacket_v2", 0: "recvmsg"}
PACKET_FANOUT_LB = 1


def _lower(ns: str, ifname: str, **kw: object) -> DeviceSocket:
    with entered(ns):
        return DeviceSocket(ifname, **kw)  # type: ignore[arg-type]


def _ours(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.ethertype == ETH_P_EXPERIMENTAL]


def _inject(inj: RawSocket, frames: list[bytes]) -> None:
    """Paced so that the veth's backlog (netdev_max_backlog) never overflows."""
    for i in range(0, len(frames), 200):
        for data in frames[i : i + 200]:
            inj.send(data)
        time.sleep(0.002)


def _numbered(count: int, size: int = 46) -> list[bytes]:
    return [eth_frame(BCAST, SRC, i.to_bytes(4, "big").ljust(size, b".")) for i in range(count)]


def _readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


@pytest.fixture(params=sorted(MODES), ids=lambda size: MODES[size])
def ring_size(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def test_mode_is_reported(veth: Veth, ring_size: int) -> None:
    with _lower(veth.ns_b, veth.b, ring_size=ring_size) as lower:
        assert lower.mode == MODES[ring_size]
    with _lower(veth.ns_b, veth.b) as lower:
        assert lower.mode == "tpacket_v2"  # the default


def test_many_small_frames_arrive_in_order(veth: Veth, ring_size: int) -> None:
    inj = RawSocket(veth.ns_a, veth.a)
    with _lower(veth.ns_b, veth.b, ring_size=ring_size) as lower:
        sent = _numbered(1500)
        _inject(inj, sent)
        got = collect(lambda: _ours(lower.recv_batch(64)), lower.fileno(), len(sent), 3.0)
        assert [f.data for f in got] == sent  # type: ignore[attr-defined]
        assert all(f.vnet is None for f in got)  # type: ignore[attr-defined]
        time.sleep(0.01)
        assert lower.recv_batch(64) == []
        assert lower.stats()["drops"] == 0
    inj.close()


def test_frames_of_every_size_up_to_the_mtu(veth: Veth, ring_size: int) -> None:
    """Around the V2 slot size too (1514 bytes fit a 2 KiB slot, headers included)."""
    inj = RawSocket(veth.ns_a, veth.a)
    with _lower(veth.ns_b, veth.b, ring_size=ring_size) as lower:
        sent = [eth_frame(BCAST, SRC, bytes([n % 251]) * n) for n in (46, 47, 500, 1499, 1500)]
        _inject(inj, sent)
        got = collect(lambda: _ours(lower.recv_batch(64)), lower.fileno(), len(sent))
        assert [f.data for f in got] == sent  # type: ignore[attr-defined]
    inj.close()


def test_partially_consumed_ring(veth: Veth, ring_size: int) -> None:
    """recv_batch stops at its limit and resumes there; readiness stays up."""
    inj = RawSocket(veth.ns_a, veth.a)
    with _lower(veth.ns_b, veth.b, ring_size=ring_size) as lower:
        sent = _numbered(300)
        _inject(inj, sent)
        time.sleep(0.05)
        got: list[Frame] = []
        while len(got) < len(sent):
            assert _readable(lower.fileno())
            batch = lower.recv_batch(7)
            assert 0 < len(batch) <= 7
            got.extend(_ours(batch))
        assert [f.data for f in got] == sent
        assert lower.recv_batch(7) == []
        # And again, with the reader starting in the middle of the ring.
        more = _numbered(50)
        _inject(inj, more)
        got2 = collect(lambda: _ours(lower.recv_batch(3)), lower.fileno(), len(more))
        assert [f.data for f in got2] == more  # type: ignore[attr-defined]
    inj.close()


def test_vlan_tag_is_restored(veth: Veth, ring_size: int) -> None:
    inj = RawSocket(veth.ns_a, veth.a)
    tagged = [
        BCAST + SRC + b"\x81\x00" + vid.to_bytes(2, "big") + b"\x88\xb5" + b"tag".ljust(46, b".")
        for vid in (0x202A, 0x0001, 0xEFFF)
    ]
    plain = eth_frame(BCAST, SRC, b"plain".ljust(46, b"."))
    with (
        _lower(veth.ns_b, veth.b, ring_size=ring_size) as lower,
        _lower(veth.ns_b, veth.b, ring_size=ring_size, restore_vlan=False) as raw,
    ):
        _inject(inj, [*tagged, plain])
        got = collect(lambda: lower.recv_batch(8), lower.fileno(), 4)
        assert [f.data for f in got] == [*tagged, plain]  # type: ignore[attr-defined]
        untagged = collect(lambda: raw.recv_batch(8), raw.fileno(), 4)
        assert [f.data for f in untagged] == [t[:12] + t[16:] for t in tagged] + [plain]  # type: ignore[attr-defined]
    inj.close()


def test_a_labelled_socket_reads_a_stripped_tag_as_the_frames_label(
    veth: Veth, ring_size: int
) -> None:
    """The fast path's inbox: the tag is the sender's label, never part of the frame.
    A frame too big for a ring slot (read from the socket instead) keeps its label too."""
    for ns, end in ((veth.ns_a, veth.a), (veth.ns_b, veth.b)):
        sh("ip", "-n", ns, "link", "set", end, "mtu", "4000")
    inj = RawSocket(veth.ns_a, veth.a)
    payloads = [b"small".ljust(46, b"."), b"big".ljust(3000, b"."), b"outer".ljust(46, b".")]
    sent = [
        BCAST + SRC + b"\x81\x00\x00\x07" + b"\x88\xb5" + payloads[0],
        BCAST + SRC + b"\x81\x00\x0f\xff" + b"\x88\xb5" + payloads[1],
        BCAST + SRC + b"\x88\xa8\x30\x05" + b"\x88\xb5" + payloads[2],
        eth_frame(BCAST, SRC, b"plain".ljust(46, b".")),
    ]
    with _lower(veth.ns_b, veth.b, ring_size=ring_size, labelled=True) as inbox:
        _inject(inj, sent)
        got: list[tuple[int, bytes]] = []

        def read() -> list[object]:
            frames = inbox.recv_batch(8)
            assert inbox.labels is not None and len(inbox.labels) == len(frames)
            pairs = zip(inbox.labels, frames, strict=True)
            return [(label, f.data) for label, f in pairs if f.ethertype == ETH_P_EXPERIMENTAL]

        got = collect(read, inbox.fileno(), 4)  # type: ignore[assignment]
    assert got == [
        (0x8100 << 16 | 0x0007, sent[0][:12] + sent[0][16:]),
        (0x8100 << 16 | 0x0FFF, sent[1][:12] + sent[1][16:]),
        (0x88A8 << 16 | 0x3005, sent[2][:12] + sent[2][16:]),
        (-1, sent[3]),
    ]
    inj.close()


def test_own_transmissions_are_not_received(veth: Veth, ring_size: int) -> None:
    cap = RawSocket(veth.ns_a, veth.a)
    with _lower(veth.ns_b, veth.b, ring_size=ring_size) as lower:
        frames = deque(Frame(eth_frame(FOREIGN, lower.mac, bytes([i]) * 60)) for i in range(5))
        assert lower.send_batch(frames) == (5, 0)
        assert cap.recv_all(lambda d: d[12:14] == b"\x88\xb5", count=5)
        time.sleep(0.05)
        assert _ours(lower.recv_batch(100)) == []
    cap.close()


def test_tcp_stream_arrives_as_gso_super_frames(veth: Veth, ring_size: int) -> None:
    """GRO super-frames with their vnet header: by the ring's copy path, or recvmsg."""
    sh("ip", "-n", veth.ns_a, "addr", "add", "10.79.0.1/24", "dev", veth.a)
    sh("ip", "-n", veth.ns_b, "addr", "add", "10.79.0.2/24", "dev", veth.b)
    total = 4 << 20
    with _lower(veth.ns_b, veth.b, ring_size=ring_size) as lower:
        with entered(veth.ns_b):
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.bind(("10.79.0.2", 5002))
            server.listen(1)
        with entered(veth.ns_a):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(("10.79.0.2", 5002))
        payload = bytes(range(256)) * (total // 256)
        sender = threading.Thread(target=client.sendall, args=(payload,))
        sender.start()
        conn, _ = server.accept()
        conn.settimeout(10)
        frames: list[Frame] = []
        received = 0
        while received < total:
            chunk = conn.recv(1 << 20)
            assert chunk
            received += len(chunk)
            frames.extend(lower.recv_batch(10_000))  # keep the ring drained
        sender.join()
        for s in (conn, client, server):
            s.close()
        time.sleep(0.05)
        frames.extend(lower.recv_batch(10_000))
        stats = lower.stats()
    tcp = [f for f in frames if f.ethertype == 0x0800 and f.data[23] == 6]
    gso = [f for f in tcp if f.vnet is not None and f.vnet.is_gso]
    assert gso, f"{len(tcp)} TCP frames, none GSO"
    for f in gso:
        assert f.vnet is not None
        assert f.vnet.gso_type & 0x7F == VIRTIO_NET_HDR_GSO_TCPV4
        assert 1000 <= f.vnet.gso_size <= 1448
        assert f.vnet.hdr_len in (0, 66, 54)  # eth + ip + tcp (+ timestamps)
        ihl = (f.data[14] & 0xF) * 4
        doff = (f.data[14 + ihl + 12] >> 4) * 4
        # The payload of every super-frame is the right slice of the stream.
        seq_payload = f.data[14 + ihl + doff :]
        assert seq_payload == payload[: len(seq_payload)] or seq_payload[:256] in payload
    big = max(gso, key=len)
    assert len(big) > 1514
    assert big.segment_size() <= 1500
    # The whole stream crossed the socket, unless the test (which reads the lower only
    # between recv calls on a loaded machine) let it overflow: then the kernel says so.
    seen = sum(len(f.data) - 66 for f in tcp if len(f.data) > 66)
    assert lower.rx_truncated == 0
    if not stats["drops"]:
        assert seen >= total * 0.99, (len(tcp), len(gso), stats)


def test_ring_statistics_count_drops(veth: Veth, ring_size: int) -> None:
    inj = RawSocket(veth.ns_a, veth.a)
    # The ring: 64 KiB = 32 slots; recvmsg: a small receive buffer.
    size = 64 << 10 if ring_size else 0
    with _lower(veth.ns_b, veth.b, ring_size=size, rcvbuf=64 << 10) as lower:
        sent = _numbered(600)
        _inject(inj, sent)
        time.sleep(0.05)
        first = lower.stats()
        assert first["packets"] >= len(sent)
        assert first["drops"] > 0
        got = _ours(lower.recv_batch(100_000))
        assert 0 < len(got) < len(sent)
        nums = [int.from_bytes(f.data[14:18], "big") for f in got]
        assert nums == sorted(nums)
        second = lower.stats()  # cumulative, though the kernel resets on read
        assert second["drops"] >= first["drops"]
        assert second["packets"] >= first["packets"]
    inj.close()


def test_fallback_when_the_kernel_refuses_the_ring(
    veth: Veth, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Geometry the kernel rejects (EINVAL): the socket reads with recvmsg instead."""
    monkeypatch.setattr(rxring, "RING_V2_FRAME_SIZE", 2047)  # not TPACKET_ALIGNMENT
    inj = RawSocket(veth.ns_a, veth.a)
    tagged = BCAST + SRC + b"\x81\x00\x00\x07" + b"\x88\xb5" + b"tagged".ljust(46, b".")
    with _lower(veth.ns_b, veth.b) as lower:
        assert lower.mode == "recvmsg"
        sent = [*_numbered(20), tagged]
        _inject(inj, sent)
        got = collect(
            lambda: [f for f in lower.recv_batch(8) if f.src == SRC], lower.fileno(), len(sent)
        )
        assert [f.data for f in got] == sent  # type: ignore[attr-defined]
        assert lower.stats()["drops"] == 0
    inj.close()


def test_lower_down_and_up_again(veth: Veth, ring_size: int) -> None:
    inj = RawSocket(veth.ns_a, veth.a)
    with _lower(veth.ns_b, veth.b, ring_size=ring_size) as lower:
        sh("ip", "-n", veth.ns_b, "link", "set", veth.b, "down")
        assert _readable(lower.fileno())  # POLLERR
        assert lower.recv_batch(8) == []
        assert lower.link_down_events == 1
        assert lower.recv_batch(8) == []
        assert lower.link_down_events == 1
        sh("ip", "-n", veth.ns_b, "link", "set", veth.b, "up")
        inj.send(eth_frame(BCAST, SRC, b"back".ljust(46)))
        got = collect(lambda: _ours(lower.recv_batch(8)), lower.fileno(), 1)
        assert len(got) == 1
    inj.close()


def test_fanout_with_rings(veth: Veth, ring_size: int) -> None:
    """Every frame reaches exactly one socket of the group (round robin here)."""
    inj = RawSocket(veth.ns_a, veth.a)
    size = 1 << 20 if ring_size else 0
    lowers = [_lower(veth.ns_b, veth.b, ring_size=size) for _ in range(2)]
    try:
        for lower in lowers:
            lower.join_fanout(0x4242, PACKET_FANOUT_LB)
        sent = _numbered(200)
        _inject(inj, sent)
        time.sleep(0.05)
        parts = [_ours(lower.recv_batch(1000)) for lower in lowers]
        assert all(parts)
        nums = sorted(int.from_bytes(f.data[14:18], "big") for p in parts for f in p)
        assert nums == list(range(200))
    finally:
        for lower in lowers:
            lower.close()
    inj.close()


def test_send_batch(veth: Veth) -> None:
    cap = RawSocket(veth.ns_a, veth.a)
    with _lower(veth.ns_b, veth.b) as lower:
        good = [Frame(eth_frame(FOREIGN, lower.mac, bytes([i]) * 60)) for i in range(10)]
        good.append(Frame(eth_frame(FOREIGN, SRC, b"zero vnet".ljust(46)), VnetHeader()))
        oversize = Frame(eth_frame(FOREIGN, lower.mac, b"x" * 3000))
        queue = deque([*good[:4], oversize, *good[4:]])
        assert lower.send_batch(queue, budget=3) == (3, 0)
        assert len(queue) == len(good) + 1 - 3
        assert lower.send_batch(queue) == (len(good) - 3, 1)
        assert not queue
        got = cap.recv_all(lambda d: d[12:14] == b"\x88\xb5", count=len(good))
        assert got == [f.data for f in good]
        assert lower.send_batch(deque()) == (0, 0)
    cap.close()


def test_send_batch_on_a_full_socket_keeps_the_rest() -> None:
    """EAGAIN/ENOBUFS stop the batch and leave the frame at the head of the queue."""
    import errno

    class Full:
        calls = 0

        def __call__(self, bufs: object) -> int:
            self.calls += 1
            if self.calls > 2:
                raise OSError(errno.ENOBUFS, "full")
            return 60

    lower = DeviceSocket.__new__(DeviceSocket)
    lower._sendmsg = Full()  # type: ignore[assignment]
    frames = [Frame(bytes([i]) * 60) for i in range(5)]
    queue = deque(frames)
    assert lower.send_batch(queue) == (2, 0)
    assert list(queue) == frames[2:]
