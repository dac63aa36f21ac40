"""Measurements: iperf3 runs, round trips, and a process's CPU time and memory."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import statistics
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lab import in_netns, socket_in

CLK_TCK = os.sysconf("SC_CLK_TCK")
IPERF_PORT = 5201
ECHO_PORT = 7007


class MeasureError(RuntimeError):
    """A measurement could not be taken; its row shows ``error`` and the JSON says why."""


# -- processes: CPU and memory --------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3 of proc(5)); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def run_delay_seconds(pid: int) -> float:
    """Time ``pid`` spent runnable but waiting for a CPU (``/proc/PID/schedstat``, field 2)."""
    with open(f"/proc/{pid}/schedstat") as f:
        return int(f.read().split()[1]) / 1e9


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def machine_busy() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class Meter:
    """CPU use of the daemon (if any) and of the whole machine during one measurement."""

    pid: int | None
    wall: float = 0.0
    daemon_cpu_pct: float | None = None  # % of one core
    daemon_runq_wait_pct: float | None = None  # % of the time runnable but not running
    machine_busy_pct: float = 0.0  # % of all cores
    memory_kib: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall, 3),
            "daemon_cpu_pct_of_core": _round(self.daemon_cpu_pct, 1),
            "daemon_runq_wait_pct": _round(self.daemon_runq_wait_pct, 1),
            "machine_busy_pct": round(self.machine_busy_pct, 1),
            "daemon_memory_kib": self.memory_kib or None,
        }


@contextmanager
def metered(pid: int | None) -> Iterator[Meter]:
    meter = Meter(pid)
    cpu0 = cpu_seconds(pid) if pid else 0.0
    wait0 = run_delay_seconds(pid) if pid else 0.0
    busy0, total0 = machine_busy()
    t0 = time.monotonic()
    yield meter
    meter.wall = time.monotonic() - t0
    busy1, total1 = machine_busy()
    meter.machine_busy_pct = 100.0 * (busy1 - busy0) / max(1, total1 - total0)
    if pid:
        meter.daemon_cpu_pct = 100.0 * (cpu_seconds(pid) - cpu0) / meter.wall
        meter.daemon_runq_wait_pct = 100.0 * (run_delay_seconds(pid) - wait0) / meter.wall
        meter.memory_kib = memory_kib(pid)


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


# -- helpers in namespaces ----------------------------------------------------------------


def netns_argv(netns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", netns, *argv]


def wait_tcp(netns: str, address: str, port: int, timeout: float = 10.0) -> None:
    """Wait until something listens on ``address:port`` as seen from ``netns``."""
    deadline = time.monotonic() + timeout
    while True:
        with socket_in(netns, socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(1.0)
            try:
                sock.connect((address, port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise MeasureError(f"nothing listens on {address}:{port}") from None
        time.sleep(0.1)


def start_iperf_server(netns: str, port: int = IPERF_PORT) -> subprocess.Popen[bytes]:
    """``iperf3 -s`` in ``netns`` (``ip netns exec`` execs it: the pid is iperf3's).

    ``-J``: a client's ``--get-server-output`` then gets the server's report as JSON.
    """
    return subprocess.Popen(
        netns_argv(netns, "iperf3", "-s", "-J", "-p", str(port)),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- iperf3 ---------------------------------------------------------------------------------


def iperf(netns: str, server: str, *extra: str, duration: float) -> dict[str, Any]:
    argv = netns_argv(
        netns, "iperf3", "-c", server, "-p", str(IPERF_PORT), "-t", str(duration), "-J", *extra
    )
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
    return json_result("iperf3", proc)


def json_result(what: str, proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The JSON object a measuring command printed; MeasureError if none, or if it says error."""
    try:
        result: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        tail = proc.stderr.strip()[-500:]
        raise MeasureError(f"{what}: exit {proc.returncode}: {tail}") from None
    if "error" in result:
        raise MeasureError(f"{what}: {result['error']}")
    return result


def tcp_throughput(netns: str, server: str, *, streams: int, duration: float) -> dict[str, Any]:
    """TCP from ``netns`` to ``server``; the first second (slow start) is omitted."""
    r = iperf(netns, server, "-P", str(streams), "-O", "1", duration=duration)
    end = r["end"]
    return {
        "gbit_s": end["sum_received"]["bits_per_second"] / 1e9,
        "sent_gbit_s": end["sum_sent"]["bits_per_second"] / 1e9,
        "retransmits": end["sum_sent"].get("retransmits"),
        "streams": streams,
        "seconds": end["sum_received"]["seconds"],
        "iperf_cpu": end.get("cpu_utilization_percent"),
    }


# 18 bytes of UDP payload + 8 UDP + 20 IPv4 + 14 Ethernet = a 60-byte frame, 64 with the FCS:
# the minimum Ethernet frame.  iperf3 needs 16 of the 18 bytes for its sequence number and
# time stamp (--udp-counters-64bit).
UDP_PAYLOAD_64B_FRAME = 18


def udp_small(netns: str, server: str, *, duration: float, rate: str = "0") -> dict[str, Any]:
    """64-byte frames as fast as iperf3 sends them (``-b 0``), or at ``rate`` bit/s payload.

    Delivered is what the server received, from its own report.  The client's
    ``lost_packets`` is the server's count of gaps in the sequence numbers it
    saw, so frames lost after the last one that arrived are not in it: a path
    that delivered nothing would show no loss at all.
    """
    r = iperf(
        netns,
        server,
        "-u",
        "-l",
        str(UDP_PAYLOAD_64B_FRAME),
        "-b",
        rate,
        "--udp-counters-64bit",
        "--get-server-output",
        duration=duration,
    )
    total = r["end"]["sum"]
    seconds = total["seconds"]
    sent = total["packets"]
    received = server_received(r)
    return {
        "offered_kpps": sent / seconds / 1e3,
        "delivered_kpps": received / seconds / 1e3,
        "loss_pct": 100.0 * (sent - received) / sent if sent else None,
        "packets_sent": sent,
        "packets_received": received,
        "seconds": seconds,
        "frame_bytes_with_fcs": 64,
        "iperf_cpu": r["end"].get("cpu_utilization_percent"),
    }


def server_received(result: dict[str, Any]) -> int:
    """Datagrams the iperf3 server received, from the report ``--get-server-output`` adds.

    The server's ``packets`` is the highest sequence number it saw and its
    ``lost_packets`` the gaps below it, so their difference is what arrived.
    """
    server = result.get("server_output_json")
    if not isinstance(server, dict) or "end" not in server:
        raise MeasureError("iperf3: no server report (--get-server-output)")
    total = server["end"]["sum"]
    return max(0, int(total["packets"]) - max(0, int(total["lost_packets"])))


# -- round trips --------------------------------------------------------------------------


def wakeup_cost_us(round_trips: int = 5000) -> dict[str, float]:
    """Median round trip of two processes ping-ponging a byte over pipes: same CPU, two CPUs.

    A machine characteristic, not pymacvtap's: on a virtual machine whose idle vCPUs halt,
    waking a process on another CPU costs tens of µs, and every crossing of the daemon
    adds a wake-up that the kernel's in-context forwarding does not need.
    """
    out: dict[str, float] = {}
    cpus = sorted(os.sched_getaffinity(0))
    placements = {"same_cpu": (cpus[0], cpus[0])}
    if len(cpus) > 1:
        placements["two_cpus"] = (cpus[0], cpus[1])
    for name, (mine, theirs) in placements.items():
        out[name] = _pipe_ping_pong(mine, theirs, round_trips)
    return out


def _pipe_ping_pong(mine: int, theirs: int, round_trips: int) -> float:
    to_child, from_parent = os.pipe()
    from_child, to_parent = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child only echoes
        try:
            os.sched_setaffinity(0, {theirs})
            while os.read(to_child, 1) == b"x":
                os.write(to_parent, b"x")
        finally:
            os._exit(0)
    saved = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {mine})
    try:
        samples = []
        clock = time.perf_counter_ns
        for _ in range(round_trips):
            t0 = clock()
            os.write(from_parent, b"x")
            os.read(from_child, 1)
            samples.append((clock() - t0) / 1e3)
    finally:
        os.sched_setaffinity(0, saved)
        os.write(from_parent, b"q")
        os.waitpid(pid, 0)
        for fd in (to_child, from_parent, from_child, to_parent):
            os.close(fd)
    return round(statistics.median(samples), 2)


