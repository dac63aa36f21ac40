"""A vhost-user *front-end* for tests: what QEMU does, with guest memory in a memfd.

Guest memory is one memfd mapped here with identity addressing: guest-physical
address == front-end user address == ``BASE + offset in the memfd``.  The guest
side (split rings, buffers) is built directly in that memory.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import select
import socket
import struct
from collections.abc import Iterable

from pymacvtap.core.frame import Frame
from pymacvtap.frontends import vhost_user as vu
from pymacvtap.virtio import features as vf
from pymacvtap.virtio import messages as vm

HDR = struct.Struct("=III")
DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")
USED = struct.Struct("<II")

BASE = 0x4000_0000
MEM_SIZE = 4 << 20

F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4


def bits(*b: int) -> int:
    v = 0
    for x in b:
        v |= 1 << x
    return v


class GuestMemory:
    def __init__(self, size: int = MEM_SIZE) -> None:
        self.fd = os.memfd_create("guest", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, size)
        self.size = size
        self.mm = mmap.mmap(self.fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        self.top = 0x1000

    def alloc(self, n: int, align: int = 64) -> int:
        self.top = (self.top + align - 1) & ~(align - 1)
        addr = BASE + self.top
        self.top += n
        assert self.top <= self.size, "guest memory exhausted"
        return addr

    def off(self, addr: int) -> int:
        return addr - BASE

    def write(self, addr: int, data: bytes) -> None:
        o = self.off(addr)
        self.mm[o : o + len(data)] = data

    def read(self, addr: int, n: int) -> bytes:
        o = self.off(addr)
        return self.mm[o : o + n]

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


class GuestRing:
    """The driver side of one split virtqueue."""

    def __init__(self, mem: GuestMemory, num: int = 64) -> None:
        self.mem = mem
        self.num = num
        self.desc = mem.alloc(16 * num, 16)
        self.avail = mem.alloc(6 + 2 * num, 2)
        self.used = mem.alloc(6 + 8 * num, 4)
        self.avail_idx = 0
        self.used_seen = 0
        self.free = list(range(num))
        self.kick = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.call = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.buffers: dict[int, list[tuple[int, int]]] = {}  # head -> [(addr, len)]

    def set_desc(self, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.mem.mm[self.mem.off(self.desc) + 16 * i : self.mem.off(self.desc) + 16 * i + 16] = (
            DESC.pack(addr, length, flags, nxt)
        )

    def publish(self, head: int) -> None:
        o = self.mem.off(self.avail)
        U16.pack_into(self.mem.mm, o + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        U16.pack_into(self.mem.mm, o + 2, self.avail_idx)

    def set_avail_idx(self, idx: int) -> None:
        U16.pack_into(self.mem.mm, self.mem.off(self.avail) + 2, idx & 0xFFFF)

    def add_chain(self, bufs: list[tuple[int, int]], writable: bool) -> int:
        ids = [self.free.pop() for _ in bufs]
        for k, (addr, length) in enumerate(bufs):
            last = k == len(bufs) - 1
            flags = (F_WRITE if writable else 0) | (0 if last else F_NEXT)
            self.set_desc(ids[k], addr, length, flags, 0 if last else ids[k + 1])
        self.buffers[ids[0]] = bufs
        self._ids = getattr(self, "_ids", {})
        self._ids[ids[0]] = ids
        self.publish(ids[0])
        return ids[0]

    def add_indirect(self, bufs: list[tuple[int, int]], writable: bool) -> int:
        table = self.mem.alloc(16 * len(bufs), 16)
        for k, (addr, length) in enumerate(bufs):
            last = k == len(bufs) - 1
            flags = (F_WRITE if writable else 0) | (0 if last else F_NEXT)
            self.mem.write(table + 16 * k, DESC.pack(addr, length, flags, 0 if last else k + 1))
        head = self.free.pop()
        self.set_desc(head, table, 16 * len(bufs), F_INDIRECT, 0)
        self.buffers[head] = bufs
        self._ids = getattr(self, "_ids", {})
        self._ids[head] = [head]
        self.publish(head)
        return head

    def send(self, data: bytes, pieces: int = 1, indirect: bool = False) -> int:
        """Put ``data`` (vnet header included) in guest memory and make it available."""
        bufs = []
        step = max(1, -(-len(data) // pieces))
        for start in range(0, len(data), step):
            chunk = data[start : start + step]
            addr = self.mem.alloc(len(chunk), 8)
            self.mem.write(addr, chunk)
            bufs.append((addr, len(chunk)))
        head = self.add_indirect(bufs, False) if indirect else self.add_chain(bufs, False)
        self.do_kick()
        return head

    def post_rx(self, count: int, size: int, pieces: int = 1) -> None:
        for _ in range(count):
            bufs = [(self.mem.alloc(size, 8), size) for _ in range(pieces)]
            self.add_chain(bufs, True)

    def do_kick(self) -> None:
        os.eventfd_write(self.kick, 1)

    @property
    def used_idx(self) -> int:
        return int(U16.unpack_from(self.mem.mm, self.mem.off(self.used) + 2)[0])

    @property
    def used_flags(self) -> int:
        return int(U16.unpack_from(self.mem.mm, self.mem.off(self.used))[0])

    def collect(self) -> list[tuple[int, int]]:
        """Used elements since the last call; their descriptors go back to the free list."""
        out = []
        o = self.mem.off(self.used)
        while self.used_seen != self.used_idx:
            head, length = USED.unpack_from(self.mem.mm, o + 4 + 8 * (self.used_seen % self.num))
            out.append((head, length))
            self.free.extend(self._ids.pop(head))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out

    def called(self) -> bool:
        try:
            os.eventfd_read(self.call)
        except BlockingIOError:
            return False
        return True

    def close(self) -> None:
        for fd in (self.kick, self.call):
            with contextlib.suppress(OSError):
                os.close(fd)


class FrontEnd:
    """Speaks vhost-user to a back-end we also pump (single-threaded)."""

    def __init__(self, backend: vu.VhostUserFrontend, mem: GuestMemory | None = None) -> None:
        self.backend = backend
        self.mem = mem or GuestMemory()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(backend.path)
        self.sock.settimeout(2.0)
        self.rings: dict[int, GuestRing] = {}
        self.frames: list[tuple[int, Frame]] = []
        self.pump()

    # -- driving the back-end ---------------------------------------------------------------

    def pump(self, rounds: int = 50) -> list[Frame]:
        """Serve every ready back-end fd until nothing is ready; frames read are returned."""
        got: list[Frame] = [f for _, f in self.frames]
        self.frames.clear()
        for _ in range(rounds):
            fds = self.backend.readable_fds()
            ready, _, _ = select.select(fds, [], [], 0)
            if not ready:
                break
            for fd in ready:
                got.extend(self.backend.read(fd, 64))
        return got

    # -- messages -----------------------------------------------------------------------------

    def send(
        self, req: int, payload: bytes = b"", fds: Iterable[int] = (), need_reply: bool = False
    ) -> None:
        flags = 1 | (vm.F_NEED_REPLY if need_reply else 0)
        msg = HDR.pack(req, flags, len(payload)) + payload
        fds = list(fds)
        if fds:
            socket.send_fds(self.sock, [msg], fds)
        else:
            self.sock.sendall(msg)

    def recv(self) -> tuple[int, int, bytes]:
        self.frames.extend((0, f) for f in self.pump())
        head = self._recv_exact(HDR.size)
        req, flags, size = HDR.unpack(head)
        return req, flags, self._recv_exact(size)

    def _recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            assert chunk, "back-end closed the connection"
            buf += chunk
        return buf

    def call(self, req: int, payload: bytes = b"", fds: Iterable[int] = ()) -> bytes:
        self.send(req, payload, fds)
        rreq, flags, body = self.recv()
        assert rreq == req and flags == 0x5, (rreq, flags)
        return body

    def call_ack(self, req: int, payload: bytes = b"", fds: Iterable[int] = ()) -> int:
        self.send(req, payload, fds, need_reply=True)
        rreq, flags, body = self.recv()
        assert rreq == req and flags == 0x5
        return int(struct.unpack("=Q", body)[0])

    def get_u64(self, req: int) -> int:
        return int(struct.unpack("=Q", self.call(req))[0])

    # -- a whole set-up as QEMU does it ----------------------------------------------------------

    def negotiate(
        self,
        pairs: int = 1,
        features: int | None = None,
        num: int = 64,
        protocol: int = bits(vf.PROTOCOL_F_MQ, vf.PROTOCOL_F_REPLY_ACK),
    ) -> int:
        offered = self.get_u64(vm.GET_FEATURES)
        assert offered & (1 << vf.VHOST_USER_F_PROTOCOL_FEATURES)
        pf = self.get_u64(vm.GET_PROTOCOL_FEATURES)
        assert pf & protocol == protocol
        self.send(vm.SET_PROTOCOL_FEATURES, struct.pack("=Q", protocol))
        assert self.get_u64(vm.GET_QUEUE_NUM) >= pairs
        self.send(vm.SET_OWNER)
        if features is None:
            features = offered
        features &= offered
        assert self.call_ack(vm.SET_FEATURES, struct.pack("=Q", features)) == 0
        self.set_mem_table()
        for q in range(2 * pairs):
            self.setup_ring(q, num)
        self.pump()
        return features

    def set_mem_table(self) -> None:
        payload = struct.pack("=II", 1, 0) + struct.pack("=QQQQ", BASE, self.mem.size, BASE, 0)
        assert self.call_ack(vm.SET_MEM_TABLE, payload, [self.mem.fd]) == 0

    def setup_ring(self, q: int, num: int = 64, base: int = 0) -> GuestRing:
        ring = self.rings.get(q) or GuestRing(self.mem, num)
        self.rings[q] = ring
        self.send(vm.SET_VRING_NUM, struct.pack("=II", q, ring.num))
        self.send(vm.SET_VRING_BASE, struct.pack("=II", q, base))
        addr = struct.pack("=IIQQQQ", q, 0, ring.desc, ring.used, ring.avail, 0)
        self.send(vm.SET_VRING_ADDR, addr)
        self.send(vm.SET_VRING_KICK, struct.pack("=Q", q), [ring.kick])
        self.send(vm.SET_VRING_CALL, struct.pack("=Q", q), [ring.call])
        assert self.call_ack(vm.SET_VRING_ENABLE, struct.pack("=II", q, 1)) == 0
        return ring

    def close(self) -> None:
        self.sock.close()
        for ring in self.rings.values():
            ring.close()
        self.mem.close()
