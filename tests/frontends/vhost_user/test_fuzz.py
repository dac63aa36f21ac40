"""A hostile front-end and a hostile guest: malformed messages, bad fds, broken rings.

The back-end must never raise, hang, leak fds or memory; every fault is counted.
"""

from __future__ import annotations

import os
import random
import socket
import struct
from collections import deque
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymacvtap.core.frame import Frame
from pymacvtap.frontends import vhost_user as vu
from pymacvtap.virtio import messages as vm
from pymacvtap.virtio.virtqueue import MAX_FRAME_LEN

from .frontend import BASE, DESC, U16, FrontEnd, bits

Make = Callable[..., vu.VhostUserFrontend]
ZERO12 = bytes(12)
ETH = b"\x02\x00\x00\x00\x00\x01\x02\x00\x00\x00\x00\x02\x88\xb5" + bytes(50)

KNOWN = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 34]


def nfds() -> int:
    return len(os.listdir("/proc/self/fd"))


def random_message(rng: random.Random, memfd: int) -> tuple[bytes, list[int]]:
    req = rng.choice(KNOWN) if rng.random() < 0.9 else rng.randrange(0, 1 << 32)
    flags = 1 | (vm.F_NEED_REPLY if rng.random() < 0.5 else 0)
    if rng.random() < 0.03:
        flags = rng.randrange(0, 1 << 32)
    kind = rng.random()
    q = rng.choice([0, 1, 2, 3, 255, rng.randrange(1 << 32)])
    if kind < 0.3:
        payload = struct.pack(
            "=II", q, rng.choice([0, 1, 64, 256, 100, 1 << 16, rng.randrange(1 << 32)])
        )
    elif kind < 0.45:
        payload = struct.pack(
            "=Q", rng.choice([q & 0xFF, (q & 0xFF) | 0x100, rng.randrange(1 << 64)])
        )
    elif kind < 0.6:
        addrs = [rng.choice([BASE, BASE + 0x1000, 0, rng.randrange(1 << 64)]) for _ in range(4)]
        payload = struct.pack("=IIQQQQ", q, 0, *addrs)
    elif kind < 0.8:
        n = rng.choice([0, 1, 2, 8, 9, rng.randrange(1 << 32)])
        body = b"".join(
            struct.pack(
                "=QQQQ",
                rng.choice([BASE, 0, rng.randrange(1 << 64)]),
                rng.choice([0x10000, 0x8000, 0, 1 << 63, rng.randrange(1 << 64)]),
                rng.choice([BASE, rng.randrange(1 << 64)]),
                rng.choice([0, 0x1000, 0x10000, 1 << 63, rng.randrange(1 << 64)]),
            )
            for _ in range(min(n, 9) if rng.random() < 0.9 else rng.randrange(3))
        )
        payload = struct.pack("=II", n, 0) + body
    else:
        payload = rng.randbytes(rng.choice([0, 1, 4, 7, 8, 12, 40, 100, 300]))
    fds: list[int] = []
    if rng.random() < 0.35:
        for _ in range(rng.choice([1, 1, 2, 3])):
            choice = rng.random()
            if choice < 0.5:
                fds.append(os.eventfd(0, os.EFD_CLOEXEC))
            elif choice < 0.8:
                fds.append(os.dup(memfd))
            else:
                fds.append(os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC))
    header = struct.pack("=III", req & 0xFFFFFFFF, flags, len(payload))
    if rng.random() < 0.01:  # a lying size field
        header = struct.pack("=III", req & 0xFFFFFFFF, 1, rng.choice([1 << 20, 1 << 31]))
    return header + payload, fds


