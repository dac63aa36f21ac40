"""Tap or veth for a container endpoint: the daemon's cost per frame, both ways, measured.

SPEC 3 lets a ``macvlan`` endpoint's netdev be a tap whose fd the daemon holds or a veth
whose peer it holds, "chosen by measurement".  This is that measurement, run by hand as
root (``python -m bench.netdev_choice [--rounds N] [--frames K] [--json FILE]``):

* a "container" namespace with two netdevs: ``tapc``, a tap whose fd this process holds
  (as the daemon does), and ``vethc``, a veth whose peer ``vethd`` sits in a "daemon"
  namespace, read and written through the daemon's own ``DeviceSocket`` (a TPACKET_V2 ring
  with vnet headers);
* **from the container**: its UDP socket sends K 64-byte frames through each netdev
  (untimed), then the daemon side reads them (timed): ``Tap.read_batch`` against
  ``DeviceSocket.recv_batch``;
* **to the container**: the daemon side writes K 64-byte UDP frames for a socket in the
  container (timed): ``Tap.write_batch`` against ``DeviceSocket.send_batch``; each call
  includes the container's receive path, which the kernel runs inside the write;
* the same with TCP super-frames of 45 segments towards the container (its stack answers the
  unknown connection with a reset, the same for both).

It prints nanoseconds of the daemon's time per frame (best and median of the rounds) and
writes them as JSON.  It measures only the daemon's side: with a veth the container's
sending also costs the container more (the veth and the packet socket's copy into the
ring run in its context), which is where that work belongs.
"""

from __future__ import annotations

import argparse
import json
import secrets
import socket
import statistics
import struct
import subprocess
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from pymacvtap.core.frame import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    Frame,
    VnetHeader,
)
from pymacvtap.io.afpacket import DeviceSocket
from pymacvtap.io.netns import entered
from pymacvtap.io.tap import Tap

CONTAINER_MAC = {"tap": bytes.fromhex("020000c0a001"), "veth": bytes.fromhex("020000c0a002")}
DAEMON_MAC = bytes.fromhex("020000c0d001")  # the "other end" the container sends to
SUBNET = {"tap": "10.98.1", "veth": "10.98.2"}
SINK_PORT = 9999
PAYLOAD = 18  # 14 + 20 + 8 + 18 = 60 bytes: a 64-byte frame with its FCS


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def _checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ipv4(src: str, dst: str, proto: int, payload: bytes) -> bytes:
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0x4000, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    return head[:10] + struct.pack("!H", _checksum(head)) + head[12:] + payload


def udp_frame(kind: str) -> Frame:
    """64 bytes to the container's sink, IP checksum right, UDP checksum none (allowed)."""
    net = SUBNET[kind]
    udp = struct.pack("!HHHH", 40000, SINK_PORT, 8 + PAYLOAD, 0) + bytes(PAYLOAD)
    data = CONTAINER_MAC[kind] + DAEMON_MAC + b"\x08\x00" + ipv4(f"{net}.2", f"{net}.1", 17, udp)
    return Frame(data)


def tcp_super_frame(kind: str) -> Frame:
    """A TCP/IPv4 super-frame of 45 segments (65,214 bytes), as a sender's TSO builds one.

    Below the 64 KiB ``gso_max_size`` of either netdev, so that neither has to segment it."""
    net = SUBNET[kind]
    payload = bytes(45 * 1448)
    tcp = struct.pack("!HHIIBBHHH", 40000, 5001, 1, 1, 0x50, 0x18, 65535, 0, 0)
    data = CONTAINER_MAC[kind] + DAEMON_MAC + b"\x08\x00"
    data += ipv4(f"{net}.2", f"{net}.1", 6, tcp + payload)
    vnet = VnetHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1448, 34, 16)
    return Frame(data, vnet)


