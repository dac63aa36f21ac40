"""The receive ring of an AF_PACKET socket, and frames as a packet socket hands them over.

A ``TPACKET_V2`` ring (``PACKET_RX_RING``) is shared memory the kernel fills
with frames, so that reading a batch of them costs no system call at all.  Its
fixed 2 KiB slots each have their own status word, so the kernel wakes the
reader for every frame: a lone frame is delivered at once, while under load one
wake-up finds many slots ready.  (``TPACKET_V3`` packs frames into blocks
handed over only when full or when a timer expires, which delays every frame
of a light flow by that timer.)

A frame too big for a slot (a GSO super-frame, a jumbo frame) is also queued
whole to the socket (``PACKET_COPY_THRESH``): its slot says ``TP_STATUS_COPY``
and the caller reads it from the socket, in ring order.  The virtio_net_hdr sits
right before the frame in its slot, and a VLAN tag stripped by rx offload is
read from the slot's header (``tp_vlan_tci``).
"""

from __future__ import annotations

import mmap
import socket
import struct
from collections.abc import Callable

from pymacvtap.core.frame import VNET_HDR_LEN, Frame, VnetHeader

# linux/if_packet.h, linux/if_ether.h: Python 3.11 has none of them.
SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_COPY_THRESH = 7
PACKET_VERSION = 10
TPACKET_V2 = 1
TP_STATUS_USER = 0x1
TP_STATUS_COPY = 0x2
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
ETH_P_8021Q = 0x8100

_TPACKET_REQ = struct.Struct("IIII")  # struct tpacket_req
# struct tpacket2_hdr: tp_status, tp_len, tp_snaplen, tp_mac, (tp_net, tp_sec, tp_nsec),
# tp_vlan_tci, tp_vlan_tpid
_V2_HDR = struct.Struct("<IIIH10xHH4x")
_TAG = struct.Struct("!HH")
_STATUS_KERNEL = bytes(4)  # TP_STATUS_KERNEL: the slot is the kernel's again

RING_V2_FRAME_SIZE = 2048  # a 1514-byte frame plus headers; bigger ones take the copy path
_RING_BLOCK_SIZE = max(mmap.PAGESIZE, 64 << 10)


class RxRing:
    """A ``TPACKET_V2`` receive ring of about ``size`` bytes on ``sock``.

    Set up before the socket is bound.  Raises OSError if the kernel refuses
    the ring; the socket is then left without one, to be read with recvmsg.
    """

    def __init__(self, sock: socket.socket, size: int, *, restore_vlan: bool) -> None:
        frame_size = RING_V2_FRAME_SIZE
        block_nr = max(1, size // _RING_BLOCK_SIZE)
        frame_nr = _RING_BLOCK_SIZE // frame_size * block_nr
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V2)
        # Frames that do not fit a slot are also queued whole to the socket.
        sock.setsockopt(SOL_PACKET, PACKET_COPY_THRESH, 1)
        req = _TPACKET_REQ.pack(_RING_BLOCK_SIZE, block_nr, frame_size, frame_nr)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        try:
            self._map = mmap.mmap(
                sock.fileno(), _RING_BLOCK_SIZE * block_nr, mmap.MAP_SHARED,
                mmap.PROT_READ | mmap.PROT_WRITE,
            )  # fmt: skip
        except OSError:
            # Unmapped, the ring would still swallow every frame: take it away again.
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, bytes(_TPACKET_REQ.size))
            raise
        self._restore_vlan = restore_vlan
        self._frame_size = frame_size
        self._end = frame_size * frame_nr
        self._slot = 0  # offset of the next slot to read
        self.truncated = 0  # frames the slot holds only part of, dropped

    def read(
        self,
        max_frames: int,
        read_copied: Callable[[], list[Frame]],
        labels: list[int] | None = None,
    ) -> list[Frame]:
        """The frames of up to ``max_frames`` ready slots, each slot given back.

        ``read_copied`` reads the frame of a ``TP_STATUS_COPY`` slot from the socket.
        With ``labels``, a stripped VLAN tag is not put back but appended there, one
        entry per frame read from a slot (:func:`label_of`); ``read_copied`` appends
        its frames' own.
        """
        frames: list[Frame] = []
        append = frames.append
        ring = self._map
        unpack_hdr = _V2_HDR.unpack_from
        restore = self._restore_vlan
        size = self._frame_size
        end = self._end
        off = self._slot
        count = 0
        while count < max_frames:
            status, length, snaplen, mac, tci, tpid = unpack_hdr(ring, off)
            if not status & TP_STATUS_USER:
                break
            if status & TP_STATUS_COPY:
                # Too big for a slot: the whole frame waits in the socket's queue.
                frames.extend(read_copied())
            elif snaplen != length:
                self.truncated += 1
            else:
                start = off + mac
                vnet = vnet_header_at(ring, start - VNET_HDR_LEN)
                if labels is not None:
                    labels.append(label_of(status, tci, tpid))
                    append(Frame(ring[start : start + snaplen], vnet))
                elif status & TP_STATUS_VLAN_VALID and restore:
                    tag = vlan_tag(status, tci, tpid)
                    append(with_vlan_tag(ring, start, start + snaplen, tag, vnet))
                else:
                    append(Frame(ring[start : start + snaplen], vnet))
            ring[off : off + 4] = _STATUS_KERNEL
            off += size
            if off == end:
                off = 0
            count += 1
        self._slot = off
        return frames

    def close(self) -> None:
        self._map.close()


def vnet_header_at(buf: bytes | bytearray | mmap.mmap, at: int) -> VnetHeader | None:
    """The vnet header at ``at``, or None when it carries nothing worth keeping.

    A header whose only content is DATA_VALID (flags bit 2: "checksum already
    verified") is treated as no header: the receiver then verifies the checksum
    itself, which costs it less than a VnetHeader object per frame costs us.
    NEEDS_CSUM (bit 1) and any GSO type are always kept.
    """
    if buf[at] & 1 or buf[at + 1]:
        return VnetHeader.unpack(buf, at)
    return None


def vlan_tag(status: int, tci: int, tpid: int) -> bytes:
    """The 4-byte 802.1Q/802.1ad tag the device stripped, as a ring slot or auxdata reports it."""
    if not status & TP_STATUS_VLAN_TPID_VALID:
        tpid = ETH_P_8021Q
    return _TAG.pack(tpid, tci)


def label_of(status: int, tci: int, tpid: int) -> int:
    """A stripped tag as one number, ``tpid << 16 | tci``; -1 when there is none."""
    if not status & TP_STATUS_VLAN_VALID:
        return -1
    if not status & TP_STATUS_VLAN_TPID_VALID:
        tpid = ETH_P_8021Q
    return tpid << 16 | tci


def with_vlan_tag(
    buf: mmap.mmap | memoryview, start: int, end: int, tag: bytes, vnet: VnetHeader | None
) -> Frame:
    """The frame ``buf[start:end]`` with ``tag`` put back after its MAC addresses."""
    data = b"".join((buf[start : start + 12], tag, buf[start + 12 : end]))
    # csum_start already counts the tag (the kernel reports offsets for the frame
    # as it will be re-tagged); hdr_len does not.
    if vnet is not None and vnet.hdr_len:
        vnet = vnet.replace(hdr_len=min(vnet.hdr_len + 4, len(data)))
    return Frame(data, vnet)
