"""The two data paths (SPEC 7): what each leaves in the daemon's namespace and what it costs.

The kernel fast path forwards with pymacvtap's own programs only: no kernel
macvlan/macvtap/ipvlan, bridge or Open vSwitch device and no tc action appears
in the daemon's namespace, and a TCP run through it leaves the daemon nearly
idle.  The Python data path still needs the daemon for every frame.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, ip, ip_json
from lab.capture import PacketSocket
from lab.daemon import DaemonProcess, wait_until
from lab.fixtures import LOWER_MAC, SUBNET, Containers
from lab.netns import in_netns
from pymacvtap.daemon.ebpf import HARVEST_SECONDS
from pymacvtap.io import hooks
from pymacvtap.io.bpf import PROGRAMS

pytestmark = pytest.mark.root

FORBIDDEN_KINDS = {"macvlan", "macvtap", "ipvlan", "ipvtap", "bridge", "openvswitch"}


def tc_json(netns: str, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(
        ["ip", "netns", "exec", netns, "tc", "-j", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return list(json.loads(out or "[]"))


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def iperf_daemon_cpu(
    daemon: DaemonProcess, server_ns: str, client_ns: str, address: str, seconds: int
) -> tuple[dict[str, Any], float]:
    """A TCP iperf3 run from ``client_ns`` to ``address`` (served in ``server_ns``): its
    JSON report's ``end``, and the daemon's CPU meanwhile, as a share of one core."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        before, start = cpu_seconds(daemon.pid), time.monotonic()
        run = subprocess.run(
            ["ip", "netns", "exec", client_ns, "iperf3", "-c", address, "-t", str(seconds), "-J"],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip
        used = (cpu_seconds(daemon.pid) - before) / (time.monotonic() - start)
    finally:
        server.kill()
        server.wait()
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)["end"], used


@pytest.mark.parametrize("datapath", ["ebpf"])
def test_the_fast_path_forwards_with_its_own_programs_only(
    daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "bridge")
    containers.add("c2", "bridge")
    containers.add("c3", "vepa")
    assert containers.ping("c1", "c2")
    assert containers.ping("c3", "ext")
    host = containers.lab.host
    links = ip_json(host, "-d", "link", "show")
    kinds = {str(link.get("linkinfo", {}).get("info_kind")) for link in links}
    assert not kinds & FORBIDDEN_KINDS, kinds
    peers = [link["ifname"] for link in links if str(link["ifname"]).startswith("pmv-")]
    assert sorted(peers) == ["pmv-c1", "pmv-c2", "pmv-c3"]
    assert tc_json(host, "actions", "ls", "action", "mirred") == []
    # Our programs, each on its device's ingress by tcx (this kernel has it): no tc
    # classifier, no tc action, no qdisc.
    index = {str(link["ifname"]): int(link["ifindex"]) for link in links}
    with in_netns(host):
        on = {dev: hooks.attached(index[dev], PROGRAMS) for dev in [*peers, "low0"]}
    assert on == {
        **{peer: [("tcx", "endpoint_ingres")] for peer in peers},  # 15 characters kept
        "low0": [("tcx", "lower_ingress")],
    }, on
    for dev in [*peers, "low0"]:
        qdiscs = tc_json(host, "qdisc", "show", "dev", dev)
        assert not [q for q in qdiscs if q.get("kind") in ("clsact", "ingress")], qdiscs
    assert "on the tcx hook" in daemon.log()
    shown = {e["ifname"]: e["datapath"] for e in daemon.show()}
    assert shown == {"c1": "ebpf", "c2": "ebpf", "c3": "ebpf"}
    # The daemon receives on its inbox alone: no packet socket is hooked into the
    # receive path of a device that forwards (R, "running", in /proc/net/packet).
    names = {int(link["ifindex"]): str(link["ifname"]) for link in links}
    hooked = {names.get(ifindex, str(ifindex)) for ifindex in hooked_packet_sockets(host)}
    assert len(hooked) == 1 and hooked.pop().startswith("pmvtin"), hooked
    # Counted as on the Python path: the programs' counts are in link show -s.
    stats = daemon.show("c1", stats=True)["stats64"]
    assert stats["tx"]["packets"] >= 2 and stats["rx"]["packets"] >= 2, stats
    # A clean stop takes the programs away.
    daemon.stop()
    with in_netns(host):
        assert {dev: hooks.attached(index[dev], PROGRAMS) for dev in [*peers, "low0"]} == {
            dev: [] for dev in [*peers, "low0"]
        }
    assert not [link for link in ip_json(host, "link", "show") if "pmvtin" in link["ifname"]]


