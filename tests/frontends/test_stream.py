"""The stream frontend's own accounting: every frame given to it is sent or counted."""

from __future__ import annotations

import socket
import struct
from collections import deque
from pathlib import Path

from pymacvtap.core.frame import Frame
from pymacvtap.frontends.stream import StreamFrontend


def _frames(count: int, size: int) -> deque[Frame]:
    return deque(
        Frame(
            bytes.fromhex("020000000001020000000002")
            + b"\x88\xb5"
            + i.to_bytes(4, "big") * (size // 4)
        )
        for i in range(count)
    )


def _drain(sock: socket.socket) -> bytes:
    got = bytearray()
    sock.setblocking(False)
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except BlockingIOError:
            return bytes(got)
        if not chunk:
            return bytes(got)
        got += chunk


def _whole_frames(data: bytes) -> int:
    count = offset = 0
    while len(data) - offset >= 4:
        (n,) = struct.unpack_from(">I", data, offset)
        if len(data) - offset - 4 < n:
            break
        offset += 4 + n
        count += 1
    return count


def test_frames_unsent_when_the_vm_goes_are_counted(tmp_path: Path) -> None:
    frontend = StreamFrontend(str(tmp_path / "vm.sock"), None, None)
    vm = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    vm.connect(str(tmp_path / "vm.sock"))
    frontend.read(frontend.listener.fileno(), 1)  # accept
    assert frontend.connected
    given = 4000
    queue = _frames(given, 1400)
    # The VM does not read: the socket fills, then the frontend's own buffer.
    assert frontend.write(queue) is not None  # blocked: wait for writability
    assert queue  # what the buffer would not take stays in the endpoint queue
    received = _whole_frames(_drain(vm))  # what did reach the VM's socket
    vm.close()
    assert frontend.conn is not None
    frontend.read(frontend.conn.fileno(), 64)  # end of file: the VM is gone
    assert not frontend.connected
    frontend.write(queue)  # nobody connected: the rest is dropped
    assert not queue
    assert received + frontend.dropped == given
    assert received > 0 and frontend.dropped > 0
    frontend.close(delete=True)


def test_large_frames_partly_sent_count_once(tmp_path: Path) -> None:
    """60 KB frames: the socket's buffer ends inside one; that frame is lost, once."""
    frontend = StreamFrontend(str(tmp_path / "vm.sock"), None, None)
    vm = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    vm.connect(str(tmp_path / "vm.sock"))
    frontend.read(frontend.listener.fileno(), 1)
    queue = _frames(20, 60_000)
    frontend.write(queue)
    data = _drain(vm)
    vm.close()
    assert frontend.conn is not None
    frontend.read(frontend.conn.fileno(), 64)
    frontend.write(queue)
    assert _whole_frames(data) + frontend.dropped == 20
    frontend.close(delete=True)
