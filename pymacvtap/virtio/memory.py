"""Guest memory: the table the front-end shares (SET_MEM_TABLE) and address translation.

The front-end sends up to eight regions, each an fd (a memfd or hugetlbfs file) with where
the region sits in guest-physical space, in the front-end's address space, and in the file.
:func:`memory_table` checks a table against what the I/O layer found out about its fds and
says what to map; once mapped, :class:`GuestMemory` translates the addresses descriptors and
ring setup carry into (buffer, offset) pairs, never one whose span leaves its region.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from pymacvtap.virtio.messages import MAX_REGIONS, Fd, Refused

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap

    # Guest memory as the rings see it: sliceable, writable by slice, a buffer.
    RawMemory = bytearray | mmap.mmap

MEM_HEAD = struct.Struct("=II")  # nregions, padding
MEM_REGION = struct.Struct("=QQQQ")  # guest_phys, size, user_addr, mmap_offset
MAX_MAPPING = 1 << 42  # 4 TiB of guest RAM per region is plenty
_U64_MAX = 1 << 64


class RingError(Exception):
    """The driver broke the contract on guest memory or a virtqueue; the message says how."""


class Region:
    """One region of guest memory: ``size`` bytes at ``buf[base:]``.

    ``gpa`` is the guest-physical address of its start (what descriptors
    carry), ``uva`` its address in the front-end's process (what
    SET_VRING_ADDR carries).
    """

    __slots__ = ("base", "buf", "gpa", "size", "uva")

    def __init__(self, gpa: int, size: int, uva: int, buf: RawMemory, base: int = 0) -> None:
        if size <= 0 or base < 0 or base + size > len(buf):
            raise RingError(f"region of {size} bytes at offset {base} exceeds its mapping")
        if not (gpa >= 0 and gpa + size <= _U64_MAX and uva >= 0 and uva + size <= _U64_MAX):
            raise RingError("region address overflows 64 bits")
        self.gpa = gpa
        self.size = size
        self.uva = uva
        self.buf = buf
        self.base = base


class GuestMemory:
    """Address translation over at most a few regions (vhost-user allows 8)."""

    __slots__ = ("regions",)

    def __init__(self, regions: Sequence[Region]) -> None:
        # Biggest first: most buffers live in the big RAM region.
        self.regions = sorted(regions, key=lambda r: -r.size)

    def gpa(self, addr: int, length: int) -> tuple[RawMemory, int]:
        """(buffer, offset) of ``length`` bytes at guest-physical ``addr``, all in one region."""
        for r in self.regions:
            off = addr - r.gpa
            if off >= 0 and off + length <= r.size:
                return r.buf, r.base + off
        raise RingError(f"guest address {addr:#x}+{length} is not in guest memory")

    def uva(self, addr: int, length: int) -> tuple[RawMemory, int]:
        """Likewise for an address in the front-end's address space."""
        for r in self.regions:
            off = addr - r.uva
            if off >= 0 and off + length <= r.size:
                return r.buf, r.base + off
        raise RingError(f"user address {addr:#x}+{length} is not in guest memory")


class RegionSpec:
    """One region of a memory table: map ``length`` bytes of ``fd`` from its start."""

    __slots__ = ("fd", "gpa", "offset", "size", "uva")

    def __init__(self, gpa: int, size: int, uva: int, offset: int, fd: int) -> None:
        self.gpa = gpa
        self.size = size
        self.uva = uva
        self.offset = offset
        self.fd = fd

    def __repr__(self) -> str:
        return (
            f"RegionSpec(gpa={self.gpa:#x}, size={self.size:#x}, uva={self.uva:#x}, "
            f"offset={self.offset:#x}, fd={self.fd})"
        )

    @property
    def length(self) -> int:
        # Mapped from the file's start: an mmap offset must be page-aligned and the
        # protocol does not promise that ``offset`` is; the region starts ``offset`` in.
        return self.offset + self.size


def memory_table(payload: bytes, fds: Sequence[Fd]) -> list[RegionSpec]:
    """The regions of a SET_MEM_TABLE payload, each checked against its fd.

    Raises :class:`Refused` when the table is malformed, the fds do not match it, an fd is
    not a regular file or a region does not lie inside its file.
    """
    if len(payload) < MEM_HEAD.size:
        raise Refused("memory", f"memory table of {len(payload)} bytes")
    n, _pad = MEM_HEAD.unpack_from(payload)
    if not 0 < n <= MAX_REGIONS:
        raise Refused("memory", f"{n} memory regions (1..{MAX_REGIONS} allowed)")
    if len(payload) < MEM_HEAD.size + n * MEM_REGION.size:
        raise Refused("memory", f"memory table of {len(payload)} bytes for {n} regions")
    if len(fds) != n:
        raise Refused("fds", f"{len(fds)} fds for {n} memory regions")
    specs: list[RegionSpec] = []
    for k, fd in enumerate(fds):
        gpa, size, uva, offset = MEM_REGION.unpack_from(
            payload, MEM_HEAD.size + k * MEM_REGION.size
        )
        spec = RegionSpec(gpa, size, uva, offset, fd.number)
        file_size = fd.memory_size
        if file_size is None:
            raise Refused("memory", f"region {k}: fd is not a memory file")
        if size == 0 or spec.length > MAX_MAPPING or spec.length > file_size:
            raise Refused(
                "memory",
                f"region {k}: {size} bytes at offset {offset} but the file has {file_size}",
            )
        specs.append(spec)
    return specs


def guest_memory(specs: Sequence[RegionSpec], buffers: Sequence[RawMemory]) -> GuestMemory:
    """The memory of a table, each region's fd mapped (whole ``length``) into a buffer."""
    if len(specs) != len(buffers):
        raise RingError(f"{len(buffers)} mappings for {len(specs)} regions")
    return GuestMemory(
        [Region(s.gpa, s.size, s.uva, buf, s.offset) for s, buf in zip(specs, buffers, strict=True)]
    )
