"""Tap devices: a netdev whose "wire" is a file descriptor the daemon holds.

A ``macvlan`` endpoint is a tap in the container's namespace (the daemon
reads what the container sends and writes what it should receive); a
``macvtap`` endpoint is a tap whose queue fds are handed to QEMU.  Either way
the fds come from ``/dev/net/tun`` and ``TUNSETIFF``.

With ``IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` each frame carries a
``virtio_net_hdr`` and the tap netdev advertises checksum and TSO offloads,
so the stack behind the tap hands over 64 KiB TCP super-frames and accepts
them back unsegmented: the same format the lower's AF_PACKET socket uses,
so a super-frame crosses the daemon untouched.

A tap is created in namespace ``netns`` (None: the calling thread's own); its
fds keep working from anywhere afterwards.  A /dev/net/tun fd belongs to the
namespace it was *opened* in, so an extra queue must be opened from that same
namespace - anywhere else ``TUNSETIFF`` would quietly create a second,
unrelated tap of the same name.  The Tap therefore keeps an fd of its
namespace (the tap's own fds pin it anyway) and re-enters it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
from collections import deque

from pymacvtap.core.frame import VNET_HDR_LEN, Frame, VnetHeader
from pymacvtap.io.netns import entered

TUN_PATH = "/dev/net/tun"
_SELF_NS = "/proc/thread-self/ns/net"

# linux/if_tun.h: _IOW('T', n, int) = 0x400454nn, _IOR('T', n, unsigned int) = 0x800454nn
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETCARRIER = 0x400454E2  # _IOW('T', 226, int), Linux 5.0
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
TUNSETQUEUE = 0x400454D9

IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000

TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_TSO_ECN = 0x08
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40

OFFLOADS_TCP = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN
OFFLOADS_ALL = OFFLOADS_TCP | TUN_F_USO4 | TUN_F_USO6

_IFREQ_FLAGS = struct.Struct("16sH22x")  # struct ifreq: name, ifr_flags

# A tap hands over at most a 64 KiB GSO frame plus headers.  One buffer serves
# every tap: the daemon has one thread, and a buffer per tap would cost
# 64 KiB of RSS per endpoint.
RX_BUFFER_SIZE = 65536 + 1024
_rx_buf = bytearray(RX_BUFFER_SIZE)
_rx_view = memoryview(_rx_buf)

# Errors that concern one frame or the device's state (EIO: the tap is down,
# EINVAL: a malformed frame/vnet header), not the fd.
_FRAME_ERRNOS = frozenset({errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.EFAULT})


def _ifreq(ifname: str, flags: int) -> bytes:
    name = ifname.encode()
    if not name or len(name) > 15:
        raise ValueError(f"invalid interface name {ifname!r}")
    return _IFREQ_FLAGS.pack(name, flags)


class Tap:
    """An open tap netdev: one non-blocking fd per queue.

    Frames are read and written with a vnet header of ``vnet_hdr_size`` bytes
    (10, or 12 as virtio 1.0 guests expect) when ``vnet_hdr`` is on; frames
    read back carry :class:`VnetHeader` metadata (None when it is all zero),
    and frames written without metadata get a zero header.
    """

    def __init__(
        self,
        ifname: str,
        fds: list[int],
        flags: int,
        vnet_hdr_size: int,
        offloads: int,
        ns_fd: int,
    ) -> None:
        self.ifname = ifname
        self._ns_fd = ns_fd
        self._fds = fds
        self._flags = flags
        self.vnet_hdr_size = vnet_hdr_size  # 0 without IFF_VNET_HDR
        self.offloads = offloads  # the TUN_F_* bits the kernel accepted
        self.rx_truncated = 0

    @classmethod
    def open(
        cls,
        ifname: str,
        *,
        netns: str | None = None,
        queues: int = 1,
        vnet_hdr: bool = True,
        vnet_hdr_size: int = VNET_HDR_LEN,
        offloads: int | None = None,
        persist: bool = False,
        owner: int | None = None,
        group: int | None = None,
        multi_queue: bool | None = None,
    ) -> Tap:
        """Create the tap ``ifname`` (or attach to the existing one of that name).

        ``multi_queue`` defaults to ``queues > 1``; it must match how an
        existing tap was created.  ``offloads`` defaults to TCP/checksum
        offloads plus UDP segmentation where the kernel has it (USO: 6.2+).
        """
        if queues < 1:
            raise ValueError("a tap needs at least one queue")
        if multi_queue is None:
            multi_queue = queues > 1
        if queues > 1 and not multi_queue:
            raise ValueError("several queues need multi_queue")
        flags = IFF_TAP | IFF_NO_PI
        if vnet_hdr:
            flags |= IFF_VNET_HDR
        if multi_queue:
            flags |= IFF_MULTI_QUEUE
        with entered(netns):
            ns_fd = os.open(_SELF_NS, os.O_RDONLY | os.O_CLOEXEC)
        tap = cls(ifname, [], flags, vnet_hdr_size if vnet_hdr else 0, 0, ns_fd)
        try:
            fd = tap._open_queue()
            if vnet_hdr:
                fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", vnet_hdr_size))
                tap.offloads = _set_offloads(fd, OFFLOADS_ALL if offloads is None else offloads)
            if owner is not None:
                fcntl.ioctl(fd, TUNSETOWNER, owner)
            if group is not None:
                fcntl.ioctl(fd, TUNSETGROUP, group)
            fcntl.ioctl(fd, TUNSETPERSIST, 1 if persist else 0)
            for _ in range(queues - 1):
                tap._open_queue()
        except BaseException:
            tap.close()
            raise
        return tap

    def _open_queue(self) -> int:
        with entered(f"/proc/self/fd/{self._ns_fd}"):
            fd = os.open(TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(fd, TUNSETIFF, _ifreq(self.ifname, self._flags))
        except OSError as exc:
            os.close(fd)
            raise OSError(exc.errno, f"tap {self.ifname}: {exc.strerror}") from None
        self._fds.append(fd)
        return fd

    def attach_queue(self) -> int:
        """Open one more queue on a multi-queue tap; returns its index."""
        if not self._flags & IFF_MULTI_QUEUE:
            raise ValueError(f"tap {self.ifname} is not multi-queue")
        self._open_queue()
        return len(self._fds) - 1

    def set_carrier(self, on: bool) -> None:
        """The netdev's carrier, as the container sees it (LOWER_UP / NO-CARRIER)."""
        fcntl.ioctl(self._fds[0], TUNSETCARRIER, struct.pack("i", 1 if on else 0))

    def set_persist(self, persist: bool) -> None:
        """Persistent taps outlive their fds (and the daemon): SPEC 5 restarts."""
        fcntl.ioctl(self._fds[0], TUNSETPERSIST, 1 if persist else 0)

    @property
    def queues(self) -> int:
        return len(self._fds)

    def fileno(self, queue_index: int = 0) -> int:
        return self._fds[queue_index]

    def filenos(self) -> list[int]:
        return list(self._fds)

    def detach_fds(self) -> list[int]:
        """Give up the queue fds to the caller (to pass to a VM); this object is closed."""
        fds, self._fds = self._fds, []
        self.close()
        return fds

    def close(self) -> None:
        """Close every queue fd (a persistent tap stays, a non-persistent one goes)."""
        fds, self._fds = self._fds, []
        for fd in fds:
            os.close(fd)
        if self._ns_fd >= 0:
            os.close(self._ns_fd)
            self._ns_fd = -1

    def __enter__(self) -> Tap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- data path ---------------------------------------------------------------

    def read_batch(self, queue_index: int, max_frames: int) -> list[Frame]:
        """Read up to ``max_frames`` frames from one queue, stopping when it is empty."""
        fd = self._fds[queue_index]
        hdr = self.vnet_hdr_size
        frames: list[Frame] = []
        readv = os.readv
        bufs = [_rx_view]
        buf = _rx_buf
        view = _rx_view
        while len(frames) < max_frames:
            try:
                n = readv(fd, bufs)
            except BlockingIOError:
                break
            if n >= RX_BUFFER_SIZE:
                # tun truncates silently; a full buffer means the frame did not fit.
                self.rx_truncated += 1
                continue
            if n < hdr:
                continue
            vnet = None
            if hdr and (buf[0] or buf[1]):
                vnet = VnetHeader.unpack(buf)
            frames.append(Frame(bytes(view[hdr:n]), vnet))
        return frames

    def write_batch(
        self, queue: deque[Frame], budget: int, queue_index: int = 0
    ) -> tuple[int, int]:
        """Write frames from the head of ``queue`` (removing each one done) until it is
        empty, ``budget`` frames are done, or the tap is full.

        Returns ``(written, rejected)``: rejected frames are the ones the kernel
        refused for what they are (EIO while the tap is down, EINVAL for a malformed
        frame), dropped.  Frames left in the queue with budget
        to spare mean the tap is full: wait until it is writable.  One loop for the
        batch, no call per frame: this runs for every frame to a container.
        """
        fd = self._fds[queue_index]
        hdr_size = self.vnet_hdr_size
        zero = _ZERO_HDR.get(hdr_size) or bytes(hdr_size)
        writev = os.writev
        popleft = queue.popleft
        written = rejected = 0
        while queue and written + rejected < budget:
            frame = queue[0]
            vnet = frame.vnet
            try:
                if not hdr_size:
                    os.write(fd, frame.data)
                elif vnet is None:
                    writev(fd, (zero, frame.data))
                else:
                    writev(fd, (vnet.pack().ljust(hdr_size, b"\0"), frame.data))
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno not in _FRAME_ERRNOS:
                    raise
                rejected += 1
            else:
                written += 1
            popleft()
        return written, rejected


_ZERO_HDR = {10: bytes(10), 12: bytes(12)}


def _set_offloads(fd: int, wanted: int) -> int:
    """Ask for ``wanted`` offloads, dropping UDP segmentation if the kernel lacks it."""
    for bits in (wanted, wanted & ~(TUN_F_USO4 | TUN_F_USO6)):
        try:
            fcntl.ioctl(fd, TUNSETOFFLOAD, bits)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            continue
        return bits
    raise OSError(errno.EINVAL, "TUNSETOFFLOAD: no offload set accepted")


def tun_features() -> int:
    """The IFF_* flags this kernel's tun driver supports (TUNGETFEATURES)."""
    fd = os.open(TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
    try:
        res = fcntl.ioctl(fd, TUNGETFEATURES, struct.pack("I", 0))
    finally:
        os.close(fd)
    features: int = struct.unpack("I", res)[0]
    return features
