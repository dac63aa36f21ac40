"""One Ethernet device, owned through an AF_PACKET socket.

Kernel macvlan hooks the lower's receive path; in user space the equivalent is
a raw packet socket bound to the device, which sees every frame the device
receives and can put frames on its wire.  The same socket reads and writes a
VM tap's queues (``frontends/vmtap.py``).  The options below make it behave
like that hook rather than like a sniffer:

* ``PACKET_VNET_HDR``: every frame is preceded by a 10-byte ``virtio_net_hdr``
  in both directions, so a TCP super-frame (GSO, up to 64 KiB) or a frame with
  a partial checksum crosses the socket as *one* frame.  That is the lever for
  TCP throughput (SPEC 2.2, 7): one syscall per 64 KiB instead of per 1.5 KiB.
* ``PACKET_IGNORE_OUTGOING``: the socket does not see frames leaving the
  device - neither the daemon's own (which would loop back into the engine)
  nor the host stack's.  Kernel macvlan does not see host TX either: frames the
  host sends to an endpoint's MAC go to the wire, not to the endpoint.
* ``PACKET_ADD_MEMBERSHIP`` with ``PACKET_MR_UNICAST``: an endpoint's MAC is
  added to the device's unicast filter, exactly what macvlan does with
  ``dev_uc_add``; a device without a (big enough) filter falls back to
  promiscuous mode by itself.  Memberships belong to the socket and vanish
  with it, so a crashed daemon leaves no stale filter entries behind.
* ``PACKET_AUXDATA`` (optional, on by default): NICs and veth strip a VLAN
  tag into skb metadata ("rx-vlan offload"); a raw socket reading the bytes
  alone would lose it.  The tag is taken from the ancillary data and put back,
  as the kernel's macvtap does on read.

A socket made with ``labelled`` reads frames whose stripped tag is not part of
the frame but a label its sender put there (the fast path's inbox,
``daemon/inbox.py``): the label comes separately (:attr:`DeviceSocket.labels`).
A socket that does not receive (``receive=False``, or after
:meth:`DeviceSocket.stop_receiving`) keeps its device, its memberships and
sending, and costs the device's receive path nothing: it is not one of the
packet taps every frame visits.

Receiving goes through a ``TPACKET_V2`` ring (:mod:`pymacvtap.io.rxring`) when
the kernel grants one.  Where it does not, the socket is read with one
``recvmsg_into`` per frame into one preallocated buffer shared by all sockets
(the daemon has one thread); either way each frame's bytes are copied out
exactly once.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
from collections import deque

from pymacvtap.core.frame import VNET_HDR_LEN, Frame
from pymacvtap.io.netns import entered
from pymacvtap.io.rxring import (
    SOL_PACKET,
    TP_STATUS_VLAN_VALID,
    RxRing,
    label_of,
    vlan_tag,
    vnet_header_at,
    with_vlan_tag,
)

# linux/if_packet.h, linux/if_ether.h, asm-generic/socket.h: Python 3.11 has none of them.
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_STATISTICS = 6
PACKET_AUXDATA = 8
PACKET_VNET_HDR = 15
PACKET_FANOUT = 18
PACKET_FANOUT_QM = 5  # spread by the receive queue the frame was recorded on
PACKET_FANOUT_CBPF = 6  # spread by what a classic BPF program returns
PACKET_FANOUT_DATA = 22
PACKET_FANOUT_FLAG_IGNORE_OUTGOING = 0x4000  # recent kernels only (6.18 has it)
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_MULTICAST = 0
PACKET_MR_PROMISC = 1
PACKET_MR_ALLMULTI = 2
PACKET_MR_UNICAST = 3
ETH_P_ALL = 0x0003
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
SIOCGIFMTU = 0x8921
SIOCGSKNS = 0x894C  # a socket's network namespace, as a new fd

_MREQ = struct.Struct("iHH8s")  # struct packet_mreq
_SOCK_FILTER = struct.Struct("HBBI")  # struct sock_filter
_SOCK_FPROG = struct.Struct("HxxxxxxP")  # struct sock_fprog: len, pointer to the program
_AUXDATA = struct.Struct("IIIHHHH")  # struct tpacket_auxdata
_IFREQ_MTU = struct.Struct("16si12x")  # struct ifreq with ifr_mtu
_TPACKET_STATS = struct.Struct("II")  # struct tpacket_stats: tp_packets, tp_drops

DEFAULT_RING_SIZE = 4 << 20  # per socket; a VM tap has one socket per queue

# 64 KiB is the default GRO/GSO maximum (gro_max_size); a frame that does not
# fit is dropped and counted (rx_truncated), never delivered cut short.
RX_BUFFER_SIZE = VNET_HDR_LEN + 65536 + 1024
DEFAULT_RCVBUF = 8 << 20
DEFAULT_SNDBUF = 4 << 20
_ZERO_VNET = bytes(VNET_HDR_LEN)
_ANC_SIZE = socket.CMSG_SPACE(_AUXDATA.size)

# One receive buffer for every socket: the daemon reads one socket at a time.
_rx_buf = bytearray(RX_BUFFER_SIZE)
_rx_view = memoryview(_rx_buf)

# errno values meaning "not now": the caller keeps the frame and waits for POLLOUT.
_RETRY_ERRNOS = frozenset({errno.EAGAIN, errno.ENOBUFS})


class FrameRejected(OSError):
    """The device refused this one frame (too big, bad vnet header, link down).

    Raised instead of a bare OSError so that a caller can count a drop and
    carry on with the next frame; any other OSError means the socket itself
    is in trouble.
    """


# Errors that concern the frame or the device's state, not the socket.
_FRAME_ERRNOS = frozenset(
    {errno.EMSGSIZE, errno.EINVAL, errno.ENETDOWN, errno.ENXIO, errno.EFAULT, errno.ENODEV}
)


def _interface_index(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise OSError(errno.ENODEV, f"{ifname}: no such device") from None


class DeviceSocket:
    """An AF_PACKET socket bound to one device of the current network namespace.

    ``restore_vlan`` re-inserts VLAN tags stripped by rx offload (from the ring
    header, or from ``PACKET_AUXDATA`` without a ring).  ``qdisc_bypass`` skips
    the device's qdisc on send: cheaper, but without the queue's backpressure,
    so it is off by default.  ``ring_size`` is the receive ring's size in bytes
    (0: no ring, one ``recvmsg`` per frame).  If the kernel refuses the ring
    the socket falls back to ``recvmsg``: :attr:`mode` tells which.  With
    ``labelled`` a stripped tag is the frame's label, not put back: each read
    leaves one entry per frame in :attr:`labels` (:func:`~pymacvtap.io.rxring.label_of`).
    Without ``receive`` the socket only sends (see :meth:`stop_receiving`).
    """

    def __init__(
        self,
        ifname: str,
        *,
        restore_vlan: bool = True,
        qdisc_bypass: bool = False,
        rcvbuf: int = DEFAULT_RCVBUF,
        sndbuf: int = DEFAULT_SNDBUF,
        ring_size: int = DEFAULT_RING_SIZE,
        labelled: bool = False,
        receive: bool = True,
    ) -> None:
        self.ifname = ifname
        self._ifindex = _interface_index(ifname)
        # A label is read from the same place as a tag to restore.
        restore_vlan = restore_vlan or labelled
        self._restore_vlan = restore_vlan
        self.labels: list[int] | None = [] if labelled else None
        self.receiving = True
        self._unicast: set[bytes] = set()
        self._multicast: set[bytes] = set()
        self._promisc = False
        self._rx_truncated = 0  # frames bigger than the receive buffer, dropped
        self.link_down_events = 0  # ENETDOWN reported by the socket (see _recv_error)
        self._stats = [0, 0]  # PACKET_STATISTICS, summed (the kernel resets on read)
        self._ring: RxRing | None = None
        self._qdisc_bypass = qdisc_bypass
        self._sndbuf = sndbuf
        if not receive:
            self.receiving = False
            ring_size = rcvbuf = 0
        sock, self._ring = self._open(receive, rcvbuf, ring_size)
        self._sock = sock
        self._sendmsg = sock.sendmsg
        if not receive:
            self.recv_batch = self._recv_nothing  # type: ignore[method-assign]
        elif self._ring is not None:
            self.recv_batch = self._recv_ring  # type: ignore[method-assign]
        elif restore_vlan:
            self.recv_batch = self._recv_batch_aux  # type: ignore[method-assign]
        else:
            self.recv_batch = self._recv_batch_plain  # type: ignore[method-assign]

    def _open(
        self, receive: bool, rcvbuf: int, ring_size: int
    ) -> tuple[socket.socket, RxRing | None]:
        # Protocol 0 receives nothing until bound with another: no frame of another
        # interface slips in while the options are being set, and a socket bound with
        # protocol 0 never receives at all (it is on no list of packet taps).
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        ring: RxRing | None = None
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            if self._restore_vlan and receive:
                sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            if self._qdisc_bypass:
                sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            if rcvbuf:
                _set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, rcvbuf)
            _set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, self._sndbuf)
            sock.setblocking(False)
            if ring_size > 0:
                with contextlib.suppress(OSError):  # refused: read with recvmsg instead
                    ring = RxRing(sock, ring_size, restore_vlan=self._restore_vlan)
            sock.bind((self.ifname, ETH_P_ALL if receive else 0))
        except BaseException:
            if ring is not None:
                ring.close()
            sock.close()
            raise
        return sock, ring

    # -- identity ----------------------------------------------------------------

    @property
    def ifindex(self) -> int:
        return self._ifindex

    @property
    def mode(self) -> str:
        """How frames are received: ``tpacket_v2`` (the ring) or ``recvmsg``."""
        return "recvmsg" if self._ring is None else "tpacket_v2"

    @property
    def rx_truncated(self) -> int:
        """Frames too big for the receive buffer, or cut short in a ring slot: dropped."""
        ring = self._ring
        return self._rx_truncated + (0 if ring is None else ring.truncated)

    @property
    def mac(self) -> bytes:
        """The device's current MAC (read live: it may change under us)."""
        addr: bytes = self._sock.getsockname()[4]
        return addr[:6]

    @property
    def mtu(self) -> int:
        """The device's current MTU (read live)."""
        req = _IFREQ_MTU.pack(self.ifname.encode(), 0)
        res = fcntl.ioctl(self._sock.fileno(), SIOCGIFMTU, req)
        mtu: int = _IFREQ_MTU.unpack(res)[1]
        return mtu

    def join_fanout(self, group_id: int, mode: int = PACKET_FANOUT_QM) -> None:
        """Share the interface's frames with the other sockets of fanout group ``group_id``.

        With ``PACKET_FANOUT_QM`` socket *i* of the group gets the frames that
        arrived on receive queue *i*: on a multi-queue tap, the frames the VM
        wrote to its queue *i*, which is how per-queue counters are kept
        without holding one of the VM's queues.

        A fanout group has its own hook, which would see frames leaving the device
        (PACKET_IGNORE_OUTGOING is the socket's, not the group's) unless it is made with
        PACKET_FANOUT_FLAG_IGNORE_OUTGOING.  A kernel without the flag refuses it (the
        group is then made without it) or ignores it.  (On the fast path a VM tap has no
        fanout group: the daemon reads the guest's frames on its inbox.)
        """
        arg = (group_id & 0xFFFF) | (mode << 16)
        try:
            flags = PACKET_FANOUT_FLAG_IGNORE_OUTGOING << 16
            self._sock.setsockopt(SOL_PACKET, PACKET_FANOUT, arg | flags)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            self._sock.setsockopt(SOL_PACKET, PACKET_FANOUT, arg)

    def set_fanout_program(self, program: tuple[tuple[int, int, int, int], ...]) -> None:
        """The classic BPF program of this socket's ``PACKET_FANOUT_CBPF`` group: each
        frame goes to the member its return value (modulo the group's size) names.
        ``program`` is a list of (code, jt, jf, k) instructions (struct sock_filter)."""
        insns = b"".join(_SOCK_FILTER.pack(*insn) for insn in program)
        buf = ctypes.create_string_buffer(insns, len(insns))
        fprog = _SOCK_FPROG.pack(len(program), ctypes.addressof(buf))
        self._sock.setsockopt(SOL_PACKET, PACKET_FANOUT_DATA, fprog)

    def stop_receiving(self) -> None:
        """Receive nothing from now on; keep sending, the device and the memberships.

        A socket once bound with a protocol cannot be unbound (binding with protocol 0
        keeps the old one), so a new socket takes its place: bound with protocol 0 it
        is on none of the device's packet taps, which every frame visits (the kernel
        fast path hands the daemon its frames elsewhere).  The memberships (unicast
        filter, multicast, promisc) are made on it before the old socket lets go of
        them, so the device's filter never loses a MAC.  The fd changes.
        """
        if not self.receiving:
            return
        old, ring = self._sock, self._ring
        # The device is found by name in the old socket's namespace, which need not be
        # the calling thread's.
        ns_fd = fcntl.ioctl(old.fileno(), SIOCGSKNS)
        try:
            with entered(f"/proc/self/fd/{ns_fd}"):
                new, _ = self._open(False, 0, 0)
        finally:
            os.close(ns_fd)
        try:
            for mac in self._unicast:
                _set_membership(new, self._ifindex, True, PACKET_MR_UNICAST, mac)
            for mac in self._multicast:
                _set_membership(new, self._ifindex, True, PACKET_MR_MULTICAST, mac)
            if self._promisc:
                _set_membership(new, self._ifindex, True, PACKET_MR_PROMISC)
        except BaseException:
            new.close()
            raise
        self._sock, self._sendmsg, self._ring = new, new.sendmsg, None
        self.receiving = False
        self.recv_batch = self._recv_nothing  # type: ignore[method-assign]
        if ring is not None:
            ring.close()
        old.close()

    def stats(self) -> dict[str, int]:
        """The kernel's receive counters for this socket since it was opened.

        ``packets``: frames that reached the socket (delivered or dropped);
        ``drops``: frames dropped because the ring (or receive buffer) was full.
        """
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
        packets, drops = _TPACKET_STATS.unpack(raw)
        acc = self._stats
        acc[0] += packets
        acc[1] += drops
        return {"packets": acc[0], "drops": acc[1]}

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket; the kernel drops its memberships (unicast filter, promisc)."""
        if self._ring is not None:
            self._ring.close()
        self._sock.close()

    def __enter__(self) -> DeviceSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- data path ---------------------------------------------------------------

    def recv_batch(self, max_frames: int) -> list[Frame]:
        """Read up to ``max_frames`` frames, stopping early when none are left.

        (Replaced per instance by the reader of the socket's mode.)
        """
        raise NotImplementedError  # pragma: no cover

    def _recv_nothing(self, max_frames: int) -> list[Frame]:
        return []

    def _recv_ring(self, max_frames: int) -> list[Frame]:
        ring = self._ring
        assert ring is not None
        labels = self.labels
        if labels is not None:
            labels.clear()
        frames = ring.read(max_frames, self._recv_copy, labels)
        if not frames:
            self._check_error()
        return frames

    def _recv_copy(self) -> list[Frame]:
        """The frame of a TP_STATUS_COPY slot, from the socket's queue."""
        if self._restore_vlan:
            return self._recv_batch_aux(1, keep_labels=True)
        return self._recv_batch_plain(1)

    def _check_error(self) -> None:
        """With a ring nothing reads the socket, so a pending error is fetched here."""
        err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._recv_error(OSError(err, f"{self.ifname}: {errno.errorcode.get(err, err)}"))

    def _recv_batch_plain(self, max_frames: int) -> list[Frame]:
        frames: list[Frame] = []
        append = frames.append
        recv_into = self._sock.recv_into
        buf = _rx_buf
        view = _rx_view
        limit = RX_BUFFER_SIZE
        trunc = socket.MSG_TRUNC
        for _ in range(max_frames):
            try:
                # MSG_TRUNC: the return value is the real length, so a cut frame shows.
                n = recv_into(buf, limit, trunc)
            except BlockingIOError:
                break
            except OSError as exc:
                self._recv_error(exc)
                break
            if n > limit:
                self._rx_truncated += 1
                continue
            if n < VNET_HDR_LEN:
                continue
            vnet = vnet_header_at(buf, 0)
            append(Frame(bytes(view[VNET_HDR_LEN:n]), vnet))
        return frames

    def _recv_batch_aux(self, max_frames: int, *, keep_labels: bool = False) -> list[Frame]:
        labels = self.labels
        if labels is not None and not keep_labels:
            labels.clear()
        frames: list[Frame] = []
        append = frames.append
        recvmsg_into = self._sock.recvmsg_into
        buf = _rx_buf
        bufs = [_rx_view]
        view = _rx_view
        limit = RX_BUFFER_SIZE
        trunc = socket.MSG_TRUNC
        for _ in range(max_frames):
            try:
                n, anc, _flags, _addr = recvmsg_into(bufs, _ANC_SIZE, trunc)
            except BlockingIOError:
                break
            except OSError as exc:
                self._recv_error(exc)
                break
            if n > limit:
                self._rx_truncated += 1
                continue
            if n < VNET_HDR_LEN:
                continue
            vnet = vnet_header_at(buf, 0)
            if labels is not None:
                labels.append(_label(anc))
                append(Frame(bytes(view[VNET_HDR_LEN:n]), vnet))
                continue
            # PACKET_AUXDATA comes with every frame: tp_status first, VLAN_VALID in byte 0.
            if anc and anc[0][2][0] & TP_STATUS_VLAN_VALID:
                tag = _stripped_vlan(anc)
                if tag is not None:
                    append(with_vlan_tag(view, VNET_HDR_LEN, n, tag, vnet))
                    continue
            append(Frame(bytes(view[VNET_HDR_LEN:n]), vnet))
        return frames

    def _recv_error(self, exc: OSError) -> None:
        """A pending socket error, reported once by the next read.

        When the device goes down (or away) the kernel unhooks the socket and
        leaves ENETDOWN for us; it rehooks it by itself when the device comes
        back up.  That is link state, which the netlink watcher reports
        properly, not a reason to stop reading.
        """
        if exc.errno != errno.ENETDOWN:
            raise exc
        self.link_down_events += 1

    def send(self, frame: Frame) -> bool:
        """Put one frame on the wire.  False: the socket is full, retry when writable.

        The vnet header tells the kernel to segment a super-frame or finish a
        checksum, in software if the device cannot.  Raises
        :class:`FrameRejected` for errors that concern this frame only.
        """
        vnet = frame.vnet
        try:
            self._sendmsg((_ZERO_VNET if vnet is None else vnet.pack(), frame.data))
        except OSError as exc:
            if exc.errno in _RETRY_ERRNOS:
                return False
            if exc.errno in _FRAME_ERRNOS:
                raise FrameRejected(exc.errno, f"{self.ifname}: send: {exc.strerror}") from None
            raise
        return True

    def send_batch(self, queue: deque[Frame], budget: int = 1 << 30) -> tuple[int, int]:
        """Send frames from the head of ``queue`` until it is empty, ``budget`` frames
        are done, or the socket is full; each frame done is removed from the queue.

        Returns ``(sent, rejected)``: rejected frames are the ones the device
        refused (what :meth:`send` raises :class:`FrameRejected` for), dropped
        and to be counted as errors.  Frames left in the queue with budget to
        spare mean the socket is full: wait for it to become writable.
        """
        sendmsg = self._sendmsg
        popleft = queue.popleft
        zero = _ZERO_VNET
        sent = rejected = 0
        while queue and sent + rejected < budget:
            frame = queue[0]
            vnet = frame.vnet
            try:
                sendmsg((zero if vnet is None else vnet.pack(), frame.data))
            except OSError as exc:
                if exc.errno in _RETRY_ERRNOS:
                    break
                if exc.errno not in _FRAME_ERRNOS:
                    raise
                rejected += 1
            else:
                sent += 1
            popleft()
        return sent, rejected

    # -- filters -------------------------------------------------------------------
    #
    # The kernel counts memberships (adding one twice needs two drops); the sets
    # here make add/del idempotent instead, which is what the daemon wants when
    # it replays its endpoints' MACs.

    def _membership(self, add: bool, mr_type: int, addr: bytes = b"") -> None:
        _set_membership(self._sock, self._ifindex, add, mr_type, addr)

    def _member(self, members: set[bytes], mr_type: int, mac: bytes, add: bool) -> None:
        mac = bytes(mac)
        if (mac in members) != add:
            self._membership(add, mr_type, mac)
            if add:
                members.add(mac)
            else:
                members.discard(mac)

    def add_unicast(self, mac: bytes) -> None:
        """Accept frames to ``mac``: the device's unicast filter, or promisc if it has none."""
        self._member(self._unicast, PACKET_MR_UNICAST, mac, True)

    def del_unicast(self, mac: bytes) -> None:
        self._member(self._unicast, PACKET_MR_UNICAST, mac, False)

    def add_multicast(self, mac: bytes) -> None:
        self._member(self._multicast, PACKET_MR_MULTICAST, mac, True)

    def del_multicast(self, mac: bytes) -> None:
        self._member(self._multicast, PACKET_MR_MULTICAST, mac, False)

    def set_promisc(self, on: bool) -> None:
        """Make the device promiscuous (passthru) for as long as this socket wants it."""
        if on != self._promisc:
            self._membership(on, PACKET_MR_PROMISC)
            self._promisc = on

    @property
    def unicast(self) -> frozenset[bytes]:
        return frozenset(self._unicast)

    @property
    def promisc(self) -> bool:
        return self._promisc


def _set_membership(
    sock: socket.socket, ifindex: int, add: bool, mr_type: int, addr: bytes = b""
) -> None:
    opt = PACKET_ADD_MEMBERSHIP if add else PACKET_DROP_MEMBERSHIP
    sock.setsockopt(SOL_PACKET, opt, _MREQ.pack(ifindex, mr_type, len(addr), addr))


def _set_buffer(sock: socket.socket, opt: int, force_opt: int, size: int) -> None:
    """Set a socket buffer, past net.core.[rw]mem_max when we may (CAP_NET_ADMIN)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)


def _auxdata_tag(anc: list[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    """(tp_status, tci, tpid) of the frame's PACKET_AUXDATA, if it came with one."""
    for level, kind, data in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
            status, _len, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(data)
            return status, tci, tpid
    return None


def _label(anc: list[tuple[int, int, bytes]]) -> int:
    """The stripped tag as a label (:func:`~pymacvtap.io.rxring.label_of`), from PACKET_AUXDATA."""
    aux = _auxdata_tag(anc)
    return -1 if aux is None else label_of(*aux)


def _stripped_vlan(anc: list[tuple[int, int, bytes]]) -> bytes | None:
    """The 4-byte 802.1Q/802.1ad tag the device stripped, from PACKET_AUXDATA, if any."""
    aux = _auxdata_tag(anc)
    if aux is None or not aux[0] & TP_STATUS_VLAN_VALID:
        return None
    return vlan_tag(*aux)
