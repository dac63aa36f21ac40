"""An endpoint's netdev moved to another namespace by someone else goes on being the endpoint.

Docker does this to every container netdev (into the sandbox, renamed eth0, and
back out before it deletes the endpoint); here it is done with ``ip link``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from importlib import resources

import jsonschema
import pytest

from lab import Lab
from lab.daemon import DaemonProcess, wait_until
from lab.fixtures import Containers
from lab.netns import ip

pytestmark = pytest.mark.root


def test_a_moved_and_renamed_netdev_stays_the_endpoint(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    old = containers.add("c1", "bridge")
    new = lab.add_netns("c1b")
    monitor = subprocess.Popen(
        [sys.executable, "-m", "pymacvtap", "--socket", str(daemon.socket), "-j", "monitor"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.5)  # subscribed
        ip(old, "link", "set", "eth0", "netns", new, "name", "net1")
        assert wait_until(lambda: daemon.show("c1").get("netns") == new)
        time.sleep(0.2)
    finally:
        monitor.terminate()
        out, _ = monitor.communicate(timeout=10)
    events = [json.loads(line) for line in out.splitlines()]
    validator = jsonschema.Draft202012Validator(
        json.loads((resources.files("pymacvtap") / "schemas" / "monitor.schema.json").read_text())
    )
    for event in events:
        validator.validate(event)
    assert {"event": "link.move", "ifname": "c1", "netns": new, "netdev": "net1"} in events
    shown = daemon.show("c1")
    assert shown["netdev"] == "net1"
    ip(new, "addr", "add", f"{containers.address['c1']}/24", "dev", "net1")
    ip(new, "link", "set", "net1", "up")
    containers.netns["c1"] = new
    assert containers.ping("c1", "ext")
    # Moved back to the daemon's own namespace, and deleted from there by `link del`.
    ip(new, "link", "set", "net1", "netns", daemon.netns, "name", "c1")
    assert wait_until(lambda: daemon.show("c1").get("netns") is None)
    daemon.cli("link", "del", "c1")
    assert "c1" not in ip(daemon.netns, "-o", "link", "show")


def test_a_netdev_really_deleted_removes_the_endpoint(
    daemon: DaemonProcess, containers: Containers
) -> None:
    ns = containers.add("c1", "bridge")
    ip(ns, "link", "del", "eth0")
    assert wait_until(lambda: daemon.show() == [])
