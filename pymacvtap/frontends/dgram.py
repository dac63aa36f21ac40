"""The ``dgram`` frontend: QEMU's ``-netdev dgram`` over a Unix datagram socket.

One frame per datagram, no header, no vnet header (offloads are resolved here).
The VM's address is learnt from what it sends; until then frames go to the
configured ``peer`` path, if any.  There is no connection, so a daemon
restart is invisible to the VM beyond the frames lost meanwhile.
"""

from __future__ import annotations

import errno
import socket
from collections import deque

from pymacvtap.core.frame import Frame
from pymacvtap.frontends.base import FrontendDefaults
from pymacvtap.frontends.unix import bind_unix, unlink_socket
from pymacvtap.virtio.offload import OffloadError, to_plain

MAX_DATAGRAM = 65536 + 14 + 4


class DgramFrontend(FrontendDefaults):
    def __init__(
        self, path: str, owner: int | None, group: int | None, peer: str | None = None
    ) -> None:
        self.path = path
        self.sock = bind_unix(path, socket.SOCK_DGRAM, owner, group)
        # Datagrams queue in the kernel; a big buffer rides out bursts.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.configured_peer = peer
        self.peer: str | None = peer
        self._buf = bytearray(MAX_DATAGRAM)
        self.errors = 0
        self.dropped = 0

    def readable_fds(self) -> list[int]:
        return [self.sock.fileno()]

    def read(self, fd: int, budget: int) -> list[Frame]:
        frames: list[Frame] = []
        sock = self.sock
        buf = self._buf
        while budget > 0:
            budget -= 1
            try:
                n, addr = sock.recvfrom_into(buf)
            except BlockingIOError:
                break
            if isinstance(addr, str) and addr:
                self.peer = addr
            frames.append(Frame(bytes(buf[:n])))
        return frames

    def write(self, queue: deque[Frame]) -> int | None:
        peer = self.peer
        if peer is None:
            self.dropped += len(queue)
            queue.clear()
            return None
        sock = self.sock
        while queue:
            frame = queue[0]
            if frame.vnet is not None and (frame.vnet.is_gso or frame.vnet.needs_csum):
                try:
                    pieces = [p.data for p in to_plain(frame)]
                except OffloadError:
                    self.dropped += 1
                    queue.popleft()
                    continue
            else:
                pieces = [frame.data]
            try:
                for data in pieces:
                    sock.sendto(data, peer)
            except BlockingIOError:
                return sock.fileno()
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                    # The VM is gone (its socket closed): forget it until it speaks.
                    self.dropped += len(queue)
                    queue.clear()
                    self.peer = self.configured_peer if peer != self.configured_peer else None
                    return None
                if exc.errno == errno.ENOBUFS:
                    return sock.fileno()
                raise
            queue.popleft()
        return None

    def close(self, *, delete: bool) -> None:
        self.sock.close()
        unlink_socket(self.path)
