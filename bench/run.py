"""``python -m bench.run [--quick] [--json PATH] [--profile]``: the benchmark of SPEC 7.

One lab, two setups side by side (kernel macvlan VEPA and pymacvtap VEPA, both reflected by
a hairpin bridge port; see :mod:`bench.setups`), the same measurements on each, test by
test, then the daemon's scale.  Prints one table and writes every raw number as JSON.

``capture`` measures 64-byte UDP with and without ``pymacvtap capture`` on c2, then counts
the calls to ``SoftwarePath._captured`` in a short cProfile run of a daemon nobody captures on.

``vm`` boots a QEMU guest (TCG) on each setup's lower — a kernel macvtap, a pymacvtap
macvtap endpoint with frontend tap, one with frontend vhost-user — and measures ping and TCP
from it to that setup's c2 (:mod:`bench.vm`).

``--profile`` instead runs a pymacvtap daemon under cProfile for a TCP 1-stream and a
64-byte UDP run (one daemon each) and prints the top functions by own time.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lab import Lab

from .measure import (
    ECHO_PORT,
    IPERF_PORT,
    cpu_seconds,
    icmp_ping,
    median_round,
    metered,
    netns_argv,
    on_one_cpu,
    run_guarded,
    start_iperf_server,
    stop,
    tcp_throughput,
    udp_ping_pong,
    udp_small,
    wait_tcp,
    wakeup_cost_us,
)
from .peers import PEERS, PeerError, PeerSetup
from .report import build_rows, render, render_compare
from .scale import measure_scale
from .setups import EXT_ADDRESS, BenchDaemon, Setup, new_lab
from .vm import measure_vms

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
KINDS = ("kernel", "pymacvtap", "fastpath", *PEERS)
# What the fast path and the user-space peers are measured on (the rest needs the
# Python daemon, or ext, which the peers' switches do not reach).
COMPARED_TESTS = {
    "fastpath": ("tcp1", "tcp4", "tcp_ext", "udp64", "rtt_udp", "rtt_icmp"),
    **{peer: ("tcp1", "tcp4", "udp64", "rtt_udp", "rtt_icmp") for peer in PEERS},
}
SINK_PORT = 7009
BLAST_PPS = 20_000  # 1472-byte datagrams to the stalled container: ~236 Mbit/s
BLAST_BYTES = 1472


TEST_NAMES = (
    "tcp1", "tcp4", "tcp_ext", "udp64", "rtt_udp", "rtt_udp_1cpu", "rtt_icmp", "stalled", "capture",
    "vm",
)  # fmt: skip
DAEMON_ONLY = ("capture",)  # tests that make sense for pymacvtap only
# Throughput tests run in rounds, every setup once per round, and report the round
# with the median of this figure: one 3 s run swings by ±10 % on this 2-CPU VM (the
# scheduler's placement of sender and receiver), more than the differences measured.
ROUND_FIGURE = {"tcp1": "gbit_s", "tcp4": "gbit_s", "tcp_ext": "gbit_s", "udp64": "delivered_kpps"}


@dataclass(frozen=True)
class Config:
    duration: float  # seconds per iperf3 run
    rtt_count: int  # UDP ping-pong round trips
    ping_count: int  # ICMP echo requests, 2 ms apart
    scale_endpoints: int
    idle_seconds: float
    vm_ping_count: int  # ICMP echo requests from each VM, 10 ms apart
    settle: float = 1.0  # pause between measurements (queues drain)
    rounds: int = 3  # of each ROUND_FIGURE test, every setup in turn

    @classmethod
    def make(cls, quick: bool) -> Config:
        if quick:
            return cls(
                duration=3,
                rtt_count=2000,
                ping_count=300,
                scale_endpoints=100,
                idle_seconds=3,
                vm_ping_count=200,
            )
        return cls(
            duration=10,
            rtt_count=5000,
            ping_count=1000,
            scale_endpoints=1000,
            idle_seconds=5,
            vm_ping_count=500,
        )


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the run's context ------------------------------------------------------------------------


def _out(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT).stdout.strip()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "iperf3": _out("iperf3", "--version").splitlines()[0] if shutil.which("iperf3") else None,
        "loadavg_at_start": os.getloadavg(),
        # What one cross-CPU wake-up costs here bounds the added round trip (bench/README.md).
        "pipe_round_trip_us": wakeup_cost_us(),
    }


def git() -> dict[str, Any]:
    status = _out("git", "status", "--porcelain")
    return {
        "commit": _out("git", "rev-parse", "HEAD"),
        "dirty_files": len(status.splitlines()) if status else 0,
    }


# -- running the measurements -----------------------------------------------------------------


def measured(pid: int | None, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``fn()`` with the daemon's CPU and the machine's load during it; errors recorded."""

    def go() -> dict[str, Any]:
        with metered(pid) as meter:
            result = fn()
        result["meter"] = meter.as_dict()
        return result

    return run_guarded(go)


