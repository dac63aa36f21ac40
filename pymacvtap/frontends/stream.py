"""The ``stream`` frontend: QEMU's ``-netdev stream`` over a Unix socket.

Framing is QEMU's (net/stream.c): each frame preceded by its length as a
4-byte big-endian integer, no vnet header.  So offloaded super-frames are
segmented and their checksums completed here (:func:`to_plain`).  One client at
a time, as QEMU's own server does: a second connection is refused while the
first lives, and a new one is accepted after the VM goes away.
"""

from __future__ import annotations

import errno
import socket
import struct
from collections import deque
from collections.abc import Callable

from pymacvtap.core.frame import Frame
from pymacvtap.frontends.base import FrontendDefaults
from pymacvtap.frontends.unix import bind_unix, unlink_socket
from pymacvtap.virtio.offload import OffloadError, to_plain

_LEN = struct.Struct(">I")
# Largest frame we accept from a VM: a 64 KiB packet plus headers.  QEMU itself
# refuses anything larger than its 68 KiB receive buffer.
MAX_FRAME = 65536 + 14 + 4
READ_SIZE = 256 * 1024
# Stop taking frames from the endpoint queue while this much is unsent: the VM
# is slow, and the bounded endpoint queue (with counted drops) absorbs the rest.
OUTPUT_HIGH_WATER = 512 * 1024


class StreamFrontend(FrontendDefaults):
    """A listening socket plus at most one connected VM."""

    def __init__(
        self,
        path: str,
        owner: int | None,
        group: int | None,
        on_fds_changed: Callable[[], None] = lambda: None,
    ) -> None:
        self.path = path
        self.listener = bind_unix(path, socket.SOCK_STREAM, owner, group)
        self.listener.listen(4)
        self.conn: socket.socket | None = None
        self._inbuf = bytearray()
        self._outbuf = bytearray()
        # Bytes of each frame still (wholly or partly) in _outbuf, oldest first: a
        # VM that goes away leaves these frames unsent, and each one is counted.
        self._unsent: deque[int] = deque()
        self.on_fds_changed = on_fds_changed
        self.errors = 0  # malformed framing from the VM (connection dropped)
        self.dropped = 0  # frames for the VM lost: none connected, bad offload header
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def readable_fds(self) -> list[int]:
        fds = [self.listener.fileno()]
        if self.conn is not None:
            fds.append(self.conn.fileno())
        return fds

    def read(self, fd: int, budget: int) -> list[Frame]:
        if fd == self.listener.fileno():
            self._accept()
            return []
        conn = self.conn
        if conn is None or fd != conn.fileno():
            return []
        try:
            data = conn.recv(READ_SIZE)
        except BlockingIOError:
            return []
        except OSError:
            self._disconnect()
            return []
        if not data:
            self._disconnect()
            return []
        buf = self._inbuf
        buf += data
        frames: list[Frame] = []
        offset = 0
        while len(buf) - offset >= 4:
            (length,) = _LEN.unpack_from(buf, offset)
            if length > MAX_FRAME:
                self.errors += 1
                self._disconnect()
                return frames
            if len(buf) - offset - 4 < length:
                break
            frames.append(Frame(bytes(buf[offset + 4 : offset + 4 + length])))
            offset += 4 + length
        del buf[:offset]
        return frames

    def write(self, queue: deque[Frame]) -> int | None:
        conn = self.conn
        if conn is None:
            self.dropped += len(queue)
            queue.clear()
            return None
        out = self._outbuf
        while queue and len(out) < OUTPUT_HIGH_WATER:
            frame = queue.popleft()
            if frame.vnet is not None and (frame.vnet.is_gso or frame.vnet.needs_csum):
                try:
                    plain = to_plain(frame)
                except OffloadError:
                    self.dropped += 1
                    continue
            else:
                plain = [frame]
            size = 0
            for piece in plain:
                out += _LEN.pack(len(piece.data))
                out += piece.data
                size += 4 + len(piece.data)
            if size:
                self._unsent.append(size)
        if out:
            try:
                sent = conn.send(out)
            except BlockingIOError:
                sent = 0
            except OSError as exc:
                if exc.errno not in (errno.EPIPE, errno.ECONNRESET):
                    raise
                self._disconnect()
                return None
            del out[:sent]
            self._consume(sent)
        if out:
            return conn.fileno()
        return None

    def _consume(self, sent: int) -> None:
        """``sent`` more bytes of the buffered frames reached the socket."""
        unsent = self._unsent
        while sent and unsent:
            if sent >= unsent[0]:
                sent -= unsent.popleft()
            else:
                unsent[0] -= sent
                sent = 0

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        if self.conn is not None:
            conn.close()  # one VM at a time
            return
        conn.setblocking(False)
        self.conn = conn
        self.connects += 1
        self.on_fds_changed()

    def _disconnect(self) -> None:
        conn = self.conn
        if conn is not None:
            # The daemon unregisters the fd before it is closed: epoll refuses
            # (EBADF) to remove a closed one, which would stop the daemon.
            self.conn = None
            self._inbuf.clear()
            self._outbuf.clear()
            # Delivered to this endpoint but never handed to the VM (a frame cut
            # short is as lost as one not started).
            self.dropped += len(self._unsent)
            self._unsent.clear()
            self.on_fds_changed()
            conn.close()

    def close(self, *, delete: bool) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.listener.close()
        unlink_socket(self.path)
