"""Clients of a real daemon's endpoints: stream and dgram VMs, raw frames."""

from __future__ import annotations

import collections
import os
import socket
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from lab import socket_in
from lab.daemon import DaemonProcess

# Figures of this run: name -> count (frames fuzzed, messages, faults, uncounted losses).
FIGURES: collections.Counter[str] = collections.Counter()
ETH_P_TEST = 0x88B5
SOL_PACKET = 263
PACKET_VNET_HDR = 15
ETH_P_ALL = 0x0003
BROADCAST = b"\xff" * 6


def record(name: str, count: int = 1) -> None:
    FIGURES[name] += count


def frame(dst: bytes, src: bytes, payload: bytes = b"", size: int = 60) -> bytes:
    return dst + src + ETH_P_TEST.to_bytes(2, "big") + payload.ljust(size - 14, b"\0")


def mac_of(daemon: DaemonProcess, name: str) -> bytes:
    return bytes.fromhex(daemon.show(name)["address"].replace(":", ""))


def public_dir() -> Path:
    """A directory every user may traverse: refusals then come from socket modes."""
    path = Path(tempfile.mkdtemp(prefix="pmvt-sock-"))
    path.chmod(0o755)
    return path


def add_vm(daemon: DaemonProcess, name: str, frontend: str, path: Path | None, *extra: str) -> None:
    args = ["link", "add", "link", "low0", "name", name, "type", "macvtap", "frontend", frontend]
    if path is not None:
        args += ["path", str(path)]
    daemon.cli(*args, *extra)


def stats(daemon: DaemonProcess, name: str) -> dict[str, Any]:
    entry: dict[str, Any] = daemon.show(name, stats=True)
    return entry


class StreamVM:
    """A QEMU ``-netdev stream`` stand-in: 4-byte big-endian length, then the frame."""

    def __init__(self, path: Path, timeout: float = 5.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(path))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(struct.pack(">I", len(data)) + data)

    def recv(self, timeout: float = 2.0) -> bytes | None:
        """The next frame, or None after ``timeout`` without one."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 4:
                (n,) = struct.unpack_from(">I", self.buf)
                if len(self.buf) >= 4 + n:
                    out, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
                    return out
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except TimeoutError:
                return None
            if not chunk:
                return None
            self.buf += chunk

    def wait_for(self, pred: Any, timeout: float = 3.0) -> bytes | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.recv(max(0.05, deadline - time.monotonic()))
            if got is not None and pred(got):
                return got
        return None

    def close(self) -> None:
        self.sock.close()


class DgramVM:
    """A QEMU ``-netdev dgram`` stand-in bound at ``local``, talking to the daemon at ``remote``."""

    def __init__(self, local: Path, remote: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(local))
        self.remote = str(remote)

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.remote)

    def wait_for(self, pred: Any, timeout: float = 3.0) -> bytes | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got = self.sock.recv(1 << 17)
            except TimeoutError:
                return None
            if pred(got):
                return got
        return None

    def close(self) -> None:
        self.sock.close()


def vnet_packet_socket(netns: str, ifname: str) -> socket.socket:
    """AF_PACKET on ``ifname`` whose sends start with a virtio_net_hdr the sender chooses."""
    sock = socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
    sock.bind((ifname, 0))
    sock.setblocking(False)
    return sock


SCALE = max(1, int(os.environ.get("PYMACVTAP_FUZZ_SCALE", "1")))


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB (from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def proc_status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {key} for pid {pid}")
