"""What must survive a second daemon, a restart and a missing lower or namespace (issue 16).

Each scenario is played as a user hits it: real daemons, the real CLI, lab
namespaces.  The configuration is never lost: only ``link del`` forgets an endpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lab import Lab, ip, ip_json
from lab.daemon import DaemonProcess, wait_until
from lab.fixtures import Containers
from lab.monitor import EventMonitor
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
    # Settled: the containers' `ip link set eth0 up` reached the saved state.
    assert wait_until(lambda: all(e["operstate"] == "UP" for e in daemon.show()))
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


# -- restore never forgets --------------------------------------------------------------


def waiting_reason(daemon: DaemonProcess, name: str) -> str | None:
    entry = daemon.show(name)
    return entry.get("waiting") if entry["operstate"] == "WAITING" else None


def test_an_endpoint_whose_lower_was_renamed_waits_and_comes_back_with_it(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "vepa")
    containers.add("c2", "bridge")
    daemon.stop()
    # While the daemon is down, udev (say) renames the NIC.
    ip(lab.host, "link", "set", "low0", "down")
    ip(lab.host, "link", "set", "low0", "name", "low0x")
    daemon.start()
    assert waiting_reason(daemon, "c1") == "lower low0 missing"
    assert waiting_reason(daemon, "c2") == "lower low0 missing"
    text = daemon.cli("link", "show", "c1")
    assert "state WAITING lower low0 missing" in text.splitlines()[0]
    assert saved_names(daemon) == ["c1", "c2"]  # nothing forgotten
    # The containers keep their netdevs (and addresses) meanwhile.
    assert netdevs(containers.netns["c1"]) == ["lo", "eth0"]
    refused = daemon.run_cli("link", "set", "c1", "mtu", "1400")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "pymacvtap: link set c1: the endpoint is waiting (lower low0 missing); "
        "only link show and link del apply until it is created"
    )
    again = daemon.run_cli("link", "add", "link", "low0", "name", "c1", "type", "macvlan")
    assert again.stderr.strip() == (
        "pymacvtap: link add c1: an endpoint of that name exists, waiting (lower low0 missing)"
    )
    assert "c1: waiting: lower low0 missing" in daemon.log()
    assert "restored 0 of 2 endpoint(s); 2 waiting" in daemon.log()

    with EventMonitor(daemon.socket) as monitor:
        ip(lab.host, "link", "set", "low0x", "name", "low0")
        ip(lab.host, "link", "set", "low0", "up")
        assert wait_until(lambda: all(e["operstate"] != "WAITING" for e in daemon.show()))
        monitor.wait_event(lambda e: e.get("event") == "link.add" and e["ifname"] == "c2")
    assert containers.ping("c1", "c2")
    assert containers.ping("c1", "ext")
    daemon.stop()
    daemon.start()
    assert sorted(e["ifname"] for e in daemon.show()) == ["c1", "c2"]
    assert containers.ping("c2", "c1")


def test_an_endpoint_whose_netns_is_missing_at_start_waits_for_it(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    ns = containers.add("c1", "vepa")
    containers.add("c2", "vepa")
    daemon.stop()
    ip(None, "netns", "del", ns)  # the container stopped while the daemon was down
    daemon.start()
    assert waiting_reason(daemon, "c1") == f"netns {ns} missing"
    assert daemon.show("c2")["operstate"] == "UP"
    assert saved_names(daemon) == ["c2", "c1"]
    ip(None, "netns", "add", ns)  # ...and comes back
    assert wait_until(lambda: daemon.show("c1")["operstate"] != "WAITING")
    assert netdevs(ns) == ["lo", "eth0"]
    ip(ns, "addr", "add", f"{containers.address['c1']}/24", "dev", "eth0")
    ip(ns, "link", "set", "eth0", "up")
    assert wait_until(lambda: containers.ping("c1", "c2", count=1))


def test_link_del_forgets_a_waiting_endpoint_and_its_netdev(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    ns = containers.add("c1", "vepa")
    daemon.stop()
    ip(lab.host, "link", "set", "low0", "down")
    ip(lab.host, "link", "set", "low0", "name", "low0x")
    daemon.start()
    assert waiting_reason(daemon, "c1") == "lower low0 missing"
    with EventMonitor(daemon.socket) as monitor:
        daemon.cli("link", "del", "c1")
        event = monitor.wait_event(lambda e: e.get("event") == "link.del")
    assert event == {"event": "link.del", "ifname": "c1", "reason": "deleted by request"}
    assert daemon.show() == []
    assert saved_names(daemon) == []
    assert netdevs(ns) == ["lo"]
    ip(lab.host, "link", "set", "low0x", "name", "low0")  # the lab cleans up low0


def test_a_netdev_name_taken_by_a_foreign_device_waits_until_it_is_free(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    ns = containers.add("c1", "vepa")
    daemon.stop()
    ip(ns, "link", "del", "eth0")
    ip(ns, "link", "add", "eth0", "type", "veth", "peer", "name", "other0")
    daemon.start()
    reason = waiting_reason(daemon, "c1")
    assert reason == f"a device named eth0 exists already in netns {ns} and is not pymacvtap's"
    ip(ns, "link", "del", "eth0")
    assert wait_until(lambda: daemon.show("c1")["operstate"] != "WAITING")
    assert "eth0" in netdevs(ns)


# -- no leftovers ------------------------------------------------------------------------


def alias(ns: str | None, name: str) -> str | None:
    links = ip_json(ns, "link", "show", "dev", name)
    return links[0].get("ifalias")


def test_the_daemons_netdevs_carry_its_mark(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    ns = containers.add("c1", "vepa")
    daemon.cli("link", "add", "link", "low0", "name", "vm0", "type", "macvtap", "ifname", "vmtap0")
    state_dir = os.path.realpath(daemon.state_dir)
    assert alias(ns, "eth0") == f"pymacvtap:c1 {state_dir}"
    assert alias(lab.host, "vmtap0") == f"pymacvtap:vm0 {state_dir}"


def test_a_leftover_netdev_is_replaced_by_link_add_and_a_foreign_one_refused(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    ns = containers.add("c1", "vepa")
    # The state is lost (as the second daemon of issue 16 did to it): eth0 stays behind.
    daemon.kill()
    for path in daemon.state_dir.glob("state*"):
        path.unlink()
    daemon.start()
    assert daemon.show() == []
    assert netdevs(ns) == ["lo", "eth0"]
    daemon.cli("link", "add", "link", "low0", "name", "c1", "type", "macvlan",
               "netns", ns, "ifname", "eth0")  # fmt: skip
    assert daemon.show("c1")["netdev"] == "eth0"
    # A device that is not ours is refused, and the message says so.
    ns2 = lab.add_netns("c2")
    ip(ns2, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    proc = daemon.run_cli("link", "add", "link", "low0", "name", "c2", "type", "macvlan",
                          "netns", ns2, "ifname", "eth0")  # fmt: skip
    assert proc.returncode != 0
    assert proc.stderr.strip() == (
        f"pymacvtap: link add c2: a device named eth0 exists already in netns {ns2} "
        "and is not pymacvtap's"
    )


def test_at_start_marked_netdevs_are_adopted_and_leftovers_removed(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    ns = containers.add("c1", "vepa")
    daemon.cli("link", "add", "link", "low0", "name", "vm0", "type", "macvtap", "ifname", "vmtap0")
    daemon.cli("link", "add", "link", "low0", "name", "vm1", "type", "macvtap", "ifname", "vmtap1")
    daemon.kill()
    StateStore(str(daemon.state_dir)).delete("vm1")  # vm1 forgotten while the daemon was down
    daemon.start()
    assert sorted(e["ifname"] for e in daemon.show()) == ["c1", "vm0"]
    host_links = [link["ifname"] for link in ip_json(lab.host, "link", "show")]
    assert "vmtap0" in host_links and "vmtap1" not in host_links
    assert netdevs(ns) == ["lo", "eth0"]
    assert containers.ping("c1", "ext")


def test_a_netdev_of_another_endpoint_or_daemon_is_refused_by_name(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    ns = containers.add("c1", "vepa")
    proc = daemon.run_cli("link", "add", "link", "low0", "name", "c9", "type", "macvlan",
                          "netns", ns, "ifname", "eth0")  # fmt: skip
    assert proc.stderr.strip() == (
        f"pymacvtap: link add c9: a device named eth0 exists already in netns {ns}: "
        "endpoint c1's netdev"
    )
    ns2 = lab.add_netns("c2")
    ip(ns2, "link", "add", "eth0", "type", "veth", "peer", "name", "peer0")
    ip(ns2, "link", "set", "eth0", "alias", "pymacvtap:c2 /var/lib/elsewhere")
    proc = daemon.run_cli("link", "add", "link", "low0", "name", "c2", "type", "macvlan",
                          "netns", ns2, "ifname", "eth0")  # fmt: skip
    assert proc.stderr.strip() == (
        f"pymacvtap: link add c2: a device named eth0 exists already in netns {ns2}: "
        "endpoint c2's netdev of the pymacvtap daemon with state dir /var/lib/elsewhere"
    )
    assert "eth0" in netdevs(ns2)  # another daemon's: left alone
