"""The results table: metric | kernel macvlan | pymacvtap | ratio | target | met?"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

RSS_BASE_KIB = 60 * 1024  # SPEC 7: RSS ≤ 60 MB + 50 KB per endpoint (read as MiB, KiB)
RSS_PER_ENDPOINT_KIB = 50
TCP1_MIN_RATIO = 0.9
UDP64_MIN_RATIO = 0.5
ADDED_RTT_MAX_US = 30.0


@dataclass
class Row:
    metric: str
    kernel: str = ""
    pymacvtap: str = ""
    ratio: str = ""
    target: str = ""
    met: str = ""


def _get(d: dict[str, Any] | None, *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(test: dict[str, Any] | None, key: str, digits: int) -> str:
    if test is None:
        return "—"
    if "error" in test:
        return "error"
    return _fmt(_get(test, key), digits)


def _ratio(k: Any, p: Any) -> float | None:
    if isinstance(k, int | float) and isinstance(p, int | float) and k:
        return float(p) / float(k)
    return None


def _yes(ok: bool | None) -> str:
    return "—" if ok is None else ("yes" if ok else "NO")


def build_rows(results: dict[str, Any]) -> list[Row]:
    tests: dict[str, dict[str, Any]] = results.get("tests", {})
    rows: list[Row] = []

    def pair(name: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        t = tests.get(name)
        if t is None:
            return None, None
        return t.get("kernel"), t.get("pymacvtap")

    def value_row(
        test: str,
        label: str,
        key: str,
        digits: int = 2,
        *,
        min_ratio: float | None = None,
        ratio: bool = True,
    ) -> None:
        k, p = pair(test)
        if k is None and p is None:
            return
        r = _ratio(_get(k, key), _get(p, key)) if ratio else None
        row = Row(label, _cell(k, key, digits), _cell(p, key, digits), _fmt(r) + "×" if r else "")
        if min_ratio is not None:
            row.target = f"≥ {min_ratio}× kernel"
            row.met = _yes(None if r is None else r >= min_ratio)
        rows.append(row)

    def cpu_row(test: str) -> None:
        _, p = pair(test)
        if p is None:
            return
        cpu = _fmt(_get(p, "meter", "daemon_cpu_pct_of_core"), 0)
        wait = _fmt(_get(p, "meter", "daemon_runq_wait_pct"), 0)
        rows.append(Row("  daemon CPU / waiting for a CPU, % of wall time", "", f"{cpu} / {wait}"))

    def rtt_rows(test: str, label: str) -> None:
        k, p = pair(test)
        if k is None and p is None:
            return
        for stat in ("median", "p99"):
            key = f"{stat}_us"
            r = _ratio(_get(k, key), _get(p, key))
            rows.append(
                Row(
                    f"{label} {stat} (µs)",
                    _cell(k, key, 1),
                    _cell(p, key, 1),
                    _fmt(r, 1) + "×" if r else "",
                )
            )
        added = None
        if isinstance(_get(k, "median_us"), float) and isinstance(_get(p, "median_us"), float):
            added = p["median_us"] - k["median_us"]
        rows.append(
            Row(
                f"{label}: added by pymacvtap, median (µs)",
                "",
                _fmt(added, 1),
                "",
                f"≤ {ADDED_RTT_MAX_US:.0f} µs",
                _yes(None if added is None else added <= ADDED_RTT_MAX_US),
            )
        )

    specs: list[tuple[str, Callable[[], None]]] = [
        (
            "tcp1",
            lambda: value_row(
                "tcp1", "TCP c1→c2 hairpin, 1 stream (Gbit/s)", "gbit_s", min_ratio=TCP1_MIN_RATIO
            ),
        ),
        ("tcp4", lambda: value_row("tcp4", "TCP c1→c2 hairpin, 4 streams (Gbit/s)", "gbit_s")),
        ("tcp_ext", lambda: value_row("tcp_ext", "TCP c1→ext, 1 stream (Gbit/s)", "gbit_s")),
        (
            "stalled",
            lambda: value_row(
                "stalled",
                "TCP c1→c2, 1 stream, c3's reader SIGSTOPped + UDP to c3 (Gbit/s)",
                "gbit_s",
            ),
        ),
        (
            "udp64",
            lambda: value_row(
                "udp64",
                "64-byte UDP c1→c2 delivered (kpps)",
                "delivered_kpps",
                1,
                min_ratio=UDP64_MIN_RATIO,
            ),
        ),
    ]

    def capture_rows() -> None:
        _, p = pair("capture")
        if p is None:
            return
        off, on = (p, p) if "error" in p else (p.get("off"), p.get("on"))
        key = "delivered_kpps"
        plain = _ratio(_get(pair("udp64")[1], key), _get(off, key))
        per = _ratio(_get(off, key), _get(on, key))
        rows.append(
            Row(
                "64-byte UDP c1→c2, nobody capturing (kpps; ratio: ÷ udp64 row)",
                "",
                _cell(off, key, 1),
                _fmt(plain) + "×" if plain else "",
            )
        )
        rows.append(
            Row(
                "  `pymacvtap capture pc2 -w /dev/null` running (kpps; ratio: ÷ nobody capturing)",
                "",
                _cell(on, key, 1),
                _fmt(per) + "×" if per else "",
            )
        )
        for phase, label in ((off, "nobody capturing"), (on, "capturing")):
            cpu = _fmt(_get(phase, "meter", "daemon_cpu_pct_of_core"), 0)
            wait = _fmt(_get(phase, "meter", "daemon_runq_wait_pct"), 0)
            text = f"  daemon CPU / waiting for a CPU, {label}, % of wall time"
            rows.append(Row(text, "", f"{cpu} / {wait}"))
        client = _fmt(_get(on, "capture_client_cpu_pct_of_core"), 0)
        rows.append(Row("  capture client CPU (% of a core)", "", client))
        prof = results.get("capture_profile")
        if prof is None:
            return
        calls = _get(prof, "captured_calls")
        batches = _fmt(_get(prof, "batches"))
        rows.append(
            Row(
                f"  _captured calls, nobody capturing (cProfile, udp64, {batches} batches)",
                "",
                "error" if "error" in prof else _fmt(calls),
                "",
                "= 0",
                _yes(None if calls is None else calls == 0),
            )
        )

    for name, add in specs:
        add()
        if name == "udp64" and name in tests:
            value_row("udp64", "  offered by iperf3 -b 0 (kpps)", "offered_kpps", 1, ratio=False)
            value_row("udp64", "  loss (%)", "loss_pct", 1, ratio=False)
        cpu_row(name)
    capture_rows()
    rtt_rows("rtt_udp", "RTT c1↔c2 UDP ping-pong")
    rtt_rows("rtt_udp_1cpu", "RTT c1↔c2 UDP ping-pong, all on one CPU")
    pipe = _get(results.get("machine"), "pipe_round_trip_us")
    if isinstance(pipe, dict):
        rows.append(
            Row(
                "pipe ping-pong of two processes, same CPU / two CPUs (µs, the machine's)",
                f"{_fmt(pipe.get('same_cpu'), 1)} / {_fmt(pipe.get('two_cpus'), 1)}",
            )
        )
    rtt_rows("rtt_icmp", "RTT c1↔c2 ping -i 0.002")
    rows.extend(vm_rows(tests.get("vm")))
    rows.extend(scale_rows(results.get("scale")))
    return rows


def vm_rows(vm: dict[str, Any] | None) -> list[Row]:
    """The ``vm`` test: pymacvtap's tap and vhost-user VMs, each against the kernel macvtap VM.

    All three guests run under TCG, which makes them slow: the ratio is the comparison.
    """
    if vm is None:
        return []
    title = "VM↔c2, QEMU TCG in both columns (compare ratios); kernel column: kernel macvtap"
    if "error" in vm:
        return [Row(title, "error", "error")]
    rows = [Row(title)]
    kernel = vm.get("kernel")
    frontends = (
        ("pymacvtap", "tap"),
        ("pymacvtap_vhost_user", "vhost-user"),
        ("fastpath", "tap on the eBPF fast path"),
    )

    def ratio(k: Any, p: Any, digits: int) -> str:
        r = _ratio(k, p)
        if not r:
            return ""
        return _fmt(r, digits if r >= 0.1 else 3) + "×"  # a small ratio keeps a digit

    for variant, frontend in frontends:
        ours = vm.get(variant)
        for stat in ("median", "p99"):
            k, p = _get(kernel, "rtt", f"{stat}_us"), _get(ours, "rtt", f"{stat}_us")
            rows.append(
                Row(
                    f"  ping -i 0.01 from the VM, {frontend}: {stat} (µs)",
                    _vm_cell(kernel, ("rtt", f"{stat}_us"), 0),
                    _vm_cell(ours, ("rtt", f"{stat}_us"), 0),
                    ratio(k, p, 1),
                )
            )
    for variant, frontend in frontends:
        ours = vm.get(variant)
        key = ("stream", "mbit_s")
        rows.append(
            Row(
                f"  TCP VM→c2 (httpd in the guest, sendfile), {frontend} (Mbit/s)",
                _vm_cell(kernel, key, 1),
                _vm_cell(ours, key, 1),
                ratio(_get(kernel, *key), _get(ours, *key), 2),
            )
        )
        cpu = _fmt(_get(ours, "stream", "meter", "daemon_cpu_pct_of_core"), 0)
        wait = _fmt(_get(ours, "stream", "meter", "daemon_runq_wait_pct"), 0)
        rows.append(
            Row("    daemon CPU / waiting for a CPU, % of wall time", "", f"{cpu} / {wait}")
        )
        qemu = ("stream", "meter", "qemu_cpu_pct_of_core")
        rows.append(
            Row(
                "    QEMU CPU, % of a core (≈ 100: the emulated guest is the limit)",
                _vm_cell(kernel, qemu, 0),
                _vm_cell(ours, qemu, 0),
            )
        )
    return rows


def _vm_cell(variant: dict[str, Any] | None, path: tuple[str, ...], digits: int) -> str:
    if variant is None:
        return "—"
    if "error" in variant:
        return "error"
    return _fmt(_get(variant, *path), digits)


def scale_rows(scale: dict[str, Any] | None) -> list[Row]:
    if not scale:
        return []
    if "error" in scale:
        return [Row("scale", pymacvtap="error")]
    rows = []
    n = scale["endpoints"]
    rss = scale["rss_kib"]
    for key in dict.fromkeys(("0", "100", str(n), "after_delete")):
        if key not in rss:
            continue
        mib = rss[key]["VmRSS"] / 1024
        row = Row(f"daemon RSS, {key.replace('_', ' ')} endpoints (MiB)", "", _fmt(mib, 1))
        if key.isdigit() and int(key) == n:
            limit = (RSS_BASE_KIB + RSS_PER_ENDPOINT_KIB * n) / 1024
            row.target = f"≤ {limit:.1f} MiB"
            row.met = _yes(mib <= limit)
        rows.append(row)
    if "0" in rss and str(n) in rss:
        per = (rss[str(n)]["VmRSS"] - rss["0"]["VmRSS"]) / n
        rows.append(Row(f"  RSS per endpoint, 0→{n} (KiB)", "", _fmt(per, 1)))
    for way, label in (("link_add_cli", "CLI process"), ("link_add_client", "one connection")):
        d = scale.get(way, {})
        for which in ("first", "last"):
            lo, hi = d.get(f"{which}_indices", (0, 0))
            med = _get(d, which, "median_ms")
            rows.append(Row(f"link add via {label}, #{lo}–#{hi}, median (ms)", "", _fmt(med, 1)))
    rows.append(
        Row("link del via one connection, mean (ms)", "", _fmt(scale.get("del_ms_per_endpoint"), 1))
    )
    rows.append(
        Row(
            f"daemon idle CPU with {n} endpoints (% of a core)",
            "",
            _fmt(scale.get("idle_cpu_pct_of_core"), 1),
        )
    )
    if "idle_cpu_up_pct_of_core" in scale:
        rows.append(
            Row(
                f"daemon idle CPU with {n} endpoints up (% of a core)",
                "",
                _fmt(scale.get("idle_cpu_up_pct_of_core"), 1),
            )
        )
    return rows


def render(rows: list[Row]) -> str:
    header = Row("metric", "kernel macvlan", "pymacvtap", "ratio", "target", "met?")
    table = [header, *rows]
    cols = ["metric", "kernel", "pymacvtap", "ratio", "target", "met"]
    widths = [max(len(getattr(r, c)) for r in table) for c in cols]
    lines = []
    for i, r in enumerate(table):
        cells = [
            getattr(r, c).ljust(w) if j == 0 else getattr(r, c).rjust(w)
            for j, (c, w) in enumerate(zip(cols, widths, strict=True))
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


COMPARE_LABELS = {
    "kernel": "kernel macvlan (vepa, hairpin)",
    "fastpath": "pymacvtap, eBPF fast path",
    "pymacvtap": "pymacvtap, Python data path",
    "vde_switch": "vde_switch (user space)",
    "ovs_userspace": "Open vSwitch, userspace datapath",
}
# (test, key, column heading, digits)
COMPARE_COLUMNS = (
    ("tcp1", "gbit_s", "TCP 1 stream (Gbit/s)", 2),
    ("tcp4", "gbit_s", "TCP 4 streams (Gbit/s)", 2),
    ("udp64", "delivered_kpps", "64-byte UDP delivered (kpps)", 1),
    ("rtt_udp", "median_us", "UDP RTT median (µs)", 1),
    ("tcp1", ("meter", "daemon_cpu_pct_of_core"), "switch CPU in TCP 1 (% core)", 0),
)


def render_compare(results: dict[str, Any]) -> str:
    """One row per setup (kernel, both data paths, the peers): value (ratio to kernel)."""
    tests: dict[str, dict[str, Any]] = results.get("tests", {})
    unavailable: dict[str, str] = results.get("unavailable", {})
    header = ["setup", *(c[2] for c in COMPARE_COLUMNS)]
    table = [header]
    for kind, label in COMPARE_LABELS.items():
        if kind in unavailable:
            table.append([label, f"not measured: {unavailable[kind]}", *[""] * (len(header) - 2)])
            continue
        row = [label]
        for test, key, _, digits in COMPARE_COLUMNS:
            keys = key if isinstance(key, tuple) else (key,)
            ours = (tests.get(test) or {}).get(kind)
            base = (tests.get(test) or {}).get("kernel")
            value = _get(ours, *keys)
            cell = _cell(ours, keys[0], digits) if len(keys) == 1 else _fmt(value, digits)
            if kind == "kernel" and len(keys) > 1:
                cell = "–"  # nothing to meter: the kernel has no process
            elif kind != "kernel" and len(keys) == 1:
                r = _ratio(_get(base, *keys), value)
                if r and key == "median_us":
                    added = value - _get(base, *keys)
                    cell += f" ({added:+.1f})"
                elif r:
                    cell += f" ({_fmt(r)}×)"
            row.append(cell)
        table.append(row)
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = []
    for i, line in enumerate(table):
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [c.ljust(w) if j == 0 else c.rjust(w) for j, (c, w) in pairs]
        lines.append("| " + " | ".join(cells) + " |")
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
