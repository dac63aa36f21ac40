"""The ``vm`` test: a QEMU guest on each setup's lower, pinging and sending to that setup's c2.

Four VMs, one after the other, each booted with the test image of ``tests/vm`` (a Debian
cloud kernel and busybox), under TCG (no KVM on this project's machines):

=======================  =====  ===================================================================
variant                  lower  attach
=======================  =====  ===================================================================
``kernel``               lowk   kernel ``macvtap`` VEPA device, its /dev/tapN opened and given to
                                QEMU as ``-netdev tap,fd=3,vhost=off`` (as libvirt does)
``pymacvtap``            lowp   ``macvtap`` endpoint, ``frontend tap``:
                                ``pymacvtap exec NAME -- qemu … -netdev tap,fds=3``
``pymacvtap_vhost_user`` lowp   ``macvtap`` endpoint, ``frontend vhost-user``: memfd guest RAM,
                                ``-netdev vhost-user``, ``vectors=0`` (QEMU 7.2 under TCG)
``fastpath``             lowf   as ``pymacvtap``, on the daemon run with ``--datapath ebpf``: the
                                programs forward the tap's unicast
=======================  =====  ===================================================================

Every frame between the VM and c2 leaves through the lower and comes back by the switch's
hairpin port, as between two containers.  In the guest, ``ping -i 0.01`` to c2 gives the round
trips (the guest's own ``time=``).  For the throughput VM→c2, busybox ``httpd`` in the guest
serves a 64 MiB file from RAM and a client in c2 (``python -m bench.vm fetch``) fetches it
again and again, timing what arrives.  httpd hands the whole file to ``sendfile``, so the
guest sends 64 KiB super-frames at little cost per byte; ``nc c2 PORT < /dev/zero`` was tried
first and rejected: busybox nc writes a few KiB at a time, the emulated guest then tops out
near 10,000 frames/s, and how many bytes ride in each frame swung from 1.4 to 6.6 KiB between
runs (105 to 564 Mbit/s for the same kernel setup).  The guest's virtual CPU is emulated, so
absolute numbers are TCG's; the ratio between the variants is what the rows are for.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab import Lab, bridge, ip, ip_json, mac_bytes, run
from lab.vm.image import VmImage, VmImageError, ensure_vm_image
from lab.vm.qemu import QEMU, Nic, Vm, boot_vm, new_mac

from .measure import (
    MeasureError,
    cpu_seconds,
    json_result,
    median_round,
    metered,
    netns_argv,
    percentile,
    summarize_rtt,
)
from .setups import SUBNET, Setup

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("kernel", "pymacvtap", "pymacvtap_vhost_user", "fastpath")
# Last octet of each VM's address: clear of the containers (.11–.13, .21–.23, .61–.63) and
# ext (.100).
VM_HOST = {"kernel": 31, "pymacvtap": 41, "pymacvtap_vhost_user": 42, "fastpath": 71}
ENDPOINT = {
    "kernel": "kvm0",
    "pymacvtap": "pvmtap",
    "pymacvtap_vhost_user": "pvmvhost",
    "fastpath": "fvmtap",
}
# Which setup's lower (and daemon) each VM is on: the fast path's VM on the ebpf daemon.
SETUP_OF = {
    "kernel": "kernel",
    "pymacvtap": "pymacvtap",
    "pymacvtap_vhost_user": "pymacvtap",
    "fastpath": "fastpath",
}
STREAM_PORT = 7011
PING_INTERVAL_S = 0.01
STREAM_WARMUP_S = 1.0  # TCP slow start and the guest's first page faults, left out
SERVED_FILE_MIB = 64  # in the guest's RAM (GUEST_MEMORY_MIB); 0.13 s per fetch at 4 Gbit/s
BOOT_TIMEOUT_S = 120.0
GUEST_MEMORY_MIB = 192


@dataclass
class Attachment:
    """How QEMU reaches one variant's port: the NIC and the rest of ``boot_vm``'s arguments."""

    nic: Nic
    how: str  # for the results: the attach path in a few words
    boot: dict[str, Any] = field(default_factory=dict)


# -- the ports ------------------------------------------------------------------------------------


@contextlib.contextmanager
def kernel_macvtap(
    lab: Lab, lower: str, name: str, mac: str, workdir: Path
) -> Iterator[Attachment]:
    """A kernel macvtap VEPA device on ``lower``, handed to QEMU as an open /dev/tapN.

    The device node is made here from the major:minor in the host namespace's sysfs: the
    name /dev/tapN carries the ifindex, which is per namespace, so devtmpfs's node may
    belong to another namespace's macvtap.  ``Vm`` passes no descriptors, so a shell opens
    the node as fd 3 and execs QEMU in its place (the pid stays QEMU's).
    """
    ip(lab.host, "link", "add", "link", lower, "name", name, "address", mac,
       "type", "macvtap", "mode", "vepa")  # fmt: skip
    node = workdir / f"{name}.chardev"
    try:
        ip(lab.host, "link", "set", name, "up")
        ifindex = ip_json(lab.host, "link", "show", "dev", name)[0]["ifindex"]
        numbers = run(
            netns_argv(lab.host, "cat", f"/sys/class/net/{name}/macvtap/tap{ifindex}/dev")
        )
        major, minor = (int(n) for n in numbers.strip().split(":"))
        os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(major, minor))
        yield Attachment(
            Nic("tap,fd=3,vhost=off"),
            "kernel macvtap, its /dev/tapN as -netdev tap,fd=3,vhost=off",
            {"argv_prefix": ["/bin/sh", "-c", 'exec "$@" 3<>"$0"', str(node)]},
        )
    finally:
        node.unlink(missing_ok=True)
        ip(lab.host, "link", "del", name, check=False)


@contextlib.contextmanager
def pymacvtap_endpoint(
    setup: Setup, name: str, mac: str, frontend: str, workdir: Path
) -> Iterator[Attachment]:
    """A pymacvtap ``macvtap`` VEPA endpoint with ``frontend`` tap or vhost-user."""
    daemon = setup.daemon
    assert daemon is not None
    args = ["link", "add", "link", setup.lower, "name", name, "type", "macvtap", "mode", "vepa",
            "address", mac, "frontend", frontend]  # fmt: skip
    sock = workdir / f"{name}.sock"
    if frontend == "vhost-user":
        args += ["path", str(sock)]
    daemon.cli(*args)
    try:
        if frontend == "tap":
            # The endpoint's one tap queue as fd 3, what libvirt does (docs/vms.md).
            exec_argv = [sys.executable, "-m", "pymacvtap", "--socket", str(daemon.socket),
                         "exec", name, "--"]  # fmt: skip
            yield Attachment(
                Nic("tap,fds=3"),
                f"pymacvtap exec {name} -- qemu … -netdev tap,fds=3",
                {"argv_prefix": exec_argv},
            )
        else:
            # vectors=0 (no MSI-X): QEMU 7.2 under TCG segfaults starting vhost-user with MSI-X.
            yield Attachment(
                Nic("vhost-user,chardev=c0", device_opts="vectors=0"),
                "-netdev vhost-user,chardev=c0, memfd guest RAM, vectors=0",
                {"shared_memory": True, "extra_args": ["-chardev", f"socket,id=c0,path={sock}"]},
            )
    finally:
        daemon.run_cli("link", "del", name)


@contextlib.contextmanager
def switch_entry(lab: Lab, mac: str, port: str) -> Iterator[None]:
    """A static fdb entry for the VM's MAC: the switch does not learn, and must not flood."""
    lab.fdb_static(mac_bytes(mac), port)
    try:
        yield
    finally:
        bridge(lab.sw, "fdb", "del", mac, "dev", port, "master", "static", check=False)


# -- the measurements -----------------------------------------------------------------------------


def guest_ping(vm: Vm, target: str, count: int) -> dict[str, Any]:
    """``ping -c COUNT -i 0.01`` in the guest, into a file first (the serial console would
    otherwise print while the pings run); every reply's ``time=``."""
    out_file = "/tmp/ping.out"
    command = (
        f"ping -c {count} -i {PING_INTERVAL_S} -W 2 {target} > {out_file} 2>&1; "
        f"sed -n -e 's/.* time=\\([0-9.]*\\) ms.*/\\1/p' "
        f"-e 's/^\\([0-9]*\\) packets transmitted.*/sent \\1/p' {out_file}"
    )
    _rc, out = vm.run(command, timeout=count * PING_INTERVAL_S * 5 + 60)
    samples_us: list[float] = []
    sent = 0
    for line in out.splitlines():
        if line.startswith("sent "):
            sent = int(line.split()[1])
        elif line.strip():
            samples_us.append(float(line) * 1e3)
    if sent != count:
        raise MeasureError(f"guest ping sent {sent} of {count}: {out[-500:]}")
    result = summarize_rtt(samples_us, sent)
    result["interval_s"] = PING_INTERVAL_S
    result["p90_us"] = percentile(sorted(samples_us), 90)
    return result


@contextlib.contextmanager
def serving_a_file(vm: Vm) -> Iterator[None]:
    """busybox httpd in the guest with a file of zeros in RAM, for ``fetch``; stopped after."""
    rc, out = vm.run(
        f"mkdir -p /tmp/www && dd if=/dev/zero of=/tmp/www/blob bs=1M count={SERVED_FILE_MIB} "
        f"2>/dev/null && httpd -p {STREAM_PORT} -h /tmp/www",
        timeout=60,
    )
    if rc != 0:
        raise MeasureError(f"httpd in the guest did not start: {out}")
    try:
        yield
    finally:
        vm.run("killall httpd; rm -rf /tmp/www", timeout=30)


def stream_from_guest(vm_address: str, netns: str, seconds: float) -> dict[str, Any]:
    """TCP VM→c2: the client in ``netns`` fetches the guest's file and times what arrives."""
    argv = netns_argv(
        netns, sys.executable, "-m", "bench.vm", "fetch", vm_address, str(STREAM_PORT),
        str(STREAM_WARMUP_S), str(seconds),
    )  # fmt: skip
    fetched = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=STREAM_WARMUP_S + seconds + 60
    )
    result = json_result("fetch", fetched)
    result["sender"] = f"busybox httpd in the guest (sendfile), a {SERVED_FILE_MIB} MiB file"
    return result