def test_random_message_stream(make_backend: Make) -> None:
    """10,000+ random/malformed messages through the socket, reconnecting when cut off."""
    rng = random.Random(1234)
    be = make_backend(queues=2)
    memfd = os.memfd_create("fuzzmem", os.MFD_CLOEXEC)
    os.ftruncate(memfd, 0x20000)
    fe = FrontEnd(be)
    fd_base = nfds()
    sent = 0
    sessions = 0
    while be.messages < 10_500:
        msg, fds = random_message(rng, memfd)
        try:
            if fds:
                socket.send_fds(fe.sock, [msg], fds)
            else:
                fe.sock.sendall(msg)
        except OSError:
            pass
        for fd in fds:
            os.close(fd)
        sent += 1
        if sent % 4 == 0 or rng.random() < 0.1:
            fe.pump()
            fe.sock.setblocking(False)
            try:
                while True:
                    data = fe.sock.recv(65536)
                    if not data:
                        break
            except BlockingIOError:
                data = b"x"
            except OSError:
                data = b""
            fe.sock.settimeout(2)
            if not data or not be.connected:
                fe.sock.close()
                fe.pump()
                sessions += 1
                fe.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                fe.sock.connect(be.path)
                fe.sock.settimeout(2)
                fe.pump()
        # the daemon side keeps working throughout
        be.write(deque([Frame(ETH)]))
        assert len(be._maps) <= vm.MAX_REGIONS
    fe.sock.close()
    fe.pump()
    assert be.error_counts.get("internal", 0) == 0, be.error_counts
    assert sum(be.error_counts.values()) > 1000
    assert sessions > 10
    assert not be.connected
    assert nfds() <= fd_base + 1
    os.close(memfd)
    fe.mem.close()


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    st.lists(
        st.tuples(
            st.sampled_from([*KNOWN, 0, 21, 40, 1000]),
            st.sampled_from([1, 1 | vm.F_NEED_REPLY, 5, 0]),
            st.binary(max_size=300),
            st.integers(0, 2),
        ),
        max_size=40,
    )
)
def test_handle_message_never_raises(
    make_backend: Make, messages: list[tuple[int, int, bytes, int]]
) -> None:
    be = getattr(test_handle_message_never_raises, "_be", None)
    if be is None:
        be = make_backend(queues=2)
        test_handle_message_never_raises._be = be  # type: ignore[attr-defined]
    for req, flags, payload, nfd in messages:
        fds = [os.eventfd(0, os.EFD_CLOEXEC) for _ in range(nfd)]
        be.handle_message(req, flags, payload, fds)
        assert fds == []  # taken or closed
    assert be.error_counts.get("internal", 0) == 0


# -- hostile guests -----------------------------------------------------------------------------


def setup(make_backend: Make) -> tuple[vu.VhostUserFrontend, FrontEnd]:
    be = make_backend()
    fe = FrontEnd(be)
    fe.negotiate()
    return be, fe


def broken(be: vu.VhostUserFrontend, q: int) -> bool:
    return be.ring_state(q)["broken"] is not None


def test_descriptor_outside_memory(make_backend: Make) -> None:
    be, fe = setup(make_backend)
    tx = fe.rings[1]
    head = tx.send(ZERO12 + ETH)
    tx.set_desc(head, BASE + fe.mem.size - 10, 64, 0, 0)  # runs off the end
    assert fe.pump() == []
    assert broken(be, 1) and be.queue_stats()[1]["errors"] == 1 and be.error_counts["ring"] == 1
    # reconfiguring the ring repairs it (and the fixed chain is then read)
    addr = fe.mem.alloc(len(ETH) + 12)
    fe.mem.write(addr, ZERO12 + ETH)
    tx.set_desc(head, addr, len(ETH) + 12, 0, 0)
    fe.setup_ring(1)
    assert [f.data for f in fe.pump()] == [ETH]
    assert not broken(be, 1)
    fe.close()


def test_descriptor_loop_and_bad_next(make_backend: Make) -> None:
    be, fe = setup(make_backend)
    tx = fe.rings[1]
    addr = fe.mem.alloc(64)
    tx.set_desc(0, addr, 64, 1, 1)
    tx.set_desc(1, addr, 64, 1, 0)  # 0 -> 1 -> 0 -> ...
    tx.publish(0)
    tx.do_kick()
    assert fe.pump() == []
    assert broken(be, 1)
    fe.close()


