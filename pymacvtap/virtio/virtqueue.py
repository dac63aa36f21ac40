"""Split virtqueues (virtio 1.x, section 2.7) as a vhost-user back-end walks them: sans-I/O.

Everything here works on *guest memory* given as buffers (an ``mmap`` of the
front-end's shared memory, or a ``bytearray`` in tests): no sockets, no fds, no
clock.  :mod:`pymacvtap.virtio.rings` drives these objects for the device, and
:mod:`pymacvtap.frontends.vhost_user` owns the I/O (sockets, mmaps, eventfds).

The driver (the guest, through QEMU) is untrusted (SPEC 6).  Every index read
from shared memory is range-checked, every descriptor's address and length is
translated through :class:`GuestMemory` (which only ever yields an offset whose
whole span lies inside one region), chains are bounded by the queue size (or the
indirect table size), and an avail index that runs ahead by more than the
queue size is refused.  Whatever is wrong raises :class:`RingError`; the owner
counts it and marks the ring broken.  Nothing here can read outside the region
an address resolves to.

All ring fields are little-endian (VERSION_1; legacy guests on x86 are too).
"""

from __future__ import annotations

import struct

from pymacvtap.core.frame import VNET_HDR_LEN, Frame, VnetHeader
from pymacvtap.virtio.memory import GuestMemory, RingError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pymacvtap.virtio.memory import RawMemory

    Segment = tuple[RawMemory, int, int]

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
VRING_USED_F_NO_NOTIFY = 1

MAX_QUEUE_SIZE = 32768
# The largest frame (without vnet header) either direction accepts: a 64 KiB
# GSO super-frame plus its Ethernet/VLAN headers, with room to spare.
MAX_FRAME_LEN = 0x10000 + 64

VNET_HDR_MRG_LEN = VNET_HDR_LEN + 2  # with num_buffers

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")
_HDR12 = struct.Struct("<BBHHHHH")

# rx_put results
RX_OK = 0
RX_NO_BUFFERS = 1
RX_TOO_BIG = 2


class QueueStats:
    """Per-virtqueue counters: frames/bytes moved, errors (driver faults), drops."""

    __slots__ = ("bytes", "dropped", "errors", "frames")

    def __init__(self) -> None:
        self.frames = 0
        self.bytes = 0
        self.errors = 0
        self.dropped = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "frames": self.frames,
            "bytes": self.bytes,
            "errors": self.errors,
            "dropped": self.dropped,
        }


def need_event(event: int, new: int, old: int) -> bool:
    """virtio's vring_need_event: did the index move past ``event`` going old → new?"""
    return ((new - event - 1) & 0xFFFF) < ((new - old) & 0xFFFF)