def with_cpu(vm: Vm, daemon_pid: int | None, measure: Callable[[], dict[str, Any]]) -> Any:
    """``measure()`` with the daemon's and QEMU's CPU during it (QEMU near 100 % of a core:
    the emulated guest, not the network, bounds the number)."""
    qemu_before = cpu_seconds(vm.proc.pid)
    with metered(daemon_pid) as meter:
        result = measure()
    result["meter"] = meter.as_dict()
    qemu_pct = 100.0 * (cpu_seconds(vm.proc.pid) - qemu_before) / meter.wall
    result["meter"]["qemu_cpu_pct_of_core"] = round(qemu_pct, 1)
    return result


@dataclass
class Guest:
    """One variant's VM, booted, answering c2 and serving the file."""

    vm: Vm
    address: str
    setup: Setup
    attach: str
    boot_s: float = 0.0
    rtt: dict[str, Any] = field(default_factory=dict)  # measure_round's
    stream: dict[str, Any] = field(default_factory=dict)


def start_guest(
    stack: contextlib.ExitStack, variant: str, lab: Lab, setup: Setup, image: VmImage,
    workdir: Path,
) -> Guest:  # fmt: skip
    """Boot ``variant``'s VM on its port (everything it holds goes on ``stack``)."""
    mac = new_mac()
    name = ENDPOINT[variant]
    if variant == "kernel":
        port = stack.enter_context(kernel_macvtap(lab, setup.lower, name, mac, workdir))
    else:
        frontend = "vhost-user" if variant == "pymacvtap_vhost_user" else "tap"
        port = stack.enter_context(pymacvtap_endpoint(setup, name, mac, frontend, workdir))
    stack.enter_context(switch_entry(lab, mac, lab.lowers[setup.lower].port))
    address = f"{SUBNET}.{VM_HOST[variant]}"
    nic = Nic(port.nic.netdev, ip=f"{address}/24", mac=mac, device_opts=port.nic.device_opts)
    vm = stack.enter_context(
        boot_vm(image, nic, stay=True, name=name, memory=GUEST_MEMORY_MIB, **port.boot)
    )
    return Guest(vm, address, setup, port.how)


