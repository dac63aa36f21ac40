"""What a change costs the state dir (SPEC 5): one journal line, however many endpoints."""

from __future__ import annotations

import json
import time
from typing import Any

from lab import Lab
from lab.daemon import DaemonProcess
from lab.monitor import EventMonitor


def journal_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    path = daemon.state_dir / "state.journal"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_link_add_and_del_each_append_one_line(lab: Lab, daemon: DaemonProcess) -> None:
    del lab
    snapshot = (daemon.state_dir / "state.json").read_bytes()
    with EventMonitor(daemon.socket) as monitor:
        # A netdev in the daemon's own namespace, left down (as bench/scale.py adds them).
        daemon.cli("link", "add", "link", "low0", "name", "j1", "type", "macvlan")
        time.sleep(1.0)  # the new tap's link events are handled by then
        events = monitor.events()
    lines = journal_lines(daemon)
    assert [next(iter(line)) for line in lines] == ["follows", "put"]
    # The tap's events from before the daemon gave it the endpoint's MAC are stale:
    # they must not be taken as changes made on the netdev (and saved).
    assert [e["event"] for e in events] == ["link.add"]
    assert daemon.show("j1")["address"] == lines[1]["put"]["address"]
    daemon.cli("link", "del", "j1")
    assert journal_lines(daemon)[2:] == [{"del": "j1"}]
    assert (daemon.state_dir / "state.json").read_bytes() == snapshot