class Virtqueue:
    """One split virtqueue: its configuration, shadow indices and the walks over it.

    Configure ``num``/``desc_addr``/``avail_addr``/``used_addr``/``last_avail``
    (from SET_VRING_*), then :meth:`bind` it to guest memory; :meth:`unbind`
    drops every reference into that memory (needed before it is unmapped).
    Used elements are written as chains are consumed; :meth:`flush_used`
    publishes the used index and says whether the driver wants an interrupt.
    """

    __slots__ = (
        "_abuf",
        "_aoff",
        "_dbuf",
        "_doff",
        "_mask",
        "_mem",
        "_published",
        "_shadow_avail",
        "_ubuf",
        "_uoff",
        "avail_addr",
        "desc_addr",
        "event_idx",
        "index",
        "indirect",
        "last_avail",
        "num",
        "stats",
        "used_addr",
        "used_idx",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.num = 0
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.last_avail = 0
        self.used_idx = 0
        self.event_idx = False
        self.indirect = False
        self.stats = QueueStats()
        self._mem: GuestMemory | None = None
        self._dbuf: RawMemory = bytearray()
        self._doff = 0
        self._abuf: RawMemory = bytearray()
        self._aoff = 0
        self._ubuf: RawMemory = bytearray()
        self._uoff = 0
        self._mask = 0
        self._published = 0
        self._shadow_avail = 0

    # -- setup -------------------------------------------------------------------------

    @property
    def bound(self) -> bool:
        return self._mem is not None

    def bind(self, mem: GuestMemory) -> None:
        """Resolve the ring addresses in ``mem``; RingError when they are not all mapped."""
        self.unbind()
        num = self.num
        if not (0 < num <= MAX_QUEUE_SIZE) or num & (num - 1):
            raise RingError(f"queue size {num} is not a power of two up to {MAX_QUEUE_SIZE}")
        if self.desc_addr & 15 or self.avail_addr & 1 or self.used_addr & 3:
            raise RingError("ring addresses are misaligned")
        dbuf, doff = mem.uva(self.desc_addr, 16 * num)
        abuf, aoff = mem.uva(self.avail_addr, 6 + 2 * num)
        ubuf, uoff = mem.uva(self.used_addr, 6 + 8 * num)
        self._dbuf, self._doff = dbuf, doff
        self._abuf, self._aoff = abuf, aoff
        self._ubuf, self._uoff = ubuf, uoff
        self._mask = num - 1
        self._mem = mem
        used = _U16.unpack_from(ubuf, uoff + 2)[0]
        # Chains are completed in order and at once, so the used index is where
        # the driver's view of our progress stands (libvhost-user resumes so too).
        self.used_idx = self._published = used
        self.last_avail = self._shadow_avail = used

    def unbind(self) -> None:
        self._mem = None
        empty = bytearray()
        self._dbuf = self._abuf = self._ubuf = empty

    def reset(self) -> None:
        """Forget the configuration (a new session); the counters stay."""
        self.unbind()
        self.num = 0
        self.desc_addr = self.avail_addr = self.used_addr = 0
        self.last_avail = self.used_idx = 0
        self.event_idx = self.indirect = False

    # -- indices ---------------------------------------------------------------------------

    def _read_avail_idx(self) -> int:
        idx: int = _U16.unpack_from(self._abuf, self._aoff + 2)[0]
        if (idx - self.last_avail) & 0xFFFF > self.num:
            raise RingError(
                f"avail index {idx} ran {(idx - self.last_avail) & 0xFFFF} ahead "
                f"of {self.last_avail} (queue size {self.num})"
            )
        self._shadow_avail = idx
        return idx

    def available(self) -> int:
        """How many chains the driver made available and we have not consumed."""
        if self._mem is None:
            return 0
        return (self._read_avail_idx() - self.last_avail) & 0xFFFF

    def avail_idx_seen(self) -> int:
        return self._shadow_avail

    def _head(self, pos: int) -> int:
        head: int = _U16.unpack_from(self._abuf, self._aoff + 4 + 2 * (pos & self._mask))[0]
        if head >= self.num:
            raise RingError(f"avail ring entry {head} is not below queue size {self.num}")
        return head

    def _put_used(self, head: int, length: int) -> None:
        _USED_ELEM.pack_into(
            self._ubuf, self._uoff + 4 + 8 * (self.used_idx & self._mask), head, length
        )
        self.used_idx = (self.used_idx + 1) & 0xFFFF

    def flush_used(self) -> bool:
        """Publish the used index; True when the driver asked to be interrupted."""
        new = self.used_idx
        old = self._published
        if new == old or self._mem is None:
            return False
        _U16.pack_into(self._ubuf, self._uoff + 2, new)
        self._published = new
        if self.event_idx:
            event = _U16.unpack_from(self._abuf, self._aoff + 4 + 2 * self.num)[0]
            return need_event(event, new, old)
        return not (_U16.unpack_from(self._abuf, self._aoff)[0] & VRING_AVAIL_F_NO_INTERRUPT)

    def enable_notify(self) -> None:
        """Ask the driver to kick when it adds the next chain."""
        if self._mem is None:
            return
        if self.event_idx:
            # The threshold is the avail index last seen, not last_avail: a receive
            # ring can hold chains we have seen but not used (too few for a frame).
            # The driver kicks when it adds the entry at avail_event; one below its
            # index already would never be passed again, and no kick would come.
            _U16.pack_into(self._ubuf, self._uoff + 4 + 8 * self.num, self._shadow_avail)
        else:
            _U16.pack_into(self._ubuf, self._uoff, 0)

    def disable_notify(self) -> None:
        """Tell the driver kicks are not needed (a hint: it may kick anyway)."""
        if self._mem is None or self.event_idx:
            # With EVENT_IDX an avail_event left behind stops the kicks by itself.
            return
        _U16.pack_into(self._ubuf, self._uoff, VRING_USED_F_NO_NOTIFY)

    # -- chains -------------------------------------------------------------------------------

    def chain(self, head: int, writable: bool) -> list[Segment]:
        """The buffers of the chain at ``head``, all readable (TX) or all writable (RX)."""
        mem = self._mem
        if mem is None:
            raise RingError("ring is not bound")
        dbuf, doff = self._dbuf, self._doff
        size = self.num
        segs: list[Segment] = []
        idx = head
        total = 0
        steps = 0
        addr, length, flags, nxt = _DESC.unpack_from(dbuf, doff + 16 * idx)
        if flags & VRING_DESC_F_INDIRECT:
            if not self.indirect:
                raise RingError("indirect descriptor without VIRTIO_F_INDIRECT_DESC")
            if flags & VRING_DESC_F_NEXT:
                raise RingError("indirect descriptor chained with NEXT")
            if length == 0 or length & 15 or length // 16 > MAX_QUEUE_SIZE:
                raise RingError(f"indirect table of {length} bytes")
            dbuf, doff = mem.gpa(addr, length)
            size = length // 16
            idx = 0
            addr, length, flags, nxt = _DESC.unpack_from(dbuf, doff)
            if flags & VRING_DESC_F_INDIRECT:
                raise RingError("indirect descriptor inside an indirect table")
        while True:
            steps += 1
            if steps > size:
                raise RingError("descriptor chain loops or is longer than the queue")
            if bool(flags & VRING_DESC_F_WRITE) != writable:
                raise RingError(
                    "device-readable buffer in a receive chain"
                    if writable
                    else "device-writable buffer in a transmit chain"
                )
            if length == 0:
                raise RingError("zero-length descriptor")
            total += length
            if total > MAX_FRAME_LEN + VNET_HDR_MRG_LEN and not writable:
                raise RingError(f"transmit chain longer than {MAX_FRAME_LEN} bytes")
            buf, off = mem.gpa(addr, length)
            segs.append((buf, off, length))
            if not flags & VRING_DESC_F_NEXT:
                return segs
            if nxt >= size:
                raise RingError(f"next descriptor {nxt} is not below {size}")
            addr, length, flags, nxt = _DESC.unpack_from(dbuf, doff + 16 * nxt)
            if flags & VRING_DESC_F_INDIRECT:
                raise RingError("indirect descriptor inside a chain")

    # -- transmit (driver → device) -------------------------------------------------------------

    def pop_tx(self, budget: int, hdr_len: int, out: list[Frame] | None) -> bool:
        """Consume up to ``budget`` transmit chains into ``out`` (None: discard them).

        Each chain is returned to the used ring (length 0) as it is read.
        Returns True when chains are left (the budget ran out).  Raises
        RingError on a malformed ring; chains consumed before stay consumed.
        """
        if self._mem is None:
            return False
        stats = self.stats
        chain = self.chain
        while True:
            n = (self._read_avail_idx() - self.last_avail) & 0xFFFF
            if n == 0:
                if not self.event_idx:
                    return False
                # Re-arm the kick, then look again: the driver may have added a
                # chain after our read and before it could see the new event.
                self.enable_notify()
                if not (self._read_avail_idx() - self.last_avail) & 0xFFFF:
                    return False
                continue
            if budget <= 0:
                return True
            for _ in range(min(n, budget)):
                head = self._head(self.last_avail)
                segs = chain(head, False)
                self.last_avail = (self.last_avail + 1) & 0xFFFF
                self._put_used(head, 0)
                budget -= 1
                if out is None:
                    stats.dropped += 1
                    continue
                frame = _frame_from(segs, hdr_len)
                if frame is None:
                    stats.errors += 1
                    continue
                out.append(frame)
                stats.frames += 1
                stats.bytes += len(frame.data)

    # -- receive (device → driver) -----------------------------------------------------------------

    def rx_put(self, data: bytes, vnet: VnetHeader | None, hdr_len: int, mergeable: bool) -> int:
        """Place one frame in the driver's receive buffers: RX_OK, RX_NO_BUFFERS or RX_TOO_BIG.

        Nothing is consumed unless the whole frame fits.  Without mergeable
        buffers the frame must fit one chain; a chain too small for it is left
        for the next frame and this frame is refused (RX_TOO_BIG).
        """
        total = hdr_len + len(data)
        if len(data) > MAX_FRAME_LEN:
            return RX_TOO_BIG
        n = (self._shadow_avail - self.last_avail) & 0xFFFF
        if n == 0:
            n = (self._read_avail_idx() - self.last_avail) & 0xFFFF
            if n == 0:
                return RX_NO_BUFFERS
        chains: list[tuple[int, list[Segment]]] = []
        pos = self.last_avail
        need = total
        chain = self.chain
        while need > 0:
            if len(chains) == n:
                # The ring as it stands cannot hold it: wait for more buffers,
                # unless even a full ring could not.
                return RX_TOO_BIG if n >= self.num else RX_NO_BUFFERS
            head = self._head(pos)
            segs = chain(head, True)
            cap = 0
            for seg in segs:
                cap += seg[2]
            chains.append((head, segs))
            pos = (pos + 1) & 0xFFFF
            need -= cap
            if not mergeable:
                if need > 0:
                    return RX_TOO_BIG
                break
        if vnet is None:
            hdr = _HDR12.pack(0, 0, 0, 0, 0, 0, len(chains))
        else:
            hdr = _HDR12.pack(
                vnet.flags,
                vnet.gso_type,
                vnet.hdr_len,
                vnet.gso_size,
                vnet.csum_start,
                vnet.csum_offset,
                len(chains),
            )
        if hdr_len != VNET_HDR_MRG_LEN:
            hdr = hdr[:hdr_len]
        srcs = (memoryview(hdr), memoryview(data))
        si = 0
        sp = 0
        for head, segs in chains:
            written = 0
            for buf, off, length in segs:
                while length and si < 2:
                    src = srcs[si]
                    k = len(src) - sp
                    if k > length:
                        k = length
                    buf[off : off + k] = src[sp : sp + k]
                    off += k
                    length -= k
                    sp += k
                    written += k
                    if sp == len(src):
                        si += 1
                        sp = 0
                if si == 2:
                    break
            self._put_used(head, written)
        self.last_avail = pos
        stats = self.stats
        stats.frames += 1
        stats.bytes += len(data)
        return RX_OK


def _frame_from(segs: list[Segment], hdr_len: int) -> Frame | None:
    """The frame in a transmit chain: vnet header stripped (kept when it says something)."""
    buf, off, length = segs[0]
    if length >= hdr_len:
        vnet_src: RawMemory | bytes = buf
        voff = off
        if len(segs) == 1:
            data = bytes(buf[off + hdr_len : off + length])
        elif length == hdr_len:
            data = b"".join([b[o : o + n] for b, o, n in segs[1:]])
        else:
            parts = [buf[off + hdr_len : off + length]]
            parts.extend([b[o : o + n] for b, o, n in segs[1:]])
            data = b"".join(parts)
    else:
        whole = b"".join([b[o : o + n] for b, o, n in segs])
        if len(whole) < hdr_len:
            return None
        vnet_src, voff = whole, 0
        data = whole[hdr_len:]
    flags = vnet_src[voff]
    gso_type = vnet_src[voff + 1]
    if flags == 0 and gso_type == 0:
        return Frame(data)
    return Frame(data, VnetHeader.unpack(vnet_src, voff))