def ready_guest(guest: Guest) -> None:
    """Wait for the guest and resolve c2 both ways, outside the measurements."""
    c2 = guest.setup.containers["c2"]
    guest.vm.wait_for_marker("PMVT-READY", timeout=BOOT_TIMEOUT_S)
    guest.boot_s = round(guest.vm.booted_after or 0.0, 1)
    rc, out = guest.vm.run(f"pmvt_wait_reply {c2.address} 30", timeout=60)
    if rc != 0:
        raise MeasureError(f"the VM gets no reply from c2 {c2.address}: {out}")


def measure_round(guest: Guest, *, ping_count: int, stream_seconds: float) -> None:
    """Round trips, then throughput (httpd started after the pings, as before the rounds
    came), each with the daemon's CPU (the kernel setup: none)."""
    c2 = guest.setup.containers["c2"]
    vm, pid = guest.vm, guest.setup.daemon_pid
    guest.rtt = with_cpu(vm, pid, lambda: guest_ping(vm, c2.address, ping_count))
    with serving_a_file(vm):
        time.sleep(0.5)  # the ping's queues drain
        guest.stream = with_cpu(
            vm, pid, lambda: stream_from_guest(guest.address, c2.netns, stream_seconds)
        )


def qemu_version() -> str:
    try:
        out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        raise VmImageError(f"{QEMU}: {exc}") from exc
    return out.stdout.splitlines()[0] if out.stdout else ""


