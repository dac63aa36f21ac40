"""Micro-benchmark of DeviceSocket's per-frame cost (not a test: run it by hand, as root).

``.venv/bin/python -m bench.afpacket [--rounds N] [--frames K] [--no-vlan] [--no-ring]``

A veth pair in two fresh namespaces; the peer injects K 64-byte frames (untimed), then
``recv_batch(64)`` drains them (timed); ``send``/``send_batch`` of K 64-byte frames
(timed); and ``send_batch`` of K/10 TCP GSO super-frames of 64 KiB with their virtio-net
header (timed), which the peer's stack drops (they are for another MAC).  Prints nanoseconds
per frame, best and median over the rounds.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import statistics
import struct
import subprocess
import time
from collections import deque

from pymacvtap.core.frame import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    Frame,
    VnetHeader,
)
from pymacvtap.io.afpacket import DEFAULT_RING_SIZE, DeviceSocket
from pymacvtap.io.netns import entered


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def gso_frame(src: bytes) -> Frame:
    """A TCP/IPv4 super-frame of 64 KiB less its headers, as a tap with TSO hands it over."""
    payload = b"\x5a" * (65535 - 20 - 20)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, 6, 0,
                     socket.inet_aton("10.9.0.1"), socket.inet_aton("10.9.0.2"))  # fmt: skip
    tcp = struct.pack("!HHIIBBHHH", 1234, 5678, 1, 1, 0x50, 0x18, 65535, 0, 0)
    data = b"\x02\x00\x00\x00\xbb\x02" + src + b"\x08\x00" + ip + tcp + payload
    return Frame(
        data, VnetHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16)
    )


def timed_send_batch(lower: DeviceSocket, frames: list[Frame]) -> float:
    """Nanoseconds per frame for ``send_batch(queue, 64)`` until the queue is empty or stuck."""
    queue = deque(frames)
    t0 = time.perf_counter()
    while queue:
        n, _ = lower.send_batch(queue, 64)
        if n == 0:
            break
    t1 = time.perf_counter()
    return (t1 - t0) / max(len(frames) - len(queue), 1) * 1e9


def drain(sink: socket.socket) -> None:
    time.sleep(0.01)
    try:
        while sink.recv(65536, socket.MSG_DONTWAIT):
            pass
    except BlockingIOError:
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--no-vlan", action="store_true", help="restore_vlan=False")
    ap.add_argument("--no-ring", action="store_true", help="ring_size=0: one recvmsg per frame")
    args = ap.parse_args()
    ns_a, ns_b = "pmvt-mb-" + secrets.token_hex(3), "pmvt-mb-" + secrets.token_hex(3)
    for ns in (ns_a, ns_b):
        sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", "va", "netns", ns_a, "type", "veth", "peer", "name", "vb",
           "netns", ns_b)  # fmt: skip
        sh("ip", "-n", ns_a, "link", "set", "va", "up")
        sh("ip", "-n", ns_b, "link", "set", "vb", "up")
        with entered(ns_b):
            lower = DeviceSocket(
                "vb",
                restore_vlan=not args.no_vlan,
                ring_size=0 if args.no_ring else DEFAULT_RING_SIZE,
            )
        with entered(ns_a):
            inj = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            inj.bind(("va", 0))
            sink = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
            sink.bind(("va", 3))
            sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        frame = b"\xff" * 6 + b"\x02\x00\x00\x00\xaa\x01" + b"\x88\xb5" + b"\x00" * 46
        rx: list[float] = []
        tx: list[float] = []
        tx_gso: list[float] = []
        big = gso_frame(lower.mac)
        k = args.frames
        print(f"mode: {lower.mode}, restore_vlan={not args.no_vlan}")
        for _ in range(args.rounds):
            lower.recv_batch(100_000)
            for i in range(0, k, 250):
                for _ in range(min(250, k - i)):
                    inj.send(frame)
                time.sleep(0.002)
            time.sleep(0.02)
            got = 0
            t0 = time.perf_counter()
            while got < k:
                n = len(lower.recv_batch(64))
                if not n:
                    break
                got += n
            t1 = time.perf_counter()
            if got < k * 0.9:
                print(f"  only {got}/{k} frames received")
            rx.append((t1 - t0) / max(got, 1) * 1e9)
            frames = [Frame(frame) for _ in range(k)]
            send_batch = getattr(lower, "send_batch", None)
            t0 = time.perf_counter()
            if send_batch is not None:
                queue = deque(frames)
                while queue:
                    n, _ = send_batch(queue, 64)
                    if n == 0:
                        break
                sent = k - len(queue)
            else:
                sent = 0
                for f in frames:
                    if not lower.send(f):
                        break
                    sent += 1
            t1 = time.perf_counter()
            tx.append((t1 - t0) / max(sent, 1) * 1e9)
            drain(sink)
            tx_gso.append(timed_send_batch(lower, [big] * max(1, k // 10)))
            drain(sink)
        print(f"rx recv_batch(64): best {min(rx):.0f} ns/frame, median {statistics.median(rx):.0f}")
        print(
            f"tx {'send_batch' if hasattr(lower, 'send_batch') else 'send'}: "
            f"best {min(tx):.0f} ns/frame, median {statistics.median(tx):.0f}"
        )
        print(f"tx send_batch 64 KiB GSO: best {min(tx_gso):.0f} ns/frame, "
              f"median {statistics.median(tx_gso):.0f}")  # fmt: skip
        lower.close()
    finally:
        for ns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