class Servers:
    """iperf3 and echo servers in each setup's c2 and one iperf3 in ext, stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.echo: dict[str, subprocess.Popen[bytes]] = {}  # by setup kind

    def python(self, netns: str, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            netns_argv(netns, sys.executable, "-m", "bench.traffic", *args),
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(proc)
        return proc

    def iperf(self, netns: str, address: str) -> None:
        self.procs.append(start_iperf_server(netns))
        wait_tcp(netns, address, IPERF_PORT)

    def close(self) -> None:
        for proc in self.procs:
            with_cont(proc)
            stop(proc)
        self.procs.clear()


def with_cont(proc: subprocess.Popen[bytes]) -> None:
    """Resume a possibly stopped process, so that SIGTERM can end it."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGCONT)


def warm_up(setup: Setup, lab_ext: str) -> None:
    """Resolve every neighbour once so that no measurement pays for ARP."""
    c = setup.containers
    for src, dst in (("c1", "c2"), ("c1", "c3")):
        subprocess.run(
            netns_argv(c[src].netns, "ping", "-c", "2", "-i", "0.1", "-W", "1", c[dst].address),
            capture_output=True,
        )
    subprocess.run(
        netns_argv(c["c1"].netns, "ping", "-c", "2", "-i", "0.1", "-W", "1", EXT_ADDRESS),
        capture_output=True,
    )
    subprocess.run(
        netns_argv(lab_ext, "ping", "-c", "2", "-i", "0.1", "-W", "1", c["c3"].address),
        capture_output=True,
    )


def stalled_consumer(setup: Setup, servers: Servers, ext: str, duration: float) -> dict[str, Any]:
    """TCP c1→c2 while ext sends UDP to c3, whose receiving process is SIGSTOPped.

    For a tap netdev the daemon hands frames to c3's stack, which drops them when the
    stopped process's socket buffer is full: the row shows what that traffic costs the
    other endpoints.
    """
    c1, c2, c3 = (setup.containers[r] for r in ("c1", "c2", "c3"))
    sink = servers.python(c3.netns, "sink", str(SINK_PORT))
    time.sleep(0.3)
    os.kill(sink.pid, signal.SIGSTOP)
    blaster = servers.python(
        ext,
        "blast",
        c3.address,
        str(SINK_PORT),
        str(BLAST_PPS),
        str(duration + 3),
        str(BLAST_BYTES),
    )
    try:
        time.sleep(0.5)
        result = tcp_throughput(c1.netns, c2.address, streams=1, duration=duration)
    finally:
        stop(blaster)
        with_cont(sink)
        stop(sink)
    result["blast"] = {"to": "c3", "pps": BLAST_PPS, "udp_payload_bytes": BLAST_BYTES}
    return result


