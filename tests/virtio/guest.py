"""A guest and its front-end without any I/O, for driving :class:`pymacvtap.virtio.device.Device`
with plain function calls.

Guest memory is a ``bytearray`` with identity addressing (guest-physical address == front-end
address == ``BASE + offset``); split rings are built in it as a driver does; messages are
built as QEMU sends them, with made-up fd numbers standing for the fds (the device never
touches an fd).  Only ``struct`` is imported here, so the no-I/O check can run it too.
"""

from __future__ import annotations

import struct

from pymacvtap.virtio import features as vf
from pymacvtap.virtio import messages as vm
from pymacvtap.virtio.actions import Action, MapMemory, Reply
from pymacvtap.virtio.device import Device

BASE = 0x4000_0000
DESC = struct.Struct("<QIHH")
U16 = struct.Struct("<H")
USED = struct.Struct("<II")
F_NEXT, F_WRITE, F_INDIRECT = 1, 2, 4
MEMORY_FD = 50
KICK_FD = 100  # + queue
CALL_FD = 200  # + queue
ERR_FD = 300  # + queue


class Memory:
    def __init__(self, size: int = 1 << 20) -> None:
        self.buf = bytearray(size)
        self.top = 0x1000

    def alloc(self, n: int, align: int = 64) -> int:
        self.top = (self.top + align - 1) & ~(align - 1)
        addr = BASE + self.top
        self.top += n
        assert self.top <= len(self.buf), "guest memory exhausted"
        return addr

    def write(self, addr: int, data: bytes) -> None:
        self.buf[addr - BASE : addr - BASE + len(data)] = data

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.buf[addr - BASE : addr - BASE + n])


class Ring:
    """The driver side of one split virtqueue."""

    def __init__(self, mem: Memory, num: int = 16) -> None:
        self.mem = mem
        self.num = num
        self.desc = mem.alloc(16 * num, 16)
        self.avail = mem.alloc(6 + 2 * num, 2)
        self.used = mem.alloc(6 + 8 * num, 4)
        self.avail_idx = 0
        self.used_seen = 0
        self.next_desc = 0
        self.buffers: dict[int, list[tuple[int, int]]] = {}

    def set_desc(self, i: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.mem.write(self.desc + 16 * i, DESC.pack(addr, length, flags, nxt))

    def add_chain(self, bufs: list[tuple[int, int]], writable: bool) -> int:
        ids = [(self.next_desc + k) % self.num for k in range(len(bufs))]
        self.next_desc = (self.next_desc + len(bufs)) % self.num
        for k, (addr, length) in enumerate(bufs):
            last = k == len(bufs) - 1
            flags = (F_WRITE if writable else 0) | (0 if last else F_NEXT)
            self.set_desc(ids[k], addr, length, flags, 0 if last else ids[k + 1])
        self.buffers[ids[0]] = bufs
        self.publish(ids[0])
        return ids[0]

    def publish(self, head: int) -> None:
        o = self.avail - BASE
        U16.pack_into(self.mem.buf, o + 4 + 2 * (self.avail_idx % self.num), head)
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        U16.pack_into(self.mem.buf, o + 2, self.avail_idx)

    def send(self, data: bytes) -> int:
        """``data`` (vnet header included) in one buffer, made available."""
        addr = self.mem.alloc(len(data), 8)
        self.mem.write(addr, data)
        return self.add_chain([(addr, len(data))], False)

    def post_rx(self, count: int, size: int) -> None:
        for _ in range(count):
            self.add_chain([(self.mem.alloc(size, 8), size)], True)

    @property
    def used_idx(self) -> int:
        return int(U16.unpack_from(self.mem.buf, self.used - BASE + 2)[0])

    def collect(self) -> list[tuple[int, int]]:
        """Used elements (head, length) since the last call."""
        out = []
        while self.used_seen != self.used_idx:
            at = self.used - BASE + 4 + 8 * (self.used_seen % self.num)
            out.append(USED.unpack_from(self.mem.buf, at))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out

    def received(self) -> list[bytes]:
        """What the device wrote into receive buffers since the last call (vnet header too)."""
        return [self.mem.read(self.buffers[head][0][0], n) for head, n in self.collect()]


def message(
    request: int, payload: bytes = b"", fds: list[vm.Fd] | None = None, ack: bool = False
) -> vm.Message:
    flags = vm.VERSION | (vm.F_NEED_REPLY if ack else 0)
    return vm.Message(request, flags, payload, fds)


def notifier(number: int) -> vm.Fd:
    return vm.Fd(number, notifier_error=None)


class Driver:
    """Speaks to a Device as QEMU does, answering MapMemory with ``memory``'s buffer."""

    def __init__(self, device: Device, mem: Memory | None = None) -> None:
        self.device = device
        self.mem = mem or Memory()
        self.rings: dict[int, Ring] = {}

    def send(
        self, request: int, payload: bytes = b"", fds: list[vm.Fd] | None = None, ack: bool = False
    ) -> list[Action]:
        """Feed one message; the actions it caused (MapMemory answered as a front-end would)."""
        self.device.receive(message(request, payload, fds, ack))
        actions = self.device.take_actions()
        for action in actions:
            if isinstance(action, MapMemory):
                self.device.memory_mapped([self.mem.buf for _ in action.regions])
                actions += self.device.take_actions()
        return actions

    def ask(self, request: int, payload: bytes = b"", ack: bool = False) -> bytes:
        (reply,) = [a for a in self.send(request, payload, ack=ack) if isinstance(a, Reply)]
        assert reply.request == request
        return reply.payload

    def negotiate(self, pairs: int = 1, features: int | None = None, num: int = 16) -> int:
        offered = vm.U64.unpack(self.ask(vm.GET_FEATURES))[0]
        if features is None:
            features = offered
        self.send(vm.SET_PROTOCOL_FEATURES, vm.U64.pack(vf.bits(vf.PROTOCOL_F_REPLY_ACK)))
        self.send(vm.SET_FEATURES, vm.U64.pack(features))
        self.set_mem_table()
        for q in range(2 * pairs):
            self.setup_ring(q, num)
        return features

    def set_mem_table(self) -> list[Action]:
        payload = vm.STATE.pack(1, 0) + struct.pack("=QQQQ", BASE, len(self.mem.buf), BASE, 0)
        fd = vm.Fd(MEMORY_FD, memory_size=len(self.mem.buf))
        return self.send(vm.SET_MEM_TABLE, payload, [fd], ack=True)

    def setup_ring(self, q: int, num: int = 16, base: int = 0) -> list[Action]:
        ring = self.rings.get(q) or Ring(self.mem, num)
        self.rings[q] = ring
        actions = self.send(vm.SET_VRING_NUM, vm.STATE.pack(q, ring.num))
        actions += self.send(vm.SET_VRING_BASE, vm.STATE.pack(q, base))
        addr = vm.ADDR.pack(q, 0, ring.desc, ring.used, ring.avail, 0)
        actions += self.send(vm.SET_VRING_ADDR, addr)
        actions += self.send(vm.SET_VRING_CALL, vm.U64.pack(q), [notifier(CALL_FD + q)])
        actions += self.send(vm.SET_VRING_KICK, vm.U64.pack(q), [notifier(KICK_FD + q)])
        actions += self.send(vm.SET_VRING_ENABLE, vm.STATE.pack(q, 1))
        return actions