@contextmanager
def on_one_cpu(pids: list[int]) -> Iterator[int]:
    """Pin this process and ``pids`` to one CPU for the duration, then restore each one's set."""
    cpu = min(os.sched_getaffinity(0))
    saved = {pid: os.sched_getaffinity(pid) for pid in [0, *pids]}
    try:
        for pid in saved:
            os.sched_setaffinity(pid, {cpu})
        yield cpu
    finally:
        for pid, cpus in saved.items():
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(pid, cpus)


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    rank = max(1, min(len(sorted_values), round(pct / 100.0 * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def summarize_rtt(samples_us: list[float], sent: int) -> dict[str, Any]:
    if not samples_us:
        raise MeasureError(f"no round trip completed of {sent}")
    s = sorted(samples_us)
    return {
        "median_us": statistics.median(s),
        "p99_us": percentile(s, 99),
        "min_us": s[0],
        "max_us": s[-1],
        "mean_us": statistics.fmean(s),
        "samples": len(s),
        "lost": sent - len(s),
    }


def udp_ping_pong(netns: str, server: str, *, count: int, warmup: int = 200) -> dict[str, Any]:
    """Back-to-back UDP round trips to the echo server (one in flight), timed per trip.

    The client socket lives in ``netns`` but runs in this process; the echo server is its
    own process, so nothing but the network (and the daemon) sits between them.
    """
    with socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(0.5)
        with in_netns(netns):
            sock.connect((server, ECHO_PORT))
        pack = struct.Struct("!Q").pack
        clock = time.perf_counter_ns
        send, recv = sock.send, sock.recv
        samples: list[float] = []
        deadline = time.monotonic() + 10.0
        while True:  # until the echo server answers
            try:
                send(pack(0))
                recv(64)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise MeasureError("the echo server does not answer") from None
        for seq in range(1, warmup + count + 1):
            msg = pack(seq)
            t0 = clock()
            send(msg)
            try:
                while recv(64) != msg:  # a late answer to an earlier, timed-out trip
                    pass
            except TimeoutError:
                continue
            if seq > warmup:
                samples.append((clock() - t0) / 1e3)
    return summarize_rtt(samples, count)


_PING_TIME = re.compile(r"icmp_seq=\d+ .*time=([\d.]+) ms")


def icmp_ping(netns: str, server: str, *, count: int, interval: float) -> dict[str, Any]:
    """``ping -i INTERVAL`` (paced, the daemon may sleep between requests), per-reply times."""
    argv = netns_argv(netns, "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", server)
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=count * interval + 30)
    samples = [float(m.group(1)) * 1e3 for m in _PING_TIME.finditer(proc.stdout)]
    result = summarize_rtt(samples, count)
    result["interval_s"] = interval
    return result


def run_guarded(fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one measurement; a failure becomes ``{"error": ...}`` instead of ending the run."""
    try:
        return fn()
    except (MeasureError, OSError, subprocess.SubprocessError, KeyError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def median_round(runs: list[dict[str, Any]], figure: str | None) -> dict[str, Any]:
    """The run whose ``figure`` is the median of the rounds, with every round's figure.

    A whole run, not a per-key median: its CPU meter and loss belong to its figure.
    """
    if figure is None or len(runs) == 1:
        return runs[0]
    scored = [r for r in runs if isinstance(r.get(figure), (int, float))]
    if not scored:
        return runs[0]
    scored.sort(key=lambda r: r[figure])
    chosen = dict(scored[(len(scored) - 1) // 2])
    chosen["rounds"] = [r.get(figure) for r in runs]
    return chosen
