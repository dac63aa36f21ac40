"""The engine alone: nanoseconds per frame on the VEPA unicast path, no I/O.

``python -m bench.engine`` sends 64-byte frames between two VEPA endpoints the way
the daemon does (endpoint → wire queue, then the hairpin's copy from the lower →
the other endpoint's queue) and prints the cost per frame of each half.  It shows
what the interpreter spends in the engine, apart from syscalls and the kernel,
before and after a change to ``pymacvtap/core``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

from pymacvtap.core.engine import Engine
from pymacvtap.core.frame import VIRTIO_NET_HDR_F_NEEDS_CSUM, Frame, VnetHeader
from pymacvtap.core.modes import Mode

MAC_A = bytes.fromhex("020000010b01")
MAC_B = bytes.fromhex("020000010b02")


def _frame(dst: bytes, src: bytes) -> Frame:
    # An IPv4/UDP frame as a container's tap hands it over: checksum left to the receiver.
    payload = bytes(50)
    vnet = VnetHeader(flags=VIRTIO_NET_HDR_F_NEEDS_CSUM, csum_start=34, csum_offset=6)
    return Frame(dst + src + b"\x08\x00" + payload, vnet)


def measure(frames: int, rounds: int) -> dict[str, float]:
    engine = Engine(os.urandom)
    port = engine.add_lower("low0", bytes.fromhex("020000000b00"))
    a = engine.add_endpoint("a", "low0", Mode.VEPA, MAC_A, up=True)
    engine.add_endpoint("b", "low0", Mode.VEPA, MAC_B, up=True)
    b_queue = engine.endpoint("b").rx_queue
    out = _frame(MAC_B, MAC_A)
    back = _frame(MAC_B, MAC_A)
    tx, rx = [], []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        t0 = clock()
        from_endpoint = port.forward_from_endpoint
        for _ in range(frames):
            from_endpoint(a, out)
        t1 = clock()
        port.tx_queue.clear()
        from_lower = port.forward_from_lower
        for _ in range(frames):
            from_lower(back)
            b_queue.clear()
        t2 = clock()
        port.ready.clear()
        tx.append((t1 - t0) / frames)
        rx.append((t2 - t1) / frames)
    return {
        "endpoint_to_wire_ns": round(statistics.median(tx), 1),
        "wire_to_endpoint_ns": round(statistics.median(rx), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.engine", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--frames", type=int, default=400, help="frames per round (below the queue bounds)"
    )
    parser.add_argument("--rounds", type=int, default=500)
    parser.add_argument("-j", "--json", action="store_true")
    args = parser.parse_args()
    result = measure(args.frames, args.rounds)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:22} {value:8.1f}")


if __name__ == "__main__":
    main()
