"""What must survive a second daemon, a restart and a missing lower or namespace (issue 16).

Each scenario is played as a user hits it: real daemons, the real CLI, lab
namespaces.  The configuration is never lost: only ``link del`` forgets an endpoint.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from lab import Lab, ip, ip_json
from lab.daemon import DaemonProcess
from lab.fixtures import Containers
from pymacvtap.daemon.state import StateStore


def saved_names(daemon: DaemonProcess) -> list[str]:
    return [cfg.name for cfg in StateStore(str(daemon.state_dir)).load()]


def netdevs(ns: str) -> list[str]:
    return [link["ifname"] for link in ip_json(ns, "link", "show")]


def test_a_second_daemon_on_the_same_state_dir_is_refused_and_touches_nothing(
    lab: Lab, daemon: DaemonProcess, containers: Containers, tmp_path: Path
) -> None:
    containers.add("c1", "vepa")
    containers.add("c2", "bridge")
    state_before = {p.name: p.read_bytes() for p in daemon.state_dir.iterdir()}
    # The command: another socket, the same state dir.
    other_socket = tmp_path / "ctl2.sock"
    started = time.monotonic()
    proc = subprocess.run(
        ["ip", "netns", "exec", lab.host, sys.executable, "-m", "pymacvtap", "daemon",
         "--socket", str(other_socket), "--state-dir", str(daemon.state_dir)],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert time.monotonic() - started < 10  # at once, not after a restore
    assert proc.returncode != 0
    message = proc.stderr.strip()
    assert message.count("\n") == 0, message
    assert message.startswith(f"pymacvtap: daemon: state dir {daemon.state_dir} is in use")
    assert f"pid {daemon.pid}" in message and f"socket {daemon.socket}" in message
    assert not other_socket.exists()
    # Nothing touched: the files, the netdevs, the first daemon's endpoints.
    assert {p.name: p.read_bytes() for p in daemon.state_dir.iterdir()} == state_before
    for name in ("c1", "c2"):
        assert netdevs(containers.netns[name]) == ["lo", "eth0"]
    assert [e["ifname"] for e in daemon.show()] == ["c1", "c2"]
    assert containers.ping("c1", "c2")
    # ...and the first daemon's restart still has both.
    daemon.kill()
    daemon.start()
    assert [e["ifname"] for e in daemon.show()] == ["c1", "c2"]
    assert saved_names(daemon) == ["c1", "c2"]


def test_the_lock_is_free_again_after_a_sigkill(lab: Lab, daemon: DaemonProcess) -> None:
    daemon.kill()
    daemon.start()  # the kernel dropped the dead daemon's flock
    assert daemon.show() == []


def test_sigterm_stops_the_daemon_promptly(
    lab: Lab, tmp_path: Path, containers: Containers, daemon: DaemonProcess
) -> None:
    containers.add("c1", "vepa")
    daemon.stop()
    # With metrics served too: their HTTP thread used to take half a second to stop.
    metrics = DaemonProcess(lab.host, tmp_path / "m", extra_args=["--metrics", "127.0.0.1:0"])
    (tmp_path / "m").mkdir()
    metrics.state_dir = daemon.state_dir
    metrics.start()
    try:
        assert [e["ifname"] for e in metrics.show()] == ["c1"]
        started = time.monotonic()
        metrics.signal(signal.SIGTERM)
        assert metrics.proc is not None
        assert metrics.proc.wait(5) == 0
        assert time.monotonic() - started < 0.3
    finally:
        metrics.cleanup()
    # Stopping leaves the container's netdev for the next start.
    assert netdevs(containers.netns["c1"]) == ["lo", "eth0"]
    ip(containers.netns["c1"], "link", "show", "eth0")
