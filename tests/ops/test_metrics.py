"""`pymacvtap daemon --metrics`: Prometheus metrics scraped over HTTP, checked against traffic."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lab import Lab, ip, socket_in
from lab.daemon import DaemonProcess, wait_until
from lab.fixtures import EXT_IP, SUBNET
from lab.readme import code_blocks, expand_braces, readme_section
from pymacvtap import __version__
from pymacvtap.daemon.metrics import parse_address

PORT = 9477
PINGS = 5
PING_SIZE = 200  # ICMP payload: 242-byte frames


@pytest.fixture
def metrics_daemon(lab: Lab, tmp_path: Path) -> Iterator[DaemonProcess]:
    proc = DaemonProcess(lab.host, tmp_path, extra_args=("--metrics", f"127.0.0.1:{PORT}"))
    proc.start()
    try:
        yield proc
    finally:
        proc.cleanup()
        print(proc.log())


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(netns: str, port: int = PORT) -> tuple[str, Samples]:
    """GET /metrics on the daemon's loopback (it lives in the lab's host namespace)."""
    url = f"http://127.0.0.1:{port}/metrics"
    code = (
        f"import urllib.request;print(urllib.request.urlopen({url!r},timeout=10).read().decode())"
    )
    text = subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout  # fmt: skip
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    matches = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(matches) == 1, (name, labels, matches)
    return matches[0]


def test_metrics_follow_traffic_through_two_containers(
    lab: Lab, metrics_daemon: DaemonProcess
) -> None:
    daemon = metrics_daemon
    netns = {}
    for i, name in enumerate(("c1", "c2")):
        ns = lab.add_netns(name)
        daemon.cli("link", "add", "link", "low0", "name", name, "type", "macvlan",
                   "mode", "vepa", "netns", ns, "ifname", "eth0")  # fmt: skip
        ip(ns, "addr", "add", f"{SUBNET}.{21 + i}/24", "dev", "eth0")
        ip(ns, "link", "set", "eth0", "up")
        netns[name] = ns
    daemon.cli("link", "add", "link", "low0", "name", "vm0", "type", "macvtap", "mode", "bridge")
    _, before = scrape(lab.host)
    assert value(before, "pymacvtap_endpoint_tx_packets_total", endpoint="c1") == 0
    assert value(before, "pymacvtap_endpoints") == 3

    subprocess.run(
        ["ip", "netns", "exec", netns["c1"], "ping", "-c", str(PINGS), "-i", "0.2",
         "-s", str(PING_SIZE), "-W", "1", f"{SUBNET}.22"],
        check=True, capture_output=True,
    )  # fmt: skip
    # `link show -s` first: on the fast path it collects the kernel's counts at once,
    # which the metrics otherwise see within a second.
    shown = {e["ifname"]: e for e in json.loads(daemon.cli("-j", "-s", "link", "show"))}
    text, after = scrape(lab.host)

    labels = {"endpoint": "c1", "lower": "low0", "mode": "vepa", "type": "macvlan"}
    assert value(after, "pymacvtap_endpoint_tx_packets_total", **labels) >= PINGS
    assert value(after, "pymacvtap_endpoint_tx_bytes_total", endpoint="c1") >= PINGS * 242
    assert value(after, "pymacvtap_endpoint_rx_packets_total", endpoint="c2") >= PINGS
    # Exactly what `link show -s` says (the containers are quiet now: IPv6 is off).
    for name in ("c1", "c2", "vm0"):
        for direction, counters in shown[name]["stats64"].items():
            for counter, count in counters.items():
                metric = f"pymacvtap_endpoint_{direction}_{counter}_total"
                assert value(after, metric, endpoint=name) == count, (name, metric)
    lower = shown["c1"]["lower_stats"]
    for counter in ("rx_packets", "rx_not_ours", "tx_packets", "tx_bytes", "bcqueue_dropped"):
        metric = f"pymacvtap_lower_{counter}_total"
        assert value(after, metric, lower="low0") == lower[counter], metric
    # VEPA: both directions crossed the wire (out to the hairpin switch and back).
    assert value(after, "pymacvtap_lower_tx_packets_total", lower="low0") >= 2 * PINGS
    assert value(after, "pymacvtap_lower_rx_packets_total", lower="low0") >= 2 * PINGS
    assert value(after, "pymacvtap_endpoint_up", endpoint="c1") == 1
    assert value(after, "pymacvtap_endpoint_rx_queue_length", endpoint="c2") == 0
    assert value(after, "pymacvtap_lower_bc_queue_length", lower="low0") == 0
    assert value(after, "pymacvtap_lower_tx_queue_length", lower="low0") == 0
    assert value(after, "pymacvtap_lower_carrier", lower="low0") == 1
    assert value(after, "pymacvtap_lower_endpoints", lower="low0") == 3
    assert value(after, "pymacvtap_build_info", version=__version__) == 1
    assert "# TYPE pymacvtap_endpoint_rx_bytes_total counter" in text

    # Drops by reason: c1 down, its frames are dropped and counted as endpoint_down.
    daemon.cli("link", "set", "c2", "mode", "private")
    daemon.cli("link", "del", "vm0")
    ip(netns["c1"], "link", "set", "eth0", "down")
    _, later = scrape(lab.host)
    assert value(later, "pymacvtap_endpoint_up", endpoint="c1") == 0
    assert value(later, "pymacvtap_endpoints") == 2
    assert value(later, "pymacvtap_endpoint_rx_packets_total", endpoint="c2", mode="private") > 0
    assert not [k for k in later if ("endpoint", "vm0") in k[1]]


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:9101") == ("127.0.0.1", 9101)
    assert parse_address("[::1]:80") == ("::1", 80)
    for bad in ("9101", ":9101", "host:", "host:port", "h:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)


def test_metrics_are_served_only_where_asked(lab: Lab, metrics_daemon: DaemonProcess) -> None:
    # The port is served only in the daemon's namespace, on the address asked for.
    out = subprocess.run(
        ["ip", "netns", "exec", lab.ext, sys.executable, "-c",
         f"import urllib.request;urllib.request.urlopen('http://{EXT_IP}:{PORT}/metrics',timeout=2)"],
        capture_output=True, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=2)


def _cap_eff(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no CapEff in {path}")


def test_a_port_below_1024_and_no_thread_keeps_more_capabilities(lab: Lab, tmp_path: Path) -> None:
    """The port is bound before the capabilities go; the HTTP thread starts after."""
    proc = DaemonProcess(lab.host, tmp_path, extra_args=("--metrics", "127.0.0.1:981"))
    proc.start()
    try:
        _, samples = scrape(lab.host, 981)
        assert value(samples, "pymacvtap_endpoints") == 0
        tasks = sorted(Path(f"/proc/{proc.pid}/task").iterdir())
        assert len(tasks) >= 2  # the loop's thread and the HTTP server's
        main = _cap_eff(Path(f"/proc/{proc.pid}/status"))
        assert all(_cap_eff(task / "status") == main for task in tasks)
        net_bind_service = 1 << 10
        assert not main & net_bind_service
    finally:
        proc.cleanup()


def test_the_readme_example_and_table(lab: Lab, metrics_daemon: DaemonProcess) -> None:
    """The Metrics section: its example's address and output line, and every metric of
    its table served with no label beyond the ones the table lists."""
    [block] = code_blocks("Metrics", "sh")
    assert f"pymacvtap daemon --metrics 127.0.0.1:{PORT} &" in block
    m = re.search(r"grep '\^(\w+)'\n# (\S+) (\S+)\n", block)
    assert m, block
    name, shown_series, shown_value = m.groups()
    ns = lab.add_netns("c1")
    metrics_daemon.cli("link", "add", "link", "low0", "name", "c1", "type", "macvlan",
                       "mode", "vepa", "netns", ns, "ifname", "eth0")  # fmt: skip
    ip(ns, "addr", "add", f"{SUBNET}.21/24", "dev", "eth0")
    ip(ns, "link", "set", "eth0", "up")
    subprocess.run(
        ["ip", "netns", "exec", ns, "ping", "-c", str(PINGS), "-i", "0.2", "-W", "1", EXT_IP],
        check=True, capture_output=True,
    )  # fmt: skip

    def sample() -> tuple[str, str]:
        [line] = [ln for ln in scrape(lab.host)[0].splitlines() if ln.startswith(name)]
        series, count = line.split(" ")
        return series, count

    # On the fast path the kernel's counts reach the metrics within a second (README).
    assert wait_until(lambda: float(sample()[1]) >= PINGS, timeout=3.0), sample()
    series, count = sample()
    _, samples = scrape(lab.host)
    assert series == shown_series
    assert float(shown_value) == PINGS <= float(count)

    table = [row.split(" | ") for row in readme_section("Metrics").splitlines()
             if row.startswith("| `pymacvtap_")]  # fmt: skip
    assert len(table) == 8, table
    endpoint_labels = {"endpoint", "lower", "mode", "type"}
    for names_cell, labels_cell, _meaning in table:
        listed = {label.strip() for label in labels_cell.split(",") if label.strip()}
        if "…" in listed:
            listed = (listed - {"…"}) | endpoint_labels
        for pattern in re.findall(r"`(\w[^`]*)`", names_cell):
            for metric in expand_braces(pattern):
                served = [ls for (n, ls) in samples if n == metric]
                if metric.endswith("drops_total") and not served:
                    continue  # nothing dropped yet: no series, checked below
                assert served, f"README lists {metric}, the daemon does not serve it"
                for labels in served:
                    assert {k for k, _ in labels} <= listed, (metric, labels)
    # A drop, for the drops-by-reason series: a frame with a forged source, spoofchk on.
    metrics_daemon.cli("link", "set", "c1", "spoofchk", "on")
    with socket_in(ns, socket.AF_PACKET, socket.SOCK_RAW) as raw:
        raw.bind(("eth0", 0))
        raw.send(b"\xff" * 6 + bytes.fromhex("02000000beef0800") + bytes(46))

    def drops() -> list[frozenset[tuple[str, str]]]:
        # Every drop series: the container's first IPv6 multicast (MLD, DAD), sent as
        # eth0 comes up, must not be an endpoint_down drop (the daemon catches up first).
        return [ls for (n, ls) in scrape(lab.host)[1] if n == "pymacvtap_endpoint_drops_total"]

    assert wait_until(lambda: any(("reason", "spoofed") in ls for ls in drops()))
    _, later = scrape(lab.host)
    spoofed = drops()
    assert spoofed == [frozenset({*series_labels(shown_series), ("reason", "spoofed")})]
    assert {k for k, _ in spoofed[0]} == endpoint_labels | {"reason"}
    assert value(later, "pymacvtap_endpoint_drops_total", reason="spoofed") == 1


def series_labels(series: str) -> set[tuple[str, str]]:
    """``name{a="1",b="2"}`` -> ``{("a", "1"), ("b", "2")}``."""
    return set(re.findall(r'(\w+)="([^"]*)"', series))