def hooked_packet_sockets(netns: str) -> list[int]:
    """The ifindex of every packet socket of ``netns`` that receives (is on a device's taps)."""
    table = subprocess.run(
        ["ip", "netns", "exec", netns, "cat", "/proc/net/packet"],
        capture_output=True, text=True, check=True,
    ).stdout.splitlines()  # fmt: skip
    # sk RefCnt Type Proto Iface R Rmem User Inode
    return [int(row.split()[4]) for row in table[1:] if row.split()[5] == "1"]


@pytest.mark.parametrize("datapath", ["ebpf"])
def test_link_show_names_the_path_that_carries_the_endpoint(
    daemon: DaemonProcess, containers: Containers
) -> None:
    """An endpoint whose frames the programs leave to the daemon (macnat rewrites them) is
    shown on the python path, and back on ebpf when that ends; its traffic flows on both."""
    containers.add("c1", "bridge")
    containers.add("c2", "bridge")
    assert daemon.show("c1")["datapath"] == "ebpf"
    daemon.cli("link", "set", "c1", "macnat", "on")
    assert daemon.show("c1")["datapath"] == "python"
    assert daemon.show("c2")["datapath"] == "ebpf"
    assert containers.ping("c1", "c2")
    daemon.cli("link", "set", "c1", "macnat", "off")
    assert daemon.show("c1")["datapath"] == "ebpf"
    assert containers.ping("c1", "ext")


@pytest.mark.parametrize("datapath", ["ebpf"])
def test_a_fast_path_tcp_run_leaves_the_daemon_idle(
    daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "bridge")
    ns2 = containers.add("c2", "bridge")
    assert containers.ping("c1", "c2")
    end, used = iperf_daemon_cpu(daemon, ns2, containers.ns_of("c1"), containers.address["c2"], 3)
    gbits = end["sum_received"]["bits_per_second"] / 1e9
    print(f"fast path TCP {gbits:.1f} Gbit/s, daemon CPU {used * 100:.1f} % of a core")
    assert used <= 0.05, f"daemon CPU {used * 100:.1f} % of a core during {gbits:.1f} Gbit/s"
    assert daemon.show("c1")["datapath"] == "ebpf"


@pytest.mark.parametrize("datapath", ["python"])
def test_on_the_python_path_sigstop_stops_all_traffic(
    daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "bridge")
    containers.add("c2", "vepa")
    assert containers.ping("c1", "ext")
    assert containers.ping("c2", "ext")
    assert {e["datapath"] for e in daemon.show()} == {"python"}
    daemon.signal(signal.SIGSTOP)
    try:
        assert not containers.ping("c1", "ext", count=1)
        assert not containers.ping("c2", "ext", count=1)
    finally:
        daemon.signal(signal.SIGCONT)
    assert containers.ping("c1", "ext")


