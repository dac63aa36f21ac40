"""The lower: one Ethernet device, owned through an AF_PACKET socket.

Kernel macvlan hooks the lower's receive path; in user space the equivalent is
a raw packet socket bound to the device, which sees every frame the device
receives and can put frames on its wire.  The options below make it behave
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

The socket is non-blocking and read in batches into one preallocated buffer
shared by all lowers (the daemon has one thread), copying out only the bytes
of each frame.
"""

from __future__ import annotations

import errno
import fcntl
import socket
import struct

from pymacvtap.core.frame import VNET_HDR_LEN, Frame, VnetHeader

# linux/if_packet.h, linux/if_ether.h, asm-generic/socket.h: Python 3.11 has none of them.
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_DROP_MEMBERSHIP = 2
PACKET_AUXDATA = 8
PACKET_VNET_HDR = 15
PACKET_FANOUT = 18
PACKET_FANOUT_QM = 5  # spread by the receive queue the frame was recorded on
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
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
ETH_P_8021Q = 0x8100

_MREQ = struct.Struct("iHH8s")  # struct packet_mreq
_AUXDATA = struct.Struct("IIIHHHH")  # struct tpacket_auxdata
_IFREQ_MTU = struct.Struct("16si12x")  # struct ifreq with ifr_mtu

# 64 KiB is the default GRO/GSO maximum (gro_max_size); a frame that does not
# fit is dropped and counted (rx_truncated), never delivered cut short.
RX_BUFFER_SIZE = VNET_HDR_LEN + 65536 + 1024
DEFAULT_RCVBUF = 8 << 20
DEFAULT_SNDBUF = 4 << 20
_ZERO_VNET = bytes(VNET_HDR_LEN)
_ANC_SIZE = socket.CMSG_SPACE(_AUXDATA.size)

# One receive buffer for every lower: the daemon reads one socket at a time.
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


