"""Frames as the engine sees them: Ethernet bytes plus virtio-net offload metadata.

A frame that came from a tap or AF_PACKET socket with a vnet header may be a
TCP/UDP *super-frame* (up to 64 KiB) that the receiver will segment, or carry a
partial checksum that the receiver will complete.  Keeping the header beside the
bytes lets such frames cross the daemon as one unit (SPEC 2.2); only a frontend
that cannot take offloads pays for segmentation (:mod:`pymacvtap.virtio.offload`).
"""

from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    import mmap

ETH_HLEN = 14
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
ETH_P_PAUSE = 0x8808

# struct virtio_net_hdr (include/uapi/linux/virtio_net.h)
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1
VIRTIO_NET_HDR_F_DATA_VALID = 2
VIRTIO_NET_HDR_GSO_NONE = 0
VIRTIO_NET_HDR_GSO_TCPV4 = 1
VIRTIO_NET_HDR_GSO_UDP = 3
VIRTIO_NET_HDR_GSO_TCPV6 = 4
VIRTIO_NET_HDR_GSO_UDP_L4 = 5
VIRTIO_NET_HDR_GSO_ECN = 0x80

VNET_HDR_LEN = 10  # the base header; 12 with num_buffers (mergeable rx / VERSION_1)
_VNET = struct.Struct("<BBHHHH")  # little-endian: what x86 hosts and VERSION_1 use
_FIELDS = ("flags", "gso_type", "hdr_len", "gso_size", "csum_start", "csum_offset")
_SEEN_MAX = 4096  # distinct headers remembered by VnetHeader.unpack (~1 MB at most)


class VnetHeader:
    """The offload part of ``struct virtio_net_hdr``.

    ``gso_size`` is the payload size of each segment; ``hdr_len`` the length of
    the headers (Ethernet + L3 + L4) repeated in every segment.
    """

    __slots__ = ("_packed", "csum_offset", "csum_start", "flags", "gso_size", "gso_type", "hdr_len")

    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int
    _packed: bytes | None

    def __init__(
        self,
        flags: int = 0,
        gso_type: int = VIRTIO_NET_HDR_GSO_NONE,
        hdr_len: int = 0,
        gso_size: int = 0,
        csum_start: int = 0,
        csum_offset: int = 0,
    ) -> None:
        # Immutable (see __setattr__): one header read may be shared by many frames.
        init = object.__setattr__
        init(self, "flags", flags)
        init(self, "gso_type", gso_type)
        init(self, "hdr_len", hdr_len)
        init(self, "gso_size", gso_size)
        init(self, "csum_start", csum_start)
        init(self, "csum_offset", csum_offset)
        # The header as read, when it was read: most frames are written out again
        # unchanged, and handing back these bytes saves packing them per frame.
        init(self, "_packed", None)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"VnetHeader is immutable: use replace() to change {name}")

    @classmethod
    def unpack(cls, buf: bytes | bytearray | memoryview | mmap.mmap, offset: int = 0) -> VnetHeader:
        """The header at ``offset`` of ``buf``: a shared object for bytes seen before.

        A flow's frames carry the same few headers over and over (the same checksum
        offsets, the same segment size), and a dictionary lookup costs a third of
        building a header; headers are immutable, so sharing one is safe.
        """
        packed = bytes(buf[offset : offset + VNET_HDR_LEN])
        header = _SEEN.get(packed)
        if header is None:
            header = cls(*_VNET.unpack(packed))
            object.__setattr__(header, "_packed", packed)
            if len(_SEEN) >= _SEEN_MAX:
                _SEEN.clear()  # a bound, not an LRU: the live headers come back at once
            _SEEN[packed] = header
        return header

    def replace(self, **fields: int) -> VnetHeader:
        """A copy with some fields changed (``hdr_len=…`` when a VLAN tag is put back)."""
        values = {name: getattr(self, name) for name in _FIELDS}
        values.update(fields)
        return VnetHeader(**values)

    def pack(self) -> bytes:
        packed = self._packed
        if packed is not None:
            return packed
        return _VNET.pack(
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )

    def pack_into(self, buf: bytearray | memoryview, offset: int = 0) -> None:
        _VNET.pack_into(
            buf,
            offset,
            self.flags,
            self.gso_type,
            self.hdr_len,
            self.gso_size,
            self.csum_start,
            self.csum_offset,
        )

    @property
    def is_gso(self) -> bool:
        return (self.gso_type & ~VIRTIO_NET_HDR_GSO_ECN) != VIRTIO_NET_HDR_GSO_NONE

    @property
    def needs_csum(self) -> bool:
        return bool(self.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VnetHeader):
            return NotImplemented
        return self.pack() == other.pack()

    def __hash__(self) -> int:
        return hash(self.pack())

    def __repr__(self) -> str:
        return (
            f"VnetHeader(flags={self.flags}, gso_type={self.gso_type}, hdr_len={self.hdr_len}, "
            f"gso_size={self.gso_size}, csum_start={self.csum_start}, "
            f"csum_offset={self.csum_offset})"
        )


