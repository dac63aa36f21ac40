"""Tiny traffic helpers run *inside* a lab namespace as their own process.

``python -m bench.traffic echo PORT``          UDP echo (for round-trip times)
``python -m bench.traffic sink PORT``          a UDP socket that is bound and never read
``python -m bench.traffic blast ADDR PORT PPS SECONDS SIZE``
                                               paced UDP datagrams of SIZE bytes

They are separate processes (started with ``ip netns exec``) so that the benchmark's own
interpreter and its GIL stay out of the path being measured.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import socket
import time


def echo(port: int) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    recvfrom, sendto = sock.recvfrom, sock.sendto
    while True:
        data, addr = recvfrom(2048)
        sendto(data, addr)


def sink(port: int) -> None:
    """The stalled consumer: datagrams pile up in (and overflow) this socket's buffer."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    while True:
        signal.pause()


def blast(addr: str, port: int, pps: int, seconds: float, size: int) -> None:
    """Send ``pps`` datagrams per second for ``seconds``, in 1 ms bursts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((addr, port))
    payload = bytes(size)
    send = sock.send
    start = time.monotonic()
    sent = 0
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= seconds:
            break
        due = int(elapsed * pps) + 1
        while sent < due:
            with contextlib.suppress(OSError):  # ENOBUFS, ECONNREFUSED: keep the pace
                send(payload)
            sent += 1
        time.sleep(0.001)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.traffic")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("echo").add_argument("port", type=int)
    sub.add_parser("sink").add_argument("port", type=int)
    b = sub.add_parser("blast")
    b.add_argument("addr")
    b.add_argument("port", type=int)
    b.add_argument("pps", type=int)
    b.add_argument("seconds", type=float)
    b.add_argument("size", type=int)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if args.cmd == "echo":
        echo(args.port)
    elif args.cmd == "sink":
        sink(args.port)
    else:
        blast(args.addr, args.port, args.pps, args.seconds, args.size)


if __name__ == "__main__":
    main()