def capture_cost(setup: Setup, duration: float, settle: float) -> dict[str, Any]:
    """64-byte UDP c1→c2 with nobody capturing, then with ``capture c2 -w /dev/null`` running.

    Each phase is metered on its own; ``capture_client_cpu_pct_of_core`` is the CLI's.
    """
    assert setup.daemon is not None
    c1, c2 = setup.containers["c1"], setup.containers["c2"]
    pid = setup.daemon.pid

    def udp() -> dict[str, Any]:
        return udp_small(c1.netns, c2.address, duration=duration)

    out = {"off": measured(pid, udp)}
    time.sleep(settle)
    argv = [sys.executable, "-m", "pymacvtap", "--socket", str(setup.daemon.socket)]
    capture = subprocess.Popen(
        [*argv, "capture", f"p{c2.role}", "-w", "/dev/null"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert capture.stderr is not None
        first = capture.stderr.readline()  # "capturing on …": subscribed (or an error)
        cpu0 = cpu_seconds(capture.pid) if capture.poll() is None else 0.0
        out["on"] = on = measured(pid, udp)
        if capture.poll() is None and "meter" in on:
            cpu = cpu_seconds(capture.pid) - cpu0
            on["capture_client_cpu_pct_of_core"] = round(100.0 * cpu / on["meter"]["wall_s"], 1)
    finally:
        ran_through = capture.poll() is None
        stop(capture)
    if not ran_through:
        assert capture.stderr is not None
        said = (first + capture.stderr.read()).decode().strip()
        out["on"] = {"error": f"capture exited early: {said}"}
    return out


def tests_for(cfg: Config, ext: str, servers: Servers) -> dict[str, Callable[[Setup], Any]]:
    d = cfg.duration

    def c(setup: Setup, role: str) -> Any:
        return setup.containers[role]

    return {
        "tcp1": lambda s: tcp_throughput(
            c(s, "c1").netns, c(s, "c2").address, streams=1, duration=d
        ),
        "tcp4": lambda s: tcp_throughput(
            c(s, "c1").netns, c(s, "c2").address, streams=4, duration=d
        ),
        "tcp_ext": lambda s: tcp_throughput(c(s, "c1").netns, EXT_ADDRESS, streams=1, duration=d),
        "udp64": lambda s: udp_small(c(s, "c1").netns, c(s, "c2").address, duration=d),
        "rtt_udp": lambda s: udp_ping_pong(
            c(s, "c1").netns, c(s, "c2").address, count=cfg.rtt_count
        ),
        "rtt_udp_1cpu": lambda s: rtt_on_one_cpu(s, servers, cfg.rtt_count),
        "rtt_icmp": lambda s: icmp_ping(
            c(s, "c1").netns, c(s, "c2").address, count=cfg.ping_count, interval=0.002
        ),
        "stalled": lambda s: stalled_consumer(s, servers, ext, d),
        "capture": lambda s: capture_cost(s, d, cfg.settle),
    }


def rtt_on_one_cpu(setup: Setup, servers: Servers, count: int) -> dict[str, Any]:
    """The UDP ping-pong with client, echo server and daemon pinned to one CPU.

    Both setups are measured so; it takes the cross-CPU wake-ups out of the round trip
    (the scheduler's placement, not the data path), leaving what each crossing costs.
    """
    pids = [servers.echo[setup.kind].pid]
    if setup.daemon_pid is not None:
        pids.append(setup.daemon_pid)
    c = setup.containers
    with on_one_cpu(pids) as cpu:
        result = udp_ping_pong(c["c1"].netns, c["c2"].address, count=count)
    result["cpu"] = cpu
    return result


def start_servers(setup: Setup, servers: Servers) -> None:
    c2 = setup.containers["c2"]
    servers.iperf(c2.netns, c2.address)
    servers.echo[setup.kind] = servers.python(c2.netns, "echo", str(ECHO_PORT))


def run_bench(cfg: Config, workdir: Path, only: set[str] | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {"tests": {}}
    with new_lab() as lab:
        daemon = BenchDaemon(lab.host, workdir / "daemon", datapath="python")
        fast = BenchDaemon(lab.host, workdir / "fastpath", datapath="ebpf")
        servers = Servers()
        peers: list[PeerSetup] = []
        daemon.start()
        try:
            setups: dict[str, Setup] = {
                "kernel": Setup("kernel", lab),
                "pymacvtap": Setup("pymacvtap", lab, daemon),
            }
            results["unavailable"] = {}
            try:
                fast.start()
                setups["fastpath"] = Setup("fastpath", lab, fast)
            except RuntimeError as exc:
                results["unavailable"]["fastpath"] = str(exc).splitlines()[-1]
            for kind, cls in PEERS.items():
                peer_dir = workdir / kind
                peer_dir.mkdir(parents=True, exist_ok=True)
                peer = cls(kind, lab, workdir=peer_dir)
                peers.append(peer)
                try:
                    peer.start()
                    setups[kind] = peer
                except (PeerError, OSError, subprocess.SubprocessError) as exc:
                    results["unavailable"][kind] = str(exc)
                    progress(f"{kind}: cannot start: {exc}")
            progress("setting up: 3 containers per setup, servers, warm-up")
            servers.iperf(lab.ext, EXT_ADDRESS)
            for kind, setup in list(setups.items()):
                try:
                    for role in ("c1", "c2", "c3"):
                        setup.add_container(role)
                except PeerError as exc:
                    results["unavailable"][kind] = str(exc)
                    del setups[kind]
                    continue
                start_servers(setup, servers)
                warm_up(setup, lab.ext)
            results["daemon_rss_kib_start"] = _rss(daemon.pid)
            for name, fn in tests_for(cfg, lab.ext, servers).items():
                if only is not None and name not in only:
                    continue
                kinds = [
                    kind
                    for kind in KINDS
                    if kind in setups
                    and not (kind == "kernel" and name in DAEMON_ONLY)
                    and not (kind in COMPARED_TESTS and name not in COMPARED_TESTS[kind])
                ]
                rounds = cfg.rounds if name in ROUND_FIGURE else 1
                runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
                for round_no in range(rounds):
                    for kind in kinds:
                        setup = setups[kind]
                        label = f" {round_no + 1}/{rounds}" if rounds > 1 else ""
                        progress(f"{name:8} {kind:9}{label} ...")
                        r = measured(setup.daemon_pid, lambda fn=fn, s=setup: fn(s))
                        runs[kind].append(r)
                        progress(f"{'':8} {'':9} {_brief(r)}")
                        time.sleep(cfg.settle)
                results["tests"][name] = {
                    kind: median_round(runs[kind], ROUND_FIGURE.get(name)) for kind in kinds
                }
            if only is None or "vm" in only:
                results["tests"]["vm"] = measure_vms(
                    lab,
                    setups,
                    workdir / "vm",
                    ping_count=cfg.vm_ping_count,
                    stream_seconds=cfg.duration,
                    progress=progress,
                    settle=cfg.settle,
                    rounds=cfg.rounds,
                )
            results["daemon_stats_after"] = _daemon_stats(daemon)
            setups["pymacvtap"].remove_containers()
            if "fastpath" in setups:
                results["fastpath_stats_after"] = _daemon_stats(fast)
                setups["fastpath"].remove_containers()
        finally:
            servers.close()
            for peer in peers:
                peer.close()
            fast.cleanup()
            daemon.cleanup()
            results["daemon_log_tail"] = daemon.log()[-2000:]
        if only is None or "capture" in only:
            progress("capture: udp64 against a fresh daemon under cProfile, nobody capturing")
            try:
                results["capture_profile"] = capture_profile(cfg, lab, workdir / "capture-profile")
            except Exception as exc:
                results["capture_profile"] = {"error": f"{type(exc).__name__}: {exc}"}
            progress(f"{'':8} {'':9} {results['capture_profile']}")
        if only is not None and "scale" not in only:
            return results
        progress(f"scale: a fresh daemon, {cfg.scale_endpoints} endpoints")
        scaler = BenchDaemon(lab.host, workdir / "scale")
        scaler.start()
        try:
            results["scale"] = measure_scale(
                scaler,
                setups["pymacvtap"].lower,
                cfg.scale_endpoints,
                idle_seconds=cfg.idle_seconds,
                progress=progress,
            )
        except Exception as exc:
            results["scale"] = {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            scaler.cleanup()
    return results


def _rss(pid: int) -> dict[str, int]:
    from .measure import memory_kib

    return memory_kib(pid)


def _daemon_stats(daemon: BenchDaemon) -> Any:
    try:
        return daemon.show(stats=True)
    except Exception as exc:
        return {"error": str(exc)}


def _brief(r: dict[str, Any]) -> str:
    if "off" in r and "on" in r:
        return f"off: {_brief(r['off'])}; on: {_brief(r['on'])}"
    if "error" in r:
        return r["error"]
    parts = []
    for key in ("gbit_s", "delivered_kpps", "loss_pct", "median_us", "p99_us"):
        if key in r and isinstance(r[key], float):
            parts.append(f"{key}={r[key]:.2f}")
    cpu = r.get("meter", {}).get("daemon_cpu_pct_of_core")
    if cpu is not None:
        parts.append(f"daemon_cpu={cpu:.0f}%")
        parts.append(f"runq_wait={r['meter']['daemon_runq_wait_pct']:.0f}%")
    parts.append(f"machine_busy={r.get('meter', {}).get('machine_busy_pct', 0):.0f}%")
    return " ".join(parts)


# -- profiling ----------------------------------------------------------------------------


def profiled(
    cfg: Config, lab: Lab, workdir: Path, name: str, prof: Path
) -> tuple[dict[str, Any], BenchDaemon]:
    """Test ``name`` against a fresh pymacvtap daemon under cProfile, which writes ``prof``."""
    prof.unlink(missing_ok=True)
    daemon = BenchDaemon(lab.host, workdir, profile=prof)
    servers = Servers()
    daemon.start()
    setup = Setup("pymacvtap", lab, daemon)
    try:
        for role in ("c1", "c2", "c3"):
            setup.add_container(role)
        start_servers(setup, servers)
        warm_up(setup, lab.ext)
        progress(f"profile: {name} under cProfile ...")
        fn = tests_for(cfg, lab.ext, servers)[name]
        result = measured(daemon.pid, lambda: fn(setup))
        progress(f"         {_brief(result)}")
    finally:
        servers.close()
        setup.remove_containers()
        daemon.cleanup()
    return result, daemon


def run_profile(cfg: Config, workdir: Path, top: int = 25) -> dict[str, Any]:
    out: dict[str, Any] = {"profiles": {}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with new_lab() as lab:
        for name in ("tcp1", "udp64"):
            prof = RESULTS / f"profile-{name}.prof"
            result, daemon = profiled(cfg, lab, workdir / f"profile-{name}", name, prof)
            text = io.StringIO()
            if prof.exists():
                stats = pstats.Stats(str(prof), stream=text)
                stats.sort_stats("tottime").print_stats(top)
            else:
                text.write(f"no profile written; daemon log:\n{daemon.log()}")
            (RESULTS / f"profile-{name}.txt").write_text(text.getvalue())
            print(f"\n=== daemon profile, pymacvtap {name} (under cProfile: {_brief(result)}) ===")
            print(text.getvalue())
            out["profiles"][name] = {
                "result": result,
                "profile": str(prof),
                "top_by_tottime": text.getvalue(),
            }
    return out


def capture_profile(cfg: Config, lab: Lab, workdir: Path) -> dict[str, Any]:
    """Calls to ``SoftwarePath._captured`` while udp64 runs with nobody capturing (must be 0).

    ``batches`` counts the data path's reader calls (the daemon's ``on_readable``
    closures), to show that the profile saw the traffic.
    """
    prof = workdir / "udp64.prof"
    short = dataclasses.replace(cfg, duration=min(cfg.duration, 3))
    result, daemon = profiled(short, lab, workdir, "udp64", prof)
    if not prof.exists():
        return {"error": f"no profile written; daemon log tail: {daemon.log()[-500:]}"}
    calls = {"_captured": 0, "on_readable": 0}
    stats = pstats.Stats(str(prof)).stats  # type: ignore[attr-defined]
    for (filename, _line, function), (_cc, ncalls, *_) in stats.items():
        if filename.endswith("pymacvtap/daemon/datapath.py") and function in calls:
            calls[function] += ncalls
    return {
        "captured_calls": calls["_captured"],
        "batches": calls["on_readable"],
        "delivered_kpps": result.get("delivered_kpps"),
    }


# -- main ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs, scale to 100 (≈5 min)")
    parser.add_argument(
        "--json",
        type=Path,
        help="where to write the results "
        "(default bench/results/latest.json, or profile.json with --profile)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="profile the daemon (cProfile) under TCP and 64-byte UDP load",
    )
    parser.add_argument(
        "--only",
        metavar="NAMES",
        help=f"comma-separated subset of: {', '.join(TEST_NAMES)}, scale",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        metavar="N",
        help=f"rounds of {', '.join(ROUND_FIGURE)} (each setup once per round, the median "
        f"reported; default {Config.rounds})",
    )
    args = parser.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds: at least 1")
    only = set(args.only.split(",")) if args.only else None
    if only is not None and not only <= {*TEST_NAMES, "scale"}:
        parser.error(f"--only: unknown {', '.join(sorted(only - {*TEST_NAMES, 'scale'}))}")
    if os.geteuid() != 0:
        print("bench: needs root (network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("iperf3") is None:
        print("bench: iperf3 is not installed (apt-get install iperf3)", file=sys.stderr)
        return 2
    cfg = Config.make(args.quick)
    if args.rounds is not None:
        cfg = dataclasses.replace(cfg, rounds=args.rounds)
    started = time.monotonic()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "git": git(),
        "mode": "profile" if args.profile else ("quick" if args.quick else "full"),
        "only": sorted(only) if only else None,
        "config": asdict(cfg),
    }
    load = os.getloadavg()[0]
    if load > 0.5:
        progress(f"warning: load average {load:.2f}: other work on this machine skews the numbers")
    workdir = Path(tempfile.mkdtemp(prefix="pymacvtap-bench-"))
    try:
        if args.profile:
            results.update(run_profile(cfg, workdir))
        else:
            results.update(run_bench(cfg, workdir, only))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["machine"]["loadavg_at_end"] = os.getloadavg()
    default = "profile.json" if args.profile else "latest.json"
    path = args.json or RESULTS / default
    path.parent.mkdir(parents=True, exist_ok=True)
    if not args.profile:
        rows = build_rows(results)
        results["table"] = [asdict(r) for r in rows]
        m = results["machine"]
        print(
            f"\npymacvtap vs kernel macvlan (VEPA, hairpin bridge) — {results['mode']} run, "
            f"{m['nproc']} CPUs, kernel {m['kernel']}, Python {m['python']}, "
            f"commit {results['git']['commit'][:12]}"
        )
        print(render(rows))
        print("\nEvery data path and the user-space peers, same run (ratios: ÷ kernel macvlan)")
        print(render_compare(results))
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nresults: {path} ({results['elapsed_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