def measure_vms(
    lab: Lab,
    setups: dict[str, Setup],
    workdir: Path,
    *,
    ping_count: int,
    stream_seconds: float,
    progress: Callable[[str], None],
    settle: float = 1.0,
    rounds: int = 1,
) -> dict[str, Any]:
    """Every variant in turn, ``rounds`` times over (each round starting one variant
    later), a freshly booted VM each time; each figure is its variant's median round,
    with every round's figure beside it.

    One run per variant, one variant after another, was how this started: the VM row's
    ratio then came out 0.92×, 1.16× and 0.98× in three runs of the same tree, because
    an emulated guest's speed drifts over minutes by more than the variants differ.
    Taken alternately, the rounds of the variants see the same drift.  The VMs are not
    kept running side by side between their rounds: tried, a guest's first fetch then
    timed out now and then (2 runs of 4), which one at a time never did.

    Each entry is its numbers or ``{"error": ...}`` (when no round of it succeeded),
    never a raise.
    """
    try:
        image = ensure_vm_image()
        qemu = qemu_version()
        workdir.mkdir(parents=True, exist_ok=True)
    except Exception as exc:  # no QEMU, no image, no apt: the rest of the bench goes on
        return {"error": f"no VM: {type(exc).__name__}: {exc}"}
    out: dict[str, Any] = {
        "accel": "tcg",
        "qemu": qemu,
        "guest_kernel": image.kernel_version,
        "guest_memory_mib": GUEST_MEMORY_MIB,
        "ping_count": ping_count,
        "stream_seconds": stream_seconds,
        "rounds": rounds,
    }
    variants = [v for v in VARIANTS if SETUP_OF[v] in setups]
    for variant in VARIANTS:
        if variant not in variants:
            out[variant] = {"error": f"no {SETUP_OF[variant]} setup in this run"}
    done: dict[str, list[Guest]] = {v: [] for v in variants}
    errors: dict[str, list[str]] = {v: [] for v in variants}
    for round_no in range(rounds):
        shift = round_no % len(variants) if variants else 0
        for variant in variants[shift:] + variants[:shift]:
            progress(f"{'vm':8} {variant:9} {round_no + 1}/{rounds} ... (boots a TCG guest)")
            setup = setups[SETUP_OF[variant]]
            try:
                with contextlib.ExitStack() as stack:
                    guest = start_guest(stack, variant, lab, setup, image, workdir)
                    ready_guest(guest)
                    measure_round(guest, ping_count=ping_count, stream_seconds=stream_seconds)
            except Exception as exc:  # a VM that fails must not end the bench
                errors[variant].append(f"{type(exc).__name__}: {str(exc)[:2000]}")
                progress(f"{'':8} {'':9} {errors[variant][-1].splitlines()[0]}")
            else:
                done[variant].append(guest)
                progress(f"{'':8} {'':9} {brief(_summary([guest]))}")
            time.sleep(settle)
    for variant in variants:
        if done[variant]:
            out[variant] = _summary(done[variant])
            if errors[variant]:
                out[variant]["failed_rounds"] = errors[variant]
        else:
            out[variant] = {"error": errors[variant][0] if errors[variant] else "no round"}
    return out


