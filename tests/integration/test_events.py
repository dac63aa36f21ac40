"""``monitor`` says what changed: old and new values, whoever made the change (issue 16)."""

from __future__ import annotations

import select
import subprocess
import sys
import time
from typing import Any

from lab import Lab, ip
from lab.daemon import DaemonProcess
from lab.fixtures import Containers
from lab.monitor import EventMonitor


def change(event: dict[str, Any]) -> tuple[str, dict[str, Any], dict[str, Any]]:
    return event["source"], event["old"], event["new"]


def test_changes_by_request_netdev_and_kernel_carry_old_and_new_values(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    ns = containers.add("c1", "vepa")
    daemon.cli("link", "add", "link", "low0", "name", "h1", "type", "macvlan", "mode", "source")
    with EventMonitor(daemon.socket) as monitor:
        daemon.cli("link", "set", "h1", "up")
        daemon.cli("link", "set", "h1", "down")
        daemon.cli("link", "set", "h1", "mtu", "1400", "mode", "bridge")
        daemon.cli("link", "set", "h1", "mode", "source")
        daemon.cli("link", "set", "h1", "macaddr", "add", "02:00:00:00:5c:01")
        ip(ns, "link", "set", "eth0", "down")  # inside the container
        ip(ns, "link", "set", "eth0", "mtu", "1300", "address", "02:00:00:00:77:01")
        ip(lab.host, "link", "set", "low0", "mtu", "1200")  # the kernel clamps c1 and h1
        monitor.wait_event(lambda e: e.get("source") == "kernel" and e["ifname"] == "h1")
        seen = [e for e in monitor.events() if e["event"] == "link.set"]
    by = [(e["ifname"], *change(e)) for e in seen]
    assert ("h1", "request", {"up": False}, {"up": True}) in by
    assert ("h1", "request", {"up": True}, {"up": False}) in by
    assert ("h1", "request", {"mode": "source", "mtu": 1500}, {"mode": "bridge", "mtu": 1400}) in by
    assert ("h1", "request", {"macaddr": []}, {"macaddr": ["02:00:00:00:5c:01"]}) in by
    assert ("c1", "netdev", {"up": True}, {"up": False}) in by
    netdev = [e for e in seen if e["ifname"] == "c1" and e["source"] == "netdev"][-1]
    assert netdev["old"]["mtu"] == 1500 and netdev["new"]["mtu"] == 1300
    assert netdev["new"]["address"] == "02:00:00:00:77:01"
    assert ("h1", "kernel", {"mtu": 1400}, {"mtu": 1200}) in by
    assert ("c1", "kernel", {"mtu": 1300}, {"mtu": 1200}) in by


def test_the_monitor_text_says_up_and_down_apart(daemon: DaemonProcess) -> None:
    daemon.cli("link", "add", "link", "low0", "name", "ncx", "type", "macvlan")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pymacvtap", "--socket", str(daemon.socket), "monitor"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 10
        # Until the monitor is subscribed the changes go unseen: repeat them until one is.
        while not lines and time.monotonic() < deadline:
            daemon.cli("link", "set", "ncx", "up")
            daemon.cli("link", "set", "ncx", "down")
            if select.select([proc.stdout], [], [], 0.3)[0]:
                lines.append(proc.stdout.readline().strip())
        assert lines, "the monitor printed nothing"
        if lines[0].endswith("on -> off source request"):  # subscribed in between
            daemon.cli("link", "set", "ncx", "up")
            daemon.cli("link", "set", "ncx", "down")
            lines = [proc.stdout.readline().strip()]
        lines.append(proc.stdout.readline().strip())
        assert lines == [
            "link.set ncx up off -> on source request",
            "link.set ncx up on -> off source request",
        ]
    finally:
        proc.kill()
        proc.wait()
