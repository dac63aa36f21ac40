"""Load: a broadcast storm, many senders at once, a consumer that stops reading."""

from __future__ import annotations

import subprocess
import sys
import time

from lab import Lab, ip_json
from lab.daemon import DaemonProcess, wait_until
from lab.fixtures import Containers
from tests.reliability.helpers import (
    SCALE,
    StreamVM,
    add_vm,
    frame,
    mac_of,
    public_dir,
    record,
    stats,
)

STORM_SECONDS = 2.0 * SCALE
BLAST = (
    "import socket,sys,time\n"
    "dst,src,seconds,count=sys.argv[1],sys.argv[2],float(sys.argv[3]),int(sys.argv[4])\n"
    "s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW);s.bind(('eth0',0))\n"
    "f=bytes.fromhex(dst)+bytes.fromhex(src)+b'\\x88\\xb5'+bytes(100)\n"
    "end=time.monotonic()+seconds;n=0\n"
    "while (count and n<count) or (not count and time.monotonic()<end):\n"
    "    try: s.send(f);n+=1\n"
    "    except OSError: time.sleep(0.0005)\n"
    "print(n,flush=True)\n"
)


def blaster(
    ns: str, dst: bytes, src: bytes, seconds: float = 0, count: int = 0
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, sys.executable, "-c", BLAST, dst.hex(), src.hex(),
         str(seconds), str(count)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> int:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return int(out.strip() or 0)


def balanced(daemon: DaemonProcess, name: str, ns: str) -> bool:
    """Every frame the daemon read off the netdev is counted: packets, dropped or errors."""
    kernel = ip_json(ns, "-s", "link", "show", "dev", "eth0")[0]["stats64"]["tx"]["packets"]
    tx = stats(daemon, name)["stats64"]["tx"]
    return bool(kernel == tx["packets"] + tx["dropped"] + tx["errors"])


def test_broadcast_storm_from_one_endpoint(daemon: DaemonProcess, containers: Containers) -> None:
    # A short broadcast queue (bcqueuelen) so the storm overflows it.
    small = ("bcqueuelen", "8")
    storm_ns = containers.add("c1", "vepa", extra=small)
    containers.add("c2", "vepa", extra=small)
    containers.add("c3", "bridge", extra=small)
    before = stats(daemon, "c2")["lower_stats"]["bcqueue_dropped"]
    storm = blaster(storm_ns, b"\xff" * 6, mac_of(daemon, "c1"), seconds=STORM_SECONDS + 2)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        while time.monotonic() - started < STORM_SECONDS:
            assert containers.ping("c2", "c3", count=2), "unicast starved by the storm"
            assert containers.ping("c3", "ext", count=1)
    finally:
        sent = finish(storm)
    assert sent > 1000
    lower = stats(daemon, "c2")["lower_stats"]
    assert lower["bcqueue_dropped"] > before, lower
    assert wait_until(lambda: balanced(daemon, "c1", storm_ns), 5)
    record("load: broadcast storm frames", sent)
    print(f"storm {sent} frames, lower {lower}")


def test_many_endpoints_sending_at_once(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    names = [f"m{i}" for i in range(6)]
    nss = {n: containers.add(n, "vepa" if i % 2 else "bridge") for i, n in enumerate(names)}
    procs = [blaster(nss[n], lab.ext_mac, mac_of(daemon, n), count=3000 * SCALE) for n in names]
    total = sum(finish(p) for p in procs)
    assert total >= 6 * 3000 * SCALE
    for n in names:
        assert wait_until(lambda n=n: balanced(daemon, n, nss[n]), 5), stats(daemon, n)
        assert containers.ping(n, "ext", count=1)
    assert containers.ping("m0", "m2") and containers.ping("m1", "m3")
    record("load: frames from 6 endpoints at once", total)


def test_consumer_that_stops_reading(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "vepa")
    sockdir = public_dir()
    add_vm(daemon, "vm0", "stream", sockdir / "vm0.sock")
    vm0 = mac_of(daemon, "vm0")
    lazy = StreamVM(sockdir / "vm0.sock")  # connects, never reads
    ext = lab.ext_socket()
    try:
        time.sleep(0.2)
        big = frame(vm0, lab.ext_mac, b"flood", size=1400)
        sent = 0
        deadline = time.monotonic() + 30
        while sent < 20_000 * SCALE and time.monotonic() < deadline:
            try:
                ext.send(big)
                sent += 1
            except BlockingIOError:
                time.sleep(0.001)
            if sent % 2000 == 0:
                # The daemon is not blocked: the control socket and others answer.
                t0 = time.monotonic()
                daemon.cli("link", "show")
                assert time.monotonic() - t0 < 2
        assert containers.ping("c1", "ext")
        rx = stats(daemon, "vm0")["stats64"]["rx"]
        assert rx["dropped"] > 0, rx
    finally:
        lazy.close()
        ext.close()
    record("load: frames to a consumer that stops reading", sent)