class PacketLower:
    """An AF_PACKET socket on one interface of the current network namespace.

    ``restore_vlan`` asks for ``PACKET_AUXDATA`` so that VLAN tags stripped by
    rx offload are re-inserted (costs a recvmsg instead of a recv per frame).
    ``qdisc_bypass`` skips the device's qdisc on send: cheaper, but without
    the queue's backpressure, so it is off by default.
    """

    def __init__(
        self,
        ifname: str,
        *,
        restore_vlan: bool = True,
        qdisc_bypass: bool = False,
        rcvbuf: int = DEFAULT_RCVBUF,
        sndbuf: int = DEFAULT_SNDBUF,
    ) -> None:
        self.ifname = ifname
        self._ifindex = _interface_index(ifname)
        self._restore_vlan = restore_vlan
        self._unicast: set[bytes] = set()
        self._multicast: set[bytes] = set()
        self._promisc = False
        self.rx_truncated = 0  # frames bigger than the receive buffer, dropped
        self.link_down_events = 0  # ENETDOWN reported by the socket (see _recv_error)
        # Protocol 0 receives nothing until bind(): no frame of another
        # interface slips in while the options are being set.
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
            sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            if restore_vlan:
                sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            if qdisc_bypass:
                sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
            _set_buffer(sock, socket.SO_RCVBUF, SO_RCVBUFFORCE, rcvbuf)
            _set_buffer(sock, socket.SO_SNDBUF, SO_SNDBUFFORCE, sndbuf)
            sock.setblocking(False)
            sock.bind((ifname, ETH_P_ALL))
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    # -- identity ----------------------------------------------------------------

    @property
    def ifindex(self) -> int:
        return self._ifindex

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
        """
        self._sock.setsockopt(SOL_PACKET, PACKET_FANOUT, (group_id & 0xFFFF) | (mode << 16))

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket; the kernel drops its memberships (unicast filter, promisc)."""
        self._sock.close()

    def __enter__(self) -> PacketLower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- data path ---------------------------------------------------------------

    def recv_batch(self, max_frames: int) -> list[Frame]:
        """Read up to ``max_frames`` frames, stopping early when none are left."""
        if self._restore_vlan:
            return self._recv_batch_aux(max_frames)
        frames: list[Frame] = []
        recv_into = self._sock.recv_into
        buf = _rx_buf
        view = _rx_view
        limit = RX_BUFFER_SIZE
        while len(frames) < max_frames:
            try:
                # MSG_TRUNC: the return value is the real length, so a cut frame shows.
                n = recv_into(buf, limit, socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except OSError as exc:
                self._recv_error(exc)
                break
            if n > limit:
                self.rx_truncated += 1
                continue
            if n < VNET_HDR_LEN:
                continue
            vnet = VnetHeader.unpack(buf) if (buf[0] or buf[1]) else None
            frames.append(Frame(bytes(view[VNET_HDR_LEN:n]), vnet))
        return frames

    def _recv_batch_aux(self, max_frames: int) -> list[Frame]:
        frames: list[Frame] = []
        recvmsg_into = self._sock.recvmsg_into
        buf = _rx_buf
        bufs = [_rx_view]
        view = _rx_view
        limit = RX_BUFFER_SIZE
        while len(frames) < max_frames:
            try:
                n, anc, _flags, _addr = recvmsg_into(bufs, _ANC_SIZE, socket.MSG_TRUNC)
            except BlockingIOError:
                break
            except OSError as exc:
                self._recv_error(exc)
                break
            if n > limit:
                self.rx_truncated += 1
                continue
            if n < VNET_HDR_LEN:
                continue
            vnet = VnetHeader.unpack(buf) if (buf[0] or buf[1]) else None
            tag = _stripped_vlan(anc)
            if tag is None:
                data = bytes(view[VNET_HDR_LEN:n])
            else:
                mac_end = VNET_HDR_LEN + 12
                data = b"".join((view[VNET_HDR_LEN:mac_end], tag, view[mac_end:n]))
                # csum_start already counts the tag (the kernel reports offsets
                # for the frame as it will be re-tagged); hdr_len does not.
                if vnet is not None and vnet.hdr_len:
                    vnet.hdr_len = min(vnet.hdr_len + 4, len(data))
            frames.append(Frame(data, vnet))
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
        hdr = _ZERO_VNET if vnet is None else vnet.pack()
        try:
            self._sock.sendmsg((hdr, frame.data))
        except OSError as exc:
            if exc.errno in _RETRY_ERRNOS:
                return False
            if exc.errno in _FRAME_ERRNOS:
                raise FrameRejected(exc.errno, f"{self.ifname}: send: {exc.strerror}") from None
            raise
        return True

    # -- filters -------------------------------------------------------------------
    #
    # The kernel counts memberships (adding one twice needs two drops); the sets
    # here make add/del idempotent instead, which is what the daemon wants when
    # it replays its endpoints' MACs.

    def _membership(self, add: bool, mr_type: int, addr: bytes = b"") -> None:
        opt = PACKET_ADD_MEMBERSHIP if add else PACKET_DROP_MEMBERSHIP
        mreq = _MREQ.pack(self._ifindex, mr_type, len(addr), addr)
        self._sock.setsockopt(SOL_PACKET, opt, mreq)

    def add_unicast(self, mac: bytes) -> None:
        """Accept frames to ``mac``: the device's unicast filter, or promisc if it has none."""
        mac = bytes(mac)
        if mac not in self._unicast:
            self._membership(True, PACKET_MR_UNICAST, mac)
            self._unicast.add(mac)

    def del_unicast(self, mac: bytes) -> None:
        mac = bytes(mac)
        if mac in self._unicast:
            self._membership(False, PACKET_MR_UNICAST, mac)
            self._unicast.discard(mac)

    def add_multicast(self, mac: bytes) -> None:
        mac = bytes(mac)
        if mac not in self._multicast:
            self._membership(True, PACKET_MR_MULTICAST, mac)
            self._multicast.add(mac)

    def del_multicast(self, mac: bytes) -> None:
        mac = bytes(mac)
        if mac in self._multicast:
            self._membership(False, PACKET_MR_MULTICAST, mac)
            self._multicast.discard(mac)

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


def _set_buffer(sock: socket.socket, opt: int, force_opt: int, size: int) -> None:
    """Set a socket buffer, past net.core.[rw]mem_max when we may (CAP_NET_ADMIN)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)


def _stripped_vlan(anc: list[tuple[int, int, bytes]]) -> bytes | None:
    """The 4-byte 802.1Q/802.1ad tag the device stripped, from PACKET_AUXDATA, if any."""
    for level, kind, data in anc:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
            status, _len, _snap, _mac, _net, tci, tpid = _AUXDATA.unpack_from(data)
            if status & TP_STATUS_VLAN_VALID:
                if not status & TP_STATUS_VLAN_TPID_VALID:
                    tpid = ETH_P_8021Q
                return struct.pack("!HH", tpid, tci)
    return None