def test_avail_index_jump_and_bad_head(make_backend: Make) -> None:
    be, fe = setup(make_backend)
    rx, tx = fe.rings[0], fe.rings[1]
    tx.set_avail_idx(tx.num + 5)
    tx.do_kick()
    assert fe.pump() == []
    assert broken(be, 1)
    # RX: head index beyond the queue
    struct.pack_into("<H", fe.mem.mm, fe.mem.off(rx.avail) + 4, 5000)
    rx.set_avail_idx(1)
    q = deque([Frame(ETH)])
    assert be.write(q) is None
    assert broken(be, 0) and not q and be.rx_dropped == 1
    assert be.error_counts.get("internal", 0) == 0
    fe.close()


def test_huge_and_zero_lengths(make_backend: Make) -> None:
    be, fe = setup(make_backend)
    tx = fe.rings[1]
    # a chain whose total exceeds any frame (but each piece is inside memory)
    big = fe.mem.alloc(0x30000)
    tx.add_chain([(big, 0x30000), (big, 0x30000)], False)
    tx.do_kick()
    assert fe.pump() == [] and broken(be, 1)
    fe.setup_ring(1)
    tx.add_chain([(big, 0)], False)
    tx.do_kick()
    assert fe.pump() == [] and broken(be, 1)
    fe.setup_ring(1)
    tx.add_chain([(big, 0xFFFFFFFF)], False)
    tx.do_kick()
    assert fe.pump() == [] and broken(be, 1)
    # write buffers in a transmit chain, read buffers in a receive chain
    fe.setup_ring(1)
    tx.add_chain([(big, 64)], True)
    tx.do_kick()
    assert fe.pump() == [] and broken(be, 1)
    fe.rings[0].add_chain([(big, 2048)], False)
    assert be.write(deque([Frame(ETH)])) is None and broken(be, 0)
    assert be.error_counts.get("internal", 0) == 0
    fe.close()


def test_short_frame_counted(make_backend: Make) -> None:
    be, fe = setup(make_backend)
    fe.rings[1].send(b"\x00" * 5)  # shorter than the vnet header
    assert fe.pump() == []
    assert be.queue_stats()[1]["errors"] == 1 and not broken(be, 1)
    fe.close()


def test_bad_indirect_tables(make_backend: Make) -> None:
    be, fe = setup(make_backend)
    tx = fe.rings[1]
    table = fe.mem.alloc(32, 16)
    fe.mem.write(table, DESC.pack(table, 16, 4, 0) + DESC.pack(0, 0, 0, 0))  # nested
    tx.set_desc(0, table, 32, 4, 0)
    tx.publish(0)
    tx.do_kick()
    assert fe.pump() == [] and broken(be, 1)
    fe.setup_ring(1)
    tx.set_desc(0, table, 17, 4, 0)  # not a multiple of 16
    tx.publish(0)
    tx.do_kick()
    assert fe.pump() == [] and broken(be, 1)
    fe.close()


def test_bad_memory_tables(make_backend: Make) -> None:
    be, fe = setup(make_backend)
    memfd = fe.mem.fd

    def table(regions: list[tuple[int, int, int, int]], n: int | None = None) -> bytes:
        body = b"".join(struct.pack("=QQQQ", *r) for r in regions)
        return struct.pack("=II", len(regions) if n is None else n, 0) + body

    good = (BASE, fe.mem.size, BASE, 0)
    assert fe.call_ack(vm.SET_MEM_TABLE, table([good] * 9), [memfd] * 8) != 0
    assert fe.call_ack(vm.SET_MEM_TABLE, table([(BASE, fe.mem.size, BASE, 4096)]), [memfd]) != 0
    assert fe.call_ack(vm.SET_MEM_TABLE, table([(BASE, 1 << 63, BASE, 1 << 63)]), [memfd]) != 0
    assert fe.call_ack(vm.SET_MEM_TABLE, table([(BASE, 0, BASE, 0)]), [memfd]) != 0
    assert fe.call_ack(vm.SET_MEM_TABLE, table([good], n=2), [memfd]) != 0
    assert fe.call_ack(vm.SET_MEM_TABLE, table([good]), []) != 0
    devnull = os.open("/dev/null", os.O_RDWR)
    assert fe.call_ack(vm.SET_MEM_TABLE, table([good]), [devnull]) != 0
    os.close(devnull)
    # region addresses near 2**64 must not wrap
    assert fe.call_ack(vm.SET_MEM_TABLE, table([((1 << 64) - 4096, 8192, 0, 0)]), [memfd]) != 0
    assert be.error_counts["memory"] >= 6
    # the old table still works
    fe.rings[1].send(ZERO12 + ETH)
    assert [f.data for f in fe.pump()] == [ETH]
    # more fds than any message may carry: the session is reset
    fe.send(vm.SET_MEM_TABLE, table([good] * 9), [memfd] * 9)
    fe.pump()
    assert not be.connected and be.error_counts["protocol"] == 1
    fe.close()


