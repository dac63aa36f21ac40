"""Shared-MAC lowers in the lab: the switch made an access point, macnat endpoints behind it.

The switch namespace's bridge gets two nftables rules an access point applies to its
station (the lower): frames from the lower whose source MAC is not the lower's are
dropped, and so is unicast toward the lower for any other MAC.  Kernel-style endpoints
(``macnat off``) fail behind it, the control that shows the rules bite; ``macnat on``
endpoints talk to the outside both ways, to each other, and get their own DHCP leases
from dnsmasq with busybox udhcpc, unmodified.  Announcements are seen on the outside.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from lab.capture import PacketSocket
from lab.daemon import DaemonProcess
from lab.fixtures import LOWER_MAC, SUBNET, Containers, running_daemon
from lab.netns import ip, sysctl

ETH_P_ARP = b"\x08\x06"
ETH_P_RARP = b"\x80\x35"


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[DaemonProcess]:
    """The daemon as users run it: announcements on (the lab's default is silence)."""
    with running_daemon(lab, tmp_path, announce_rounds=None) as proc:
        yield proc


def access_point(lab: Lab, lower: str = "low0") -> None:
    mac = LOWER_MAC.hex(":")
    port = lab.lowers[lower].port
    rules = f"""
table bridge ap {{
  chain forward {{
    type filter hook forward priority 0; policy accept;
    iifname "{port}" ether saddr != {mac} counter drop
    oifname "{port}" ether daddr != {mac} @ll,7,1 0 counter drop
  }}
}}
"""
    subprocess.run(["ip", "netns", "exec", lab.sw, "nft", "-f", "-"], input=rules, text=True,
                   check=True)  # fmt: skip


def ap_drops(lab: Lab) -> int:
    out = subprocess.run(
        ["ip", "netns", "exec", lab.sw, "nft", "-j", "list", "table", "bridge", "ap"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return sum(
        item["rule"]["expr"][-2]["counter"]["packets"]
        for item in json.loads(out)["nftables"]
        if "rule" in item
    )


def test_without_macnat_the_access_point_drops_the_endpoints(
    lab: Lab, containers: Containers
) -> None:
    access_point(lab)
    containers.add("c1", "bridge")
    assert not containers.ping("ext", "c1", count=1)
    assert not containers.ping("c1", "ext", count=1)
    assert ap_drops(lab) > 0


def test_kernel_macvlan_fails_behind_the_access_point(lab: Lab) -> None:
    """The control of the issue: the kernel's macvlan in the same lab gets nowhere."""
    access_point(lab)
    ns = lab.add_netns("k1")
    lab.add_macvlan("k1", "low0", "bridge", mac=bytes.fromhex("020000000c55"), up=False, netns=ns)
    ip(ns, "addr", "add", f"{SUBNET}.55/24", "dev", "k1")
    ip(ns, "link", "set", "k1", "up")
    ping = ["ping", "-c", "1", "-W", "1", f"{SUBNET}.100"]
    assert subprocess.run(["ip", "netns", "exec", ns, *ping], capture_output=True).returncode
    assert ap_drops(lab) > 0


def test_macnat_endpoints_talk_to_the_outside_and_each_other(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    access_point(lab)
    containers.add("c1", "bridge", extra=("macnat", "on"))
    containers.add("c2", "bridge", extra=("macnat", "on"))
    # The outside speaks first (it knows c1's address from nothing but ARP).
    assert containers.ping("ext", "c1")
    assert containers.ping("c1", "ext")
    assert containers.ping("c2", "ext")
    assert containers.ping("c1", "c2") and containers.ping("c2", "c1")
    # TCP both ways through the translation (busybox nc as the server outside).
    server = subprocess.Popen(
        ["ip", "netns", "exec", lab.ext, "busybox", "nc", "-l", "-p", "5001"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.3)
        subprocess.run(
            ["ip", "netns", "exec", containers.netns["c2"], "busybox", "nc", "-w", "2",
             containers.address["ext"], "5001"],
            input="through the access point\n", text=True, check=True, timeout=10,
        )  # fmt: skip
        out, _ = server.communicate(timeout=10)
    finally:
        server.kill()
    assert out == "through the access point\n"
    # Nothing left the lower with an endpoint's MAC: the AP dropped nothing.
    assert ap_drops(lab) == 0
    c1 = daemon.show("c1")
    assert c1["macnat"] is True
    assert {"family": "inet", "address": containers.address["c1"], "origin": "netdev"} in [
        {k: a[k] for k in ("family", "address", "origin")} for a in c1["addresses"]
    ]


@contextlib.contextmanager
def dnsmasq(lab: Lab, tmp_path: Path) -> Iterator[Path]:
    leases = tmp_path / "dnsmasq.leases"
    proc = subprocess.Popen(
        ["ip", "netns", "exec", lab.ext, "dnsmasq", "--no-daemon", "--port=0",
         "--interface=eth0", "--bind-interfaces", "--no-resolv", "--no-hosts",
         f"--dhcp-range={SUBNET}.50,{SUBNET}.60,255.255.255.0,1h",
         f"--dhcp-leasefile={leases}", f"--pid-file={tmp_path / 'dnsmasq.pid'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        yield leases
    finally:
        proc.terminate()
        proc.wait(timeout=5)


UDHCPC_SCRIPT = """#!/bin/sh
# busybox udhcpc calls this with the lease in the environment; nothing pymacvtap-specific.
[ "$1" = bound ] || exit 0
ip addr add "$ip/24" dev "$interface"
echo "$ip" > "$LEASE_FILE"
"""


def test_dhcp_gives_each_macnat_endpoint_its_own_lease(
    lab: Lab, daemon: DaemonProcess, containers: Containers, tmp_path: Path
) -> None:
    access_point(lab)
    script = tmp_path / "udhcpc.script"
    script.write_text(UDHCPC_SCRIPT)
    script.chmod(0o755)
    got: dict[str, str] = {}
    with dnsmasq(lab, tmp_path):
        for name in ("d1", "d2"):
            ns = lab.add_netns(name)
            daemon.cli("link", "add", "link", "low0", "name", name, "type", "macvlan",
                       "mode", "bridge", "netns", ns, "ifname", "eth0", "macnat", "on")  # fmt: skip
            ip(ns, "link", "set", "eth0", "up")
            lease = tmp_path / f"{name}.lease"
            subprocess.run(
                ["ip", "netns", "exec", ns, "env", f"LEASE_FILE={lease}", "busybox", "udhcpc",
                 "-i", "eth0", "-f", "-q", "-n", "-t", "5", "-T", "1", "-s", str(script)],
                capture_output=True, text=True, check=True, timeout=30,
            )  # fmt: skip
            got[name] = lease.read_text().strip()
            containers.netns[name] = ns
            containers.address[name] = got[name]
    assert got["d1"] != got["d2"]
    assert all(a.startswith(f"{SUBNET}.") for a in got.values())
    # The leases work: each pings the outside from its own address, and the outside it.
    assert containers.ping("d1", "ext") and containers.ping("d2", "ext")
    assert containers.ping("ext", "d1") and containers.ping("ext", "d2")
    origins = {a["origin"] for a in daemon.show("d1")["addresses"]}
    assert "netdev" in origins or "dhcp" in origins


def _announcements(sock: PacketSocket, mac: bytes, seconds: float) -> list[bytes]:
    deadline = time.monotonic() + seconds
    frames: list[bytes] = []
    while time.monotonic() < deadline:
        time.sleep(0.05)
        frames += [c.data for c in sock.read_all() if c.data[12:14] in (ETH_P_ARP, ETH_P_RARP)]
    return [f for f in frames if f[6:12] == mac and f[0:6] == b"\xff" * 6]


@pytest.mark.parametrize("macnat", [False, True])
def test_announcements_reach_the_outside(
    lab: Lab, daemon: DaemonProcess, containers: Containers, macnat: bool
) -> None:
    if macnat:
        access_point(lab)
    extra = ("macnat", "on") if macnat else ()
    with PacketSocket(lab.ext, "eth0") as sock:
        containers.add("c1", "bridge", extra=extra)
        mac = LOWER_MAC if macnat else bytes.fromhex(daemon.show("c1")["address"].replace(":", ""))
        up = _announcements(sock, mac, 2.0)
        assert len(up) >= 4, up  # five rounds, the first maybe a RARP (no address yet)
        # The container's own kernel is silent (arp_notify 0): everything here was ours.
        daemon.cli("link", "set", "c1", "announce")
        again = _announcements(sock, mac, 2.0)
        assert len(again) == 5
        sender_ip = bytes(int(x) for x in containers.address["c1"].split("."))
        assert all(f[12:14] == ETH_P_ARP and f[28:32] == sender_ip for f in again)


def test_a_kernel_macvlan_with_arp_notify_off_announces_nothing(lab: Lab) -> None:
    """The control for the announcements above: without pymacvtap the outside hears nothing."""
    mac = bytes.fromhex("020000000c77")
    ns = lab.add_netns("k1")
    with PacketSocket(lab.ext, "eth0") as sock:
        lab.add_macvlan("k1", "low0", "bridge", mac=mac, up=False, netns=ns)
        ip(ns, "addr", "add", f"{SUBNET}.77/24", "dev", "k1")
        ip(ns, "link", "set", "k1", "up")
        assert _announcements(sock, mac, 1.5) == []


def _ipv6_on(netns: str, dev: str, address: str) -> None:
    for key in ("all", dev):
        sysctl(netns, f"net.ipv6.conf.{key}.disable_ipv6", "0")
    ip(netns, "-6", "addr", "add", f"{address}/64", "dev", dev, "nodad")


def _ping6(netns: str, address: str) -> bool:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-6", "-c", "2", "-i", "0.2", "-W", "1", address],
        capture_output=True, check=False,
    )  # fmt: skip
    return proc.returncode == 0


def test_macnat_over_ipv6_neighbour_discovery_translated(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    access_point(lab)
    _ipv6_on(lab.ext, "eth0", "fd00::100")
    for n, name in enumerate(("c1", "c2"), start=11):
        ns = containers.add(name, "bridge", extra=("macnat", "on"))
        _ipv6_on(ns, "eth0", f"fd00::{n}")
    time.sleep(1.5)  # the solicited-node groups reach the endpoints' filters
    assert _ping6(lab.ext, "fd00::11")  # the outside first
    assert _ping6(containers.netns["c1"], "fd00::100")
    assert _ping6(containers.netns["c2"], "fd00::100")
    assert _ping6(containers.netns["c1"], "fd00::12")
    assert ap_drops(lab) == 0


def test_a_restarted_daemon_announces_its_endpoints(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    """After SIGKILL and a restart the endpoints are restored and announced again."""
    containers.add("c1", "bridge")
    mac = bytes.fromhex(daemon.show("c1")["address"].replace(":", ""))
    time.sleep(2.0)  # the first announcement is over
    daemon.kill()
    with PacketSocket(lab.ext, "eth0") as sock:
        sock.flush()
        daemon.start()
        frames = _announcements(sock, mac, 2.5)
    sender_ip = bytes(int(x) for x in containers.address["c1"].split("."))
    # The netdev's addresses are read before it is restored up: five gratuitous ARPs.
    assert len(frames) == 5, frames
    assert all(f[12:14] == ETH_P_ARP and f[28:32] == sender_ip for f in frames)
    assert containers.ping("ext", "c1")


def test_a_macnat_endpoint_cannot_take_the_hosts_address(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    """The lower's own address stays the host's even when a container claims it."""
    host_ip = f"{SUBNET}.2"
    ip(lab.host, "addr", "add", f"{host_ip}/24", "dev", "low0")
    ns = containers.add("c1", "bridge", extra=("macnat", "on"))
    ip(ns, "addr", "add", f"{host_ip}/32", "dev", "eth0")  # hostile, or a mistake
    time.sleep(0.5)
    containers.address["host"] = host_ip
    with PacketSocket(ns, "eth0") as inside:
        inside.flush()
        subprocess.run(
            ["ip", "netns", "exec", lab.ext, "ping", "-c", "2", "-i", "0.2", "-W", "1", host_ip],
            capture_output=True, check=True,
        )  # fmt: skip
        target = bytes(int(x) for x in host_ip.split("."))
        stolen = [
            c.data
            for c in inside.read_all()
            if not c.outgoing and c.data[12:14] == b"\x08\x00" and c.data[30:34] == target
        ]
    assert stolen == []