def test_auto_falls_back_to_python_and_says_why(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYMACVTAP_BPF_OBJECT", str(tmp_path / "missing.bpf.o"))
    for sub in ("ebpf", "auto"):
        (tmp_path / sub).mkdir()
    refused = DaemonProcess(lab.host, tmp_path / "ebpf", datapath="ebpf")
    with pytest.raises(RuntimeError, match=r"--datapath ebpf: .*no compiled fast path"):
        refused.start()
    refused.cleanup()
    proc = DaemonProcess(lab.host, tmp_path / "auto", datapath="auto")
    proc.start()
    try:
        containers = Containers(lab, proc)
        containers.add("c1", "vepa")
        assert containers.ping("c1", "ext")
        assert proc.show("c1")["datapath"] == "python"
    finally:
        proc.cleanup()
    said = [line for line in proc.log().splitlines() if "data path:" in line]
    assert len(said) == 1 and "python (auto: the eBPF fast path cannot load" in said[0], said


@pytest.mark.parametrize("datapath", ["ebpf"])
def test_after_sigkill_the_programs_forward_until_a_python_daemon_takes_them_away(
    daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "bridge")
    containers.add("c2", "bridge")
    assert containers.ping("c1", "c2")
    daemon.kill()
    # Neighbours are resolved: the unicast goes on with the last tables.
    assert containers.ping("c1", "c2")
    daemon.datapath = "python"
    daemon.start()
    assert "removing programs a previous daemon left" in daemon.log()
    assert {e["datapath"] for e in daemon.show()} == {"python"}
    assert containers.ping("c1", "c2")
    daemon.signal(signal.SIGSTOP)
    try:
        assert not containers.ping("c1", "c2", count=1)
    finally:
        daemon.signal(signal.SIGCONT)


@pytest.mark.parametrize("datapath", ["ebpf"])
def test_the_hosts_own_traffic_on_a_lower_is_counted_but_never_read(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    """Unicast for the host on a fast-path lower: the programs count it as ``rx_not_ours``
    and leave it to the host; the daemon reads none of it (it used to read every frame)."""
    containers.add("c1", "vepa")  # the lower is the daemon's from its first endpoint
    host_ip = f"{SUBNET}.99"
    ip(lab.host, "addr", "add", f"{host_ip}/24", "dev", "low0")
    lab.fdb_static(LOWER_MAC, lab.lowers["low0"].port)

    def not_ours() -> int:
        (lower,) = json.loads(daemon.cli("-j", "-s", "lower", "show"))
        return int(lower["stats"]["rx_not_ours"])

    counted = not_ours()
    end, used = iperf_daemon_cpu(daemon, lab.host, lab.ext, host_ip, 2)
    segments = end["sum_received"]["bytes"] // 65536
    time.sleep(HARVEST_SECONDS + 0.5)  # the programs' counters reach the daemon's
    assert not_ours() - counted >= segments, "the host's frames were not counted"
    assert used <= 0.05, f"daemon CPU {used * 100:.1f} % of a core for the host's traffic"


@pytest.mark.parametrize("datapath", ["ebpf", "python"])
def test_a_frame_sent_the_moment_the_netdev_comes_up_is_forwarded(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    """The container's netdev is the endpoint: once it is up it may send, whether or not the
    daemon has read the RTM_NEWLINK yet.  The daemon stopped while the container brings
    eth0 up and sends makes the order certain: the frame is there before the news."""
    ns = containers.add("c1", "vepa")
    ip(ns, "link", "set", "eth0", "down")
    assert wait_until(lambda: daemon.show("c1")["operstate"] == "DOWN")
    mac = bytes.fromhex(daemon.show("c1")["address"].replace(":", ""))
    frame = lab.ext_mac + mac + b"\x88\xb5" + b"first frame after up".ljust(46, b".")
    ext = lab.ext_socket()
    try:
        daemon.signal(signal.SIGSTOP)
        try:
            ip(ns, "link", "set", "eth0", "up")
            sender = PacketSocket(ns, "eth0")
            sender.send(frame)
            sender.close()
        finally:
            daemon.signal(signal.SIGCONT)
        deadline = time.monotonic() + 3
        got: list[bytes] = []
        while not got and time.monotonic() < deadline:
            got = [c.data for c in ext.read_all() if c.data == frame]
            time.sleep(0.05)
    finally:
        ext.close()
    assert got == [frame]
    assert "endpoint_down" not in daemon.show("c1", stats=True).get("drops", {})