def _summary(guests: list[Guest]) -> dict[str, Any]:
    """The median round of a variant's guests (one guest per round), and every round's."""
    return {
        "boot_s": sorted(g.boot_s for g in guests)[(len(guests) - 1) // 2],
        "rtt": median_round([g.rtt for g in guests], "median_us"),
        "stream": median_round([g.stream for g in guests], "mbit_s"),
        "attach": guests[0].attach,
    }


def brief(r: dict[str, Any]) -> str:
    if "error" in r:
        return str(r["error"]).splitlines()[0]
    rtt, stream = r["rtt"], r["stream"]
    parts = [
        f"boot={r['boot_s']}s",
        f"rtt median={rtt['median_us']:.0f}µs p99={rtt['p99_us']:.0f}µs lost={rtt['lost']}",
        f"stream={stream['mbit_s']:.1f}Mbit/s",
        f"qemu_cpu={stream['meter']['qemu_cpu_pct_of_core']:.0f}%",
    ]
    cpu = stream["meter"]["daemon_cpu_pct_of_core"]
    if cpu is not None:
        parts.append(f"daemon_cpu={cpu:.0f}%")
    return " ".join(parts)


# -- the client, run in c2 -----------------------------------------------------------------------


def fetch(address: str, port: int, warmup: float, seconds: float) -> dict[str, Any]:
    """GET /blob from ``address:port`` over and over; what arrives from ``warmup`` to
    ``warmup + seconds`` after the first byte, across connections (their set-up included)."""
    buf = bytearray(1 << 18)
    view = memoryview(buf)
    clock = time.monotonic
    total = at_start = connections = 0
    first = start = end = 0.0
    deadline = clock() + warmup + seconds + 30  # a server that answers short cannot loop us
    while not end:
        if clock() > deadline:
            return {"error": f"{total} bytes in {connections} responses, then the time was up"}
        with socket.create_connection((address, port), timeout=10) as conn:
            connections += 1
            conn.sendall(b"GET /blob HTTP/1.0\r\n\r\n")
            while True:
                n = conn.recv_into(view)
                now = clock()
                if n == 0:
                    break
                if not total:
                    first = now
                total += n
                if not start and now - first >= warmup:
                    start, at_start = now, total
                if start and now - start >= seconds:
                    end = now
                    break  # closing with unread data resets the connection: httpd stops
    counted = total - at_start
    return {
        "mbit_s": counted * 8 / (end - start) / 1e6,
        "bytes": counted,
        "seconds": round(end - start, 3),
        "warmup_s": warmup,
        "connections": connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.vm")
    sub = parser.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="fetch /blob from the VM's httpd, timed (run in c2)")
    f.add_argument("address")
    f.add_argument("port", type=int)
    f.add_argument("warmup", type=float)
    f.add_argument("seconds", type=float)
    args = parser.parse_args()
    try:
        result = fetch(args.address, args.port, args.warmup, args.seconds)
    except OSError as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
