"""The JSON schemas shipped in pymacvtap/schemas/ against what a real daemon prints.

Every frontend and type is created, traffic is sent so counters move, and the
real CLI's `-j link show` (with and without -s) and `-j monitor` lines are
validated.  Each schema is also shown to reject output that drifts from it.
"""

from __future__ import annotations

import copy
import json
import queue
import re
import shlex
import subprocess
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from lab import Lab, ip
from lab.daemon import DaemonProcess, wait_until
from lab.fixtures import EXT_IP, SUBNET
from lab.readme import code_blocks, expand_braces


def schema(name: str) -> jsonschema.Draft202012Validator:
    text = (resources.files("pymacvtap") / "schemas" / f"{name}.schema.json").read_text()
    doc = json.loads(text)
    jsonschema.Draft202012Validator.check_schema(doc)
    return jsonschema.Draft202012Validator(doc)


def errors(validator: jsonschema.Draft202012Validator, doc: Any) -> list[str]:
    return [e.message for e in validator.iter_errors(doc)]


def add_every_kind(lab: Lab, daemon: DaemonProcess, tmp_path: Path) -> dict[str, str]:
    """One endpoint of every type x frontend (and mode source); returns container netns."""
    c1, c2 = lab.add_netns("c1"), lab.add_netns("c2")
    for name, ns, address in (("c1", c1, f"{SUBNET}.11"), ("c2", c2, f"{SUBNET}.12")):
        daemon.cli("link", "add", "link", "low0", "name", name, "type", "macvlan",
                   "mode", "bridge", "netns", ns, "ifname", "eth0")  # fmt: skip
        ip(ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip(ns, "link", "set", "eth0", "up")
    daemon.cli("link", "add", "link", "low0", "name", "hostside", "type", "macvlan",
               "mode", "private", "spoofchk", "on")  # fmt: skip
    daemon.cli("link", "add", "link", "low0", "name", "src0", "type", "macvlan", "mode", "source")
    daemon.cli("link", "set", "src0", "macaddr", "add", "02:00:00:00:5c:01", "02:00:00:00:5c:02")
    daemon.cli("link", "add", "link", "low0", "name", "vmtap", "type", "macvtap",
               "queues", "2", "owner", "4242", "group", "4243", "bcqueuelen", "50")  # fmt: skip
    for frontend in ("stream", "dgram", "vhost-user"):
        name = "vm" + frontend.replace("-", "")
        daemon.cli("link", "add", "link", "low0", "name", name, "type", "macvtap",
                   "frontend", frontend, "path", str(tmp_path / f"{name}.sock"))  # fmt: skip
    return {"c1": c1, "c2": c2}


def test_link_show_output_matches_the_schema(
    lab: Lab, daemon: DaemonProcess, tmp_path: Path
) -> None:
    validator = schema("link-show")
    netns = add_every_kind(lab, daemon, tmp_path)
    ping = ["ip", "netns", "exec", netns["c1"], "ping", "-c", "3", "-i", "0.2", "-W", "1"]
    subprocess.run([*ping, f"{SUBNET}.12"], check=True, capture_output=True)
    subprocess.run([*ping, EXT_IP], check=True, capture_output=True)

    plain = json.loads(daemon.cli("-j", "link", "show"))
    stats = json.loads(daemon.cli("-j", "-s", "link", "show"))
    one = json.loads(daemon.cli("-j", "-s", "link", "show", "vmtap"))
    assert len(plain) == len(stats) == 8 and len(one) == 1
    kinds = {(e["type"], e["frontend"]) for e in plain}
    assert kinds == {("macvlan", "tap"), ("macvtap", "tap"), ("macvtap", "stream"),
                     ("macvtap", "dgram"), ("macvtap", "vhost-user")}  # fmt: skip
    for doc in (plain, stats, one):
        assert errors(validator, doc) == []
    assert all("stats64" not in e for e in plain)
    by_name = {e["ifname"]: e for e in stats}
    assert by_name["c1"]["stats64"]["tx"]["packets"] >= 6  # the counters moved
    assert by_name["c2"]["stats64"]["rx"]["packets"] >= 3
    assert "queue_stats" in by_name["vmtap"]
    assert by_name["c1"]["lower_stats"]["tx_packets"] >= 3  # the pings to ext went out
    assert by_name["src0"]["macaddrs"] == ["02:00:00:00:5c:01", "02:00:00:00:5c:02"]

    # The schema is strict enough to notice drift.
    drifted: list[Any] = []
    for change in (
        lambda e: e.pop("operstate"),
        lambda e: e.update(mtu="1500"),
        lambda e: e.update(extra=1),
        lambda e: e["stats64"]["rx"].pop("multicast"),
        lambda e: e.update(address="02:00:00:00:00:0G"),
        lambda e: e.update(path="/x.sock"),  # a tap frontend has no socket
        lambda e: e["lower_stats"].update(rx_packets=-1),
        lambda e: e["drops"].update(spoofed=-1),
    ):
        doc = copy.deepcopy(stats)
        change(doc[0])
        drifted.append(doc)
    for doc in drifted:
        assert errors(validator, doc) != []


class Monitor:
    """`pymacvtap -j monitor`, its lines collected by a thread."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pymacvtap", "--socket", str(daemon.socket), "-j", "monitor"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def collect(self) -> list[dict[str, Any]]:
        while not self.lines.empty():
            self.seen.append(json.loads(self.lines.get()))
        return self.seen

    def wait_for(self, **match: Any) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            return next((e for e in self.collect() if match.items() <= e.items()), None)

        assert wait_until(found, timeout=10), f"no event {match} in {self.seen}"
        event = found()
        assert event is not None
        return event

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


def test_monitor_lines_match_the_schema(lab: Lab, daemon: DaemonProcess, tmp_path: Path) -> None:
    validator = schema("monitor")
    monitor = Monitor(daemon)
    try:
        # Subscribed once the first event shows up (retry: it may not be connected yet). The
        # warm-up endpoint's events may be seen only in part, so the checked one comes after.
        for _ in range(50):
            daemon.cli("link", "add", "link", "low0", "name", "warmup", "type", "macvlan")
            subscribed = wait_until(lambda: not monitor.lines.empty(), timeout=0.3)
            daemon.cli("link", "del", "warmup")
            if subscribed:
                break
        daemon.cli("link", "add", "link", "low0", "name", "probe", "type", "macvlan")
        monitor.wait_for(event="link.add", ifname="probe")

        netns = add_every_kind(lab, daemon, tmp_path)
        daemon.cli("link", "set", "hostside", "up", "mtu", "1400")
        monitor.wait_for(event="link.set", ifname="hostside", changes=["mtu", "up"])
        ip(netns["c1"], "link", "set", "eth0", "mtu", "1300")  # behind the daemon's back
        monitor.wait_for(event="link.set", ifname="c1", source="netdev")
        daemon.cli("exec", "vmtap", "--", "true")
        monitor.wait_for(event="attach", ifname="vmtap", queues=2)
        ip(lab.sw, "link", "set", "sw-low0", "down")
        monitor.wait_for(event="lower.carrier", link="low0", carrier=False)
        ip(lab.sw, "link", "set", "sw-low0", "up")
        monitor.wait_for(event="lower.carrier", link="low0", carrier=True)
        daemon.cli("link", "del", "probe")
        monitor.wait_for(event="link.del", ifname="probe", reason="deleted by request")
        ip(None, "netns", "del", netns["c2"])
        monitor.wait_for(event="link.del", ifname="c2")
        lab.add_lower("low1", bytes.fromhex("020000000c02"))
        daemon.cli("link", "add", "link", "low1", "name", "onlow1", "type", "macvtap")
        ip(lab.host, "link", "del", "low1")
        monitor.wait_for(event="lower.del", link="low1")
        monitor.wait_for(event="link.del", ifname="onlow1")
        # The next save can neither append to the journal nor write a snapshot.
        blockers = [daemon.state_dir / "state.journal", daemon.state_dir / "state.json.tmp"]
        for path in blockers:
            path.unlink(missing_ok=True)
            path.mkdir()
        daemon.cli("link", "set", "vmstream", "down")
        monitor.wait_for(event="state.error")
        for path in blockers:
            path.rmdir()
    finally:
        monitor.close()
    events = monitor.collect()
    assert {e["event"] for e in events} == {
        "link.add", "link.set", "link.del", "attach", "lower.del", "lower.carrier", "state.error"
    }  # fmt: skip
    for event in events:
        assert errors(validator, event) == [], event
    # A drifted event is caught.
    for bad in (
        {"event": "link.add", "ifname": "x"},
        {"event": "link.del", "ifname": "x", "reason": "gone", "extra": 1},
        {"event": "lower.carrier", "link": "low0", "carrier": "yes"},
        {"event": "frobbed", "ifname": "x"},
        {
            "event": "link.set",
            "ifname": "x",
            "source": "request",
            "changes": ["mtu"],
            "old": {"mtu": 1500},
            "new": {"mtu": "1400"},
        },
        {"event": "link.set", "ifname": "x", "changes": ["mtu", "up"]},
        {"event": "link.wait", "ifname": "x"},
    ):
        assert errors(validator, bad) != [], bad
    # Emitted only at start or on a later retry (tests/integration/test_lifecycle.py).
    wait = {"event": "link.wait", "ifname": "c1", "reason": "lower eth0 missing"}
    assert errors(validator, wait) == []


def test_lower_show_gives_the_lowers_own_counters_as_the_schema_says(
    lab: Lab, daemon: DaemonProcess, tmp_path: Path
) -> None:
    validator = schema("lower-show")
    netns = add_every_kind(lab, daemon, tmp_path)
    ping = ["ip", "netns", "exec", netns["c1"], "ping", "-c", "3", "-i", "0.2", "-W", "1"]
    subprocess.run([*ping, EXT_IP], check=True, capture_output=True)
    plain = json.loads(daemon.cli("-j", "lower", "show"))
    stats = json.loads(daemon.cli("-j", "-s", "lower", "show", "low0"))
    for doc in (plain, stats):
        assert errors(validator, doc) == []
    [low0] = stats
    assert low0["ifname"] == "low0" and "c1" in low0["endpoints"]
    # The same counters as an endpoint's lower_stats, without going through an endpoint.
    endpoint = json.loads(daemon.cli("-j", "-s", "link", "show", "c1"))[0]
    assert low0["stats"]["tx_packets"] >= 3
    assert low0["stats"].keys() == endpoint["lower_stats"].keys()
    text = daemon.cli("-s", "lower", "show", "low0").splitlines()
    assert text[0].startswith("low0: <") and "state UP" in text[0]
    assert text[2].startswith("    endpoints ") and "c1" in text[2].split()
    assert any(line.strip().startswith("RX:") for line in text)
    missing = daemon.run_cli("lower", "show", "nosuch0")
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        "pymacvtap: lower show nosuch0: no endpoint uses a lower of that name"
    )
    # The help's -j paragraph names exactly the schema's fields.
    help_text = daemon.cli("lower", "--help")
    lower = schema("lower-show").schema["$defs"]["lower"]
    for field in [*lower["properties"], *lower["properties"]["stats"]["properties"]]:
        assert re.search(rf"\b{field}\b", help_text), field


@pytest.mark.parametrize("name", ["link-show", "lower-show", "monitor"])
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    assert schema(name).schema["$schema"].endswith("2020-12/schema")
    jsonschema.Draft202012Validator.check_schema(schema(name).schema)


def test_the_readme_command_finds_the_schemas() -> None:
    [block] = code_blocks("Machine-readable output", "sh")
    command, shown = block.splitlines()
    assert command.startswith("python3 -c ")
    out = subprocess.run(
        [sys.executable, "-c", shlex.split(command)[2]],
        capture_output=True, text=True, check=True, cwd="/",
    ).stdout.strip()  # fmt: skip
    m = re.fullmatch(r"# …/pymacvtap/schemas/(\S+)", shown)
    assert m, shown
    assert out.endswith("/pymacvtap/schemas")
    assert sorted(p.name for p in Path(out).iterdir()) == sorted(expand_braces(m[1]))