_SEEN: dict[bytes, VnetHeader] = {}


class Frame:
    """One Ethernet frame (no FCS) and, optionally, its offload metadata.

    ``data`` is never mutated by the engine: one object may be queued to several
    endpoints at once (a flooded broadcast), as the kernel shares a cloned skb.
    """

    __slots__ = ("data", "vnet")

    def __init__(self, data: bytes, vnet: VnetHeader | None = None) -> None:
        self.data = data
        self.vnet = vnet

    def __len__(self) -> int:
        return len(self.data)

    @property
    def dst(self) -> bytes:
        return self.data[0:6]

    @property
    def src(self) -> bytes:
        return self.data[6:12]

    @property
    def ethertype(self) -> int:
        d = self.data
        return (d[12] << 8) | d[13]

    def segment_size(self) -> int:
        """Largest L3 packet this frame stands for: what the MTU limits (SPEC 2.2).

        For a GSO super-frame that is one segment (headers + ``gso_size``), not
        the super-frame; for any other frame, the frame less its Ethernet header
        (and less one VLAN tag, as the kernel allows for tagged frames).
        """
        vnet = self.vnet
        if vnet is not None and vnet.is_gso and vnet.gso_size:
            headers = self._gso_headers(vnet)
            return min(len(self.data), headers + vnet.gso_size) - ETH_HLEN
        size = len(self.data) - ETH_HLEN
        if size >= 4 and self.ethertype in (ETH_P_8021Q, ETH_P_8021AD):
            size -= 4
        return size

    def _gso_headers(self, vnet: VnetHeader) -> int:
        """Bytes of headers repeated in each segment: up to the end of the L4 header.

        Not ``hdr_len``: virtio defines it as a hint of how much to keep linear, and
        Linux guests put ``skb_headlen()`` there, payload included, which made their
        segments look too big for the MTU.  With a partial checksum (what GSO comes
        with) ``csum_start`` is where the L4 header begins, and its length is in
        the frame (TCP) or fixed (UDP).
        """
        data = self.data
        start = vnet.csum_start
        if vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and ETH_HLEN < start < len(data):
            if vnet.gso_type & ~VIRTIO_NET_HDR_GSO_ECN in (
                VIRTIO_NET_HDR_GSO_TCPV4,
                VIRTIO_NET_HDR_GSO_TCPV6,
            ):
                if start + 12 < len(data):
                    return start + (data[start + 12] >> 4) * 4
            else:
                return start + 8  # UDP: UFO or USO
        # No usable checksum offset: trust the hint, as before.
        return vnet.hdr_len if vnet.hdr_len > ETH_HLEN else ETH_HLEN

    def __repr__(self) -> str:
        return f"Frame({len(self.data)} bytes, vnet={self.vnet!r})"
