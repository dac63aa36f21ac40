"""Scale: the daemon's memory at 0, 100 and N endpoints, and the time per ``link add``.

Endpoints are tap netdevs in the daemon's own (host) namespace, left down until the idle
CPU has been measured, then brought up for a second idle measurement.  ``link add``
is timed two ways:

* the CLI, one ``python -m pymacvtap link add ...`` process per endpoint — what a user
  sees, dominated by the interpreter's start-up;
* one persistent control connection (``Client.request("link.add", ...)``), the daemon's
  own cost.

The CLI creates the first and the last ``block`` endpoints, the client the ones between,
so each way has an early and a late sample to show whether the cost stays flat.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from pymacvtap.control.client import Client

from .measure import cpu_seconds, memory_kib
from .setups import BenchDaemon


def _name(i: int) -> str:
    return f"s{i:04d}"


def _add_args(lower: str, i: int) -> dict[str, Any]:
    return {"link": lower, "name": _name(i), "type": "macvlan", "mode": "vepa"}


def _summary(times_ms: list[float]) -> dict[str, Any]:
    if not times_ms:
        return {}
    s = sorted(times_ms)
    return {
        "count": len(s),
        "median_ms": statistics.median(s),
        "mean_ms": statistics.fmean(s),
        "p90_ms": s[int(0.9 * (len(s) - 1))],
        "max_ms": s[-1],
    }


def _settled_rss(pid: int, settle: float = 1.0) -> dict[str, int]:
    time.sleep(settle)
    return memory_kib(pid)


def measure_scale(
    daemon: BenchDaemon, lower: str, total: int, *, idle_seconds: float, progress: Any
) -> dict[str, Any]:
    pid = daemon.pid
    block = min(100, total // 4)
    out: dict[str, Any] = {"endpoints": total, "block": block, "rss_kib": {}}
    out["rss_kib"]["0"] = _settled_rss(pid)
    cli_ms: list[float] = []
    client_ms: list[float] = []
    created = 0

    def cli_add(i: int) -> None:
        a = _add_args(lower, i)
        t0 = time.perf_counter()
        daemon.cli(
            "link",
            "add",
            "link",
            a["link"],
            "name",
            a["name"],
            "type",
            a["type"],
            "mode",
            a["mode"],
        )
        cli_ms.append((time.perf_counter() - t0) * 1e3)

    with Client(str(daemon.socket), timeout=120) as client:
        try:
            for i in range(total):
                if i < block or i >= total - block:
                    cli_add(i)
                else:
                    t0 = time.perf_counter()
                    client.request("link.add", _add_args(lower, i))
                    client_ms.append((time.perf_counter() - t0) * 1e3)
                created = i + 1
                if created == 100 and total > 100:
                    out["rss_kib"]["100"] = _settled_rss(pid, 0.5)
                if created % 100 == 0:
                    progress(f"  scale: {created}/{total} endpoints")
            out["rss_kib"][str(total)] = _settled_rss(pid)
            cpu0 = cpu_seconds(pid)
            time.sleep(idle_seconds)
            out["idle_cpu_pct_of_core"] = 100.0 * (cpu_seconds(pid) - cpu0) / idle_seconds
            out["idle_seconds"] = idle_seconds
            # Up, the endpoints' multicast lists are polled (the kernel announces no
            # change to them): the idle cost that scales with endpoints is this one.
            for i in range(created):
                client.request("link.set", {"name": _name(i), "changes": {"up": True}})
            time.sleep(1.0)
            cpu0 = cpu_seconds(pid)
            time.sleep(idle_seconds)
            out["idle_cpu_up_pct_of_core"] = 100.0 * (cpu_seconds(pid) - cpu0) / idle_seconds
        finally:
            t0 = time.perf_counter()
            for i in range(created):
                client.request("link.del", {"name": _name(i)})
            out["del_ms_per_endpoint"] = (time.perf_counter() - t0) * 1e3 / max(1, created)
    out["rss_kib"]["after_delete"] = _settled_rss(pid)
    n_client = len(client_ms)
    out["link_add_cli"] = {
        "first": _summary(cli_ms[:block]),
        "last": _summary(cli_ms[block:]),
        "first_indices": [1, block],
        "last_indices": [total - block + 1, total],
    }
    out["link_add_client"] = {
        "first": _summary(client_ms[:block]),
        "last": _summary(client_ms[-block:]),
        "first_indices": [block + 1, 2 * block],
        "last_indices": [block + n_client - block + 1, block + n_client],
        "all": _summary(client_ms),
    }
    return out