def rss_kib() -> int:
    """This process's resident memory now, in KiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    desc=st.binary(min_size=16 * 8, max_size=16 * 8),
    ring=st.lists(st.integers(0, 0xFFFF), min_size=8, max_size=8),
    avail_idx=st.integers(0, 0xFFFF),
    flags=st.integers(0, 3),
    direction=st.sampled_from([0, 1]),
)
def test_random_ring_contents(
    make_backend: Make,
    desc: bytes,
    ring: list[int],
    avail_idx: int,
    flags: int,
    direction: int,
) -> None:
    state = getattr(test_random_ring_contents, "_state", None)
    if state is None:
        be = make_backend()
        fe = FrontEnd(be)
        fe.negotiate(num=8)
        state = (be, fe, rss_kib())
        test_random_ring_contents._state = state  # type: ignore[attr-defined]
    be, fe, rss_at_start = state
    r = fe.rings[direction]
    # make some descriptors point into memory, so valid chains occur too
    desc_list = bytearray(desc)
    for k in range(0, 8, 2):
        addr = BASE + 0x100000 + 0x1000 * k
        _, length, dflags, nxt = DESC.unpack_from(desc_list, 16 * k)
        DESC.pack_into(desc_list, 16 * k, addr, length % 0x2000, dflags & 7, nxt % 10)
    fe.mem.write(r.desc, bytes(desc_list))
    for k, head in enumerate(ring):
        U16.pack_into(fe.mem.mm, fe.mem.off(r.avail) + 4 + 2 * k, head % 12)
    U16.pack_into(fe.mem.mm, fe.mem.off(r.avail), flags)
    r.set_avail_idx(avail_idx)
    if direction:
        r.do_kick()
        frames = fe.pump()
        assert all(len(f.data) <= MAX_FRAME_LEN for f in frames)
    else:
        q = deque([Frame(ETH), Frame(ETH * 20)])
        fd = be.write(q)
        assert fd is None or fd == be.blocked_fd
    assert be.error_counts.get("internal", 0) == 0
    # reset the ring for the next example: zero it and reconfigure it
    fe.mem.write(r.used, bytes(6 + 8 * r.num))
    fe.mem.write(r.avail, bytes(6 + 2 * r.num))
    fe.setup_ring(direction, num=8)
    assert not broken(be, direction)
    # Bounded: what this test's examples hold, not the high-water mark of the whole
    # pytest process (the engine fuzz of `make soak` alone peaks at several GiB).
    assert rss_kib() - rss_at_start < 200_000


def test_notifier_fd_checks(make_backend: Make) -> None:
    be, fe = setup(make_backend)
    # a regular file as kick fd is refused (epoll cannot watch it)
    assert fe.call_ack(vm.SET_VRING_KICK, struct.pack("=Q", 1), [fe.mem.fd]) != 0
    # no-fd flag with an fd, two fds, none without the flag
    e = os.eventfd(0)
    assert fe.call_ack(vm.SET_VRING_CALL, struct.pack("=Q", 0x100), [e]) != 0
    assert fe.call_ack(vm.SET_VRING_CALL, struct.pack("=Q", 1), [e, e]) != 0
    assert fe.call_ack(vm.SET_VRING_CALL, struct.pack("=Q", 1), []) != 0
    assert fe.call_ack(vm.SET_VRING_CALL, struct.pack("=Q", 0x1FF), []) != 0  # queue 255
    os.close(e)
    assert be.error_counts["fds"] >= 4
    assert bits(1) == 2
    fe.close()