class Sides:
    """The two netdevs, the daemon's handles on them, and the container's sockets."""

    def __init__(self, container: str, daemon: str) -> None:
        self.tap = Tap.open("tapc", netns=container)
        self.tap.set_carrier(True)
        sh("ip", "link", "add", "vethd", "netns", daemon, "type", "veth",
           "peer", "name", "vethc", "netns", container)  # fmt: skip
        sh("ip", "-n", daemon, "link", "set", "vethd", "up")
        with entered(daemon):
            self.peer = DeviceSocket("vethd")
        for kind, dev in (("tap", "tapc"), ("veth", "vethc")):
            net = SUBNET[kind]
            mac = ":".join(f"{b:02x}" for b in CONTAINER_MAC[kind])
            peer = ":".join(f"{b:02x}" for b in DAEMON_MAC)
            for cmd in (
                ["link", "set", dev, "address", mac, "up"],
                ["addr", "add", f"{net}.1/24", "dev", dev],
                ["neigh", "add", f"{net}.2", "lladdr", peer, "dev", dev],
            ):
                sh("ip", "-n", container, *cmd)
        with entered(container):
            self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sinks: dict[str, socket.socket] = {}
            for kind in ("tap", "veth"):
                sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
                sink.bind((f"{SUBNET[kind]}.1", SINK_PORT))
                sink.setblocking(False)
                self.sinks[kind] = sink

    def send_from_container(self, kind: str, count: int) -> None:
        destination = (f"{SUBNET[kind]}.2", 7)
        payload = bytes(PAYLOAD)
        for i in range(0, count, 100):
            for _ in range(min(100, count - i)):
                self.sender.sendto(payload, destination)
            time.sleep(0.001)  # let the netdev's queue drain into the daemon side
        time.sleep(0.01)

    def read(self, kind: str) -> Callable[[], int]:
        if kind == "tap":
            return lambda: len(self.tap.read_batch(0, 64))
        return lambda: len(self.peer.recv_batch(64))

    def write(self, kind: str, queue: deque[Frame]) -> int:
        if kind == "tap":
            return self.tap.write_batch(queue, 64)[0]
        return self.peer.send_batch(queue, 64)[0]

    def drain(self) -> None:
        time.sleep(0.01)
        for sink in self.sinks.values():
            try:
                while sink.recv(65536):
                    pass
            except BlockingIOError:
                pass
        while self.read("tap")() or self.read("veth")():
            pass  # what the container sent back (TCP resets, ...)

    def close(self) -> None:
        self.sender.close()
        for sink in self.sinks.values():
            sink.close()
        self.tap.close()
        self.peer.close()


def timed_reads(sides: Sides, kind: str, count: int) -> float:
    sides.drain()
    sides.send_from_container(kind, count)
    read = sides.read(kind)
    got = 0
    t0 = time.perf_counter()
    while True:
        n = read()
        if not n:
            break
        got += n
    elapsed = time.perf_counter() - t0
    if got < count * 0.9:
        raise RuntimeError(f"{kind}: only {got} of {count} frames reached the daemon side")
    return elapsed / got * 1e9


def timed_writes(sides: Sides, kind: str, frames: list[Frame]) -> float:
    sides.drain()
    queue = deque(frames)
    t0 = time.perf_counter()
    while queue:
        if not sides.write(kind, queue):
            break
    elapsed = time.perf_counter() - t0
    done = len(frames) - len(queue)
    if done < len(frames) * 0.9:
        raise RuntimeError(f"{kind}: only {done} of {len(frames)} frames were taken")
    return elapsed / done * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--frames", type=int, default=400)
    ap.add_argument("--json", type=Path, default=Path("bench/results/netdev-choice.json"))
    args = ap.parse_args()
    tag = secrets.token_hex(3)
    container, daemon = f"pmvt-nc-{tag}-c", f"pmvt-nc-{tag}-d"
    for ns in (container, daemon):
        sh("ip", "netns", "add", ns)
    results: dict[str, dict[str, list[float]]] = {}
    try:
        sides = Sides(container, daemon)
        try:
            k = args.frames
            for _ in range(args.rounds):
                for kind in ("tap", "veth"):
                    row = results.setdefault(kind, {})
                    row.setdefault("from container, 64 B", []).append(timed_reads(sides, kind, k))
                    row.setdefault("to container, 64 B", []).append(
                        timed_writes(sides, kind, [udp_frame(kind)] * k)
                    )
                    row.setdefault("to container, TCP super-frame", []).append(
                        timed_writes(sides, kind, [tcp_super_frame(kind)] * max(1, k // 10))
                    )
        finally:
            sides.close()
    finally:
        for ns in (container, daemon):
            subprocess.run(["ip", "netns", "del", ns], check=False)
    summary = {
        kind: {what: {"best_ns": min(v), "median_ns": statistics.median(v)}
               for what, v in row.items()}
        for kind, row in results.items()
    }  # fmt: skip
    print(f"daemon's time per frame, ns (best / median of {args.rounds} rounds of {k} frames)")
    print(f"{'':32} {'tap':>15} {'veth':>15}")
    for what in summary["tap"]:
        cells = [f"{summary[kind][what]['best_ns']:6.0f} / {summary[kind][what]['median_ns']:6.0f}"
                 for kind in ("tap", "veth")]  # fmt: skip
        print(f"{what:32} {cells[0]:>15} {cells[1]:>15}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rounds": args.rounds, "frames": k, "ns": summary}, indent=1))
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
