"""Tap writes batched through io_uring against one ``writev`` per frame (run by hand, as root).

``pip install liburing`` into the venv first (the bindings from PyPI; not a dependency of
pymacvtap), then ``python -m bench.tap_uring [--rounds N] [--frames K]``.

Writes K 64-byte UDP frames to a container's tap, as the daemon delivers them: once with
``Tap.write_batch`` (one ``os.writev`` per frame), once as batches of 64 ``writev``
submissions completed by one ``io_uring_submit_and_wait``.  Checks that the container's tap
received every frame, and prints the daemon's nanoseconds per frame (best and median).
bench/README.md has the result: the submissions cost more to build in
Python than the system calls they save.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import subprocess
import time
from collections import deque
from typing import Any

from bench.netdev_choice import Sides, sh, udp_frame

BATCH = 64


def uring_writes(liburing: Any, ring: Any, cqe: Any, fd: int, header: bytes, data: bytes,
                 count: int) -> float:  # fmt: skip
    """Nanoseconds per frame for ``count`` writes of ``header + data`` in batches."""
    done = 0
    t0 = time.perf_counter()
    while done < count:
        n = min(BATCH, count - done)
        iovecs = []  # kept alive until the kernel has completed them
        for _ in range(n):
            sqe = liburing.io_uring_get_sqe(ring)
            iovec = liburing.Iovec([header, data])
            iovecs.append(iovec)
            liburing.io_uring_prep_writev(sqe, fd, iovec)
        liburing.io_uring_submit_and_wait(ring, n)
        liburing.io_uring_wait_cqe(ring, cqe)
        liburing.io_uring_cq_advance(ring, liburing.io_uring_cq_ready(ring))
        done += n
    return (time.perf_counter() - t0) / count * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--frames", type=int, default=400)
    args = ap.parse_args()
    try:
        import liburing  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit(
            "bench.tap_uring needs the io_uring bindings: pip install liburing"
        ) from None
    tag = secrets.token_hex(3)
    container, daemon = f"pmvt-ur-{tag}-c", f"pmvt-ur-{tag}-d"
    for ns in (container, daemon):
        sh("ip", "netns", "add", ns)
    ring = liburing.Ring()
    liburing.io_uring_queue_init(4 * BATCH, ring)
    cqe = liburing.Cqe()
    k = args.frames
    times: dict[str, list[float]] = {"writev": [], "io_uring": []}
    try:
        sides = Sides(container, daemon)
        try:
            frame = udp_frame("tap")
            header = bytes(sides.tap.vnet_hdr_size)
            for _ in range(args.rounds):
                sides.drain()
                queue = deque([frame] * k)
                t0 = time.perf_counter()
                while queue and sides.write("tap", queue):
                    pass
                times["writev"].append((time.perf_counter() - t0) / k * 1e9)
                sides.drain()
                times["io_uring"].append(
                    uring_writes(liburing, ring, cqe, sides.tap.fileno(0), header, frame.data, k)
                )
            shown = subprocess.run(
                ["ip", "-n", container, "-s", "-j", "link", "show", "tapc"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            received = json.loads(shown)[0]["stats64"]["rx"]["packets"]
        finally:
            sides.close()
    finally:
        liburing.io_uring_queue_exit(ring)
        for ns in (container, daemon):
            subprocess.run(["ip", "netns", "del", ns], check=False)
    expected = 2 * args.rounds * k
    print(f"the container's tap received {received} of {expected} frames")
    print(f"daemon's time per 64-byte frame, ns (best / median of {args.rounds} rounds of {k})")
    for name, values in times.items():
        print(f"  {name:9} {min(values):6.0f} / {statistics.median(values):6.0f}")


if __name__ == "__main__":
    main()
