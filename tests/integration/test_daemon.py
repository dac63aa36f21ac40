"""The daemon end to end: real namespaces, a hairpin bridge as the VEPA switch, the real CLI.

Each test builds the lab of SPEC 8 (lab/), starts ``pymacvtap daemon``
in the host namespace and drives it with ``pymacvtap`` commands, then checks
what containers can reach and what the counters say.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lab import Lab, PacketSocket, ip, ip_json
from lab.daemon import DaemonProcess, wait_until
from lab.fixtures import LOWER_MAC, Containers
from lab.monitor import EventMonitor
from lab.transfer import DigestReceiver
from lab.users import temporary_user
from pymacvtap.daemon.state import StateStore

ETH_P_TEST = 0x88B5


def frame(dst: bytes, src: bytes, payload: bytes) -> bytes:
    return dst + src + ETH_P_TEST.to_bytes(2, "big") + payload.ljust(46, b"\0")


def mac_of(daemon: DaemonProcess, name: str) -> bytes:
    return bytes.fromhex(daemon.show(name)["address"].replace(":", ""))


# -- reachability -------------------------------------------------------------------------


def test_vepa_ping_and_tcp_transfer_through_the_hairpin(
    containers: Containers, tmp_path: Path
) -> None:
    containers.add("c1", "vepa")
    containers.add("c2", "vepa")
    assert containers.ping("c1", "c2", count=3)
    assert containers.ping("c1", "ext")

    # A TCP transfer of 4 MiB from c1 to c2, checked end to end by digest: with
    # offloads it crosses the daemon as super-frames, twice (out and back in).
    blob = os.urandom(4 << 20)
    src = tmp_path / "blob"
    src.write_bytes(blob)
    with DigestReceiver(containers.netns["c2"], 5201) as receiver:
        subprocess.run(
            ["ip", "netns", "exec", containers.netns["c1"], sys.executable, "-c",
             "import socket,sys\n"
             f"c=socket.create_connection(('{containers.address['c2']}',5201),timeout=20)\n"
             f"c.sendall(open('{src}','rb').read());c.close()\n"],
            check=True,
            timeout=60,
        )  # fmt: skip
        size, digest = receiver.result()
    assert size == len(blob)
    assert digest == hashlib.sha256(blob).hexdigest()


def test_hairpin_off_vepa_fails_bridge_works(lab: Lab, containers: Containers) -> None:
    lab.set_hairpin("low0", False)
    containers.add("v1", "vepa")
    containers.add("v2", "vepa")
    containers.add("b1", "bridge")
    containers.add("b2", "bridge")
    assert not containers.ping("v1", "v2")
    assert containers.ping("b1", "b2")  # bridge mode: directly, without the switch
    assert containers.ping("v1", "ext")  # the way out still works
    lab.set_hairpin("low0", True)
    assert containers.ping("v1", "v2")


def test_private_endpoints_cannot_arp_each_other(containers: Containers) -> None:
    containers.add("p1", "private")
    containers.add("p2", "private")
    assert not containers.ping("p1", "p2")
    neighbours = ip_json(containers.netns["p1"], "neigh", "show", "dev", "eth0")
    states = {n["dst"]: n.get("state", []) for n in neighbours}
    assert containers.address["p2"] in states
    assert "REACHABLE" not in states[containers.address["p2"]]
    # Both still reach the outside world, which answers their ARP.
    assert containers.ping("p1", "ext")
    assert containers.ping("p2", "ext")


def test_broadcast_reaches_exactly_the_endpoints_the_kernel_would(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    for name, mode in (("v1", "vepa"), ("v2", "vepa"), ("p1", "private"), ("b1", "bridge")):
        containers.add(name, mode)
    # No IP stack chatter: the test frames have their own ethertype and nonce.
    sockets = {n: PacketSocket(containers.netns[n], "eth0") for n in containers.netns}
    ext = lab.ext_socket()
    try:
        for s in [*sockets.values(), ext]:
            s.flush()

        def receivers(nonce: bytes) -> set[str]:
            time.sleep(0.3)
            got = set()
            for name, s in sockets.items():
                if any(nonce in c.data for c in s.read_all() if not c.outgoing):
                    got.add(name)
            return got

        bcast = b"\xff" * 6
        ext.send(frame(bcast, lab.ext_mac, b"from-ext"))
        assert receivers(b"from-ext") == {"v1", "v2", "p1", "b1"}
        sockets["v1"].send(frame(bcast, mac_of(daemon, "v1"), b"from-v1"))
        assert receivers(b"from-v1") == {"v2", "b1"}  # reflected copy; never back to v1
        sockets["p1"].send(frame(bcast, mac_of(daemon, "p1"), b"from-p1"))
        assert receivers(b"from-p1") == {"p1"}  # the reflection goes to the sender only
        sockets["b1"].send(frame(bcast, mac_of(daemon, "b1"), b"from-b1"))
        assert receivers(b"from-b1") == {"v1", "v2"}  # vepa via hairpin, no bridge peer
    finally:
        for s in [*sockets.values(), ext]:
            s.close()


def test_counters_equal_the_frames_sent(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "vepa")
    containers.add("c2", "vepa")
    c2_mac = mac_of(daemon, "c2")
    c1_mac = mac_of(daemon, "c1")
    before = {n: daemon.show(n, stats=True)["stats64"] for n in ("c1", "c2")}
    count = 200
    with PacketSocket(containers.netns["c1"], "eth0") as s:
        for i in range(count):
            s.send(frame(c2_mac, c1_mac, b"count%d" % i))
    size = 60  # 14 + 46 bytes of padded payload

    def settled() -> bool:
        return daemon.show("c2", stats=True)["stats64"]["rx"]["packets"] >= (
            before["c2"]["rx"]["packets"] + count
        )

    assert wait_until(settled)
    after = {n: daemon.show(n, stats=True)["stats64"] for n in ("c1", "c2")}
    assert after["c1"]["tx"]["packets"] - before["c1"]["tx"]["packets"] == count
    assert after["c1"]["tx"]["bytes"] - before["c1"]["tx"]["bytes"] == count * size
    assert after["c2"]["rx"]["packets"] - before["c2"]["rx"]["packets"] == count
    assert after["c2"]["rx"]["bytes"] - before["c2"]["rx"]["bytes"] == count * size
    assert after["c1"]["rx"]["packets"] == before["c1"]["rx"]["packets"]
    # The container's own netdev agrees with the daemon.
    kernel = lab.link_stats(containers.netns["c2"])["eth0"]
    assert kernel["rx"]["packets"] >= count


# -- the netdev follows ip, and ip follows the daemon --------------------------------------


def test_plain_ip_link_set_is_followed(daemon: DaemonProcess, containers: Containers) -> None:
    ns = containers.add("c1", "vepa")
    containers.add("c2", "vepa")
    assert daemon.show("c1")["operstate"] == "UP"
    ip(ns, "link", "set", "eth0", "down")
    assert wait_until(lambda: daemon.show("c1")["operstate"] == "DOWN")
    ip(ns, "link", "set", "eth0", "mtu", "1400")
    assert wait_until(lambda: daemon.show("c1")["mtu"] == 1400)
    ip(ns, "link", "set", "eth0", "up")
    assert wait_until(lambda: daemon.show("c1")["operstate"] == "UP")
    assert containers.ping("c1", "c2")
    daemon.cli("link", "set", "c1", "mtu", "1300")
    assert ip_json(ns, "link", "show", "eth0")[0]["mtu"] == 1300
    daemon.cli("link", "set", "c1", "down")
    assert "UP" not in ip_json(ns, "link", "show", "eth0")[0]["flags"]


def test_mtu_is_bounded_by_the_lower_and_clamped_when_it_shrinks(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    ns = containers.add("c1", "vepa")
    too_big = daemon.run_cli("link", "set", "c1", "mtu", "1600")
    assert too_big.returncode == 1
    assert "mtu 1600" in too_big.stderr and "low0" in too_big.stderr
    ip(lab.host, "link", "set", "low0", "mtu", "1400")
    assert wait_until(lambda: daemon.show("c1")["mtu"] == 1400)
    assert wait_until(lambda: ip_json(ns, "link", "show", "eth0")[0]["mtu"] == 1400)
    # Growing the lower again changes nothing, as with kernel macvlan.
    ip(lab.host, "link", "set", "low0", "mtu", "1500")
    time.sleep(0.5)
    assert daemon.show("c1")["mtu"] == 1400


def test_passthru_takes_the_lower_over(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    def lower_promiscuity() -> int:
        return int(ip_json(lab.host, "-d", "link", "show", "low0")[0]["promiscuity"])

    ns = containers.add("p1", "passthru")
    entry = daemon.show("p1")
    assert entry["address"] == LOWER_MAC.hex(":")  # the lower's own address
    assert lower_promiscuity() >= 1
    # Every unicast frame the lower gets is the passthru endpoint's.
    with PacketSocket(ns, "eth0") as s, lab.ext_socket() as ext:
        s.flush()
        ext.send(frame(bytes.fromhex("02aabbccddee"), lab.ext_mac, b"to-anyone"))
        assert wait_until(
            lambda: any(b"to-anyone" in c.data for c in s.read_all() if not c.outgoing), 5
        )
    assert containers.ping("p1", "ext")
    # Setting its address sets the lower's, as in the kernel.
    daemon.cli("link", "set", "p1", "address", "02:00:00:00:0b:99")
    assert ip_json(lab.host, "link", "show", "low0")[0]["address"] == "02:00:00:00:0b:99"
    assert ip_json(ns, "link", "show", "eth0")[0]["address"] == "02:00:00:00:0b:99"
    refused = daemon.run_cli("link", "add", "link", "low0", "name", "x2", "type", "macvlan")
    assert refused.returncode == 1 and "passthru" in refused.stderr
    daemon.cli("link", "del", "p1")
    assert lower_promiscuity() == 0


def test_passthru_nopromisc_leaves_the_lower_alone(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("p1", "passthru", extra=("nopromisc",))
    promiscuity = int(ip_json(lab.host, "-d", "link", "show", "low0")[0]["promiscuity"])
    assert promiscuity == 0
    assert containers.ping("p1", "ext")


def test_carrier_follows_the_lower(lab: Lab, daemon: DaemonProcess, containers: Containers) -> None:
    ns = containers.add("c1", "vepa")

    def flags() -> list[str]:
        return list(ip_json(ns, "link", "show", "eth0")[0]["flags"])

    assert "LOWER_UP" in flags()
    ip(lab.host, "link", "set", "low0", "down")
    assert wait_until(lambda: "NO-CARRIER" in flags())
    assert wait_until(lambda: daemon.show("c1")["operstate"] == "LOWERLAYERDOWN")
    containers.add("c2", "vepa")  # born while the lower has no carrier
    assert "NO-CARRIER" in ip_json(containers.netns["c2"], "link", "show", "eth0")[0]["flags"]
    ip(lab.host, "link", "set", "low0", "up")
    assert wait_until(lambda: "LOWER_UP" in flags() and "NO-CARRIER" not in flags())
    assert wait_until(lambda: daemon.show("c1")["operstate"] == "UP")
    assert containers.ping("c1", "c2")


def test_failed_link_add_leaves_nothing_behind(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "vepa")
    taken = daemon.show("c1")["address"]
    ns = lab.add_netns("c2")
    proc = daemon.run_cli(
        "link", "add", "link", "low0", "name", "c2", "type", "macvlan",
        "address", taken, "netns", ns, "ifname", "eth0",
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("pymacvtap: link add c2: ")
    assert taken in lines[0] and "in use" in lines[0]
    assert [link["ifname"] for link in ip_json(ns, "link", "show")] == ["lo"]
    assert [e["ifname"] for e in daemon.show()] == ["c1"]
    saved = StateStore(str(daemon.state_dir)).load()  # what a restart would restore
    assert [cfg.name for cfg in saved] == ["c1"]


# -- restart, lower removal, authorization ---------------------------------------------


def test_restart_after_sigkill_restores_endpoints_and_traffic(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "vepa")
    containers.add("c2", "bridge", extra=("spoofchk", "on"))
    assert containers.ping("c1", "c2")
    before = {(e["ifname"], e["address"], e["mode"], e["spoofchk"]) for e in daemon.show()}

    fast = daemon.show("c1")["datapath"] == "ebpf"
    daemon.kill()
    # The Python data path really is in the daemon: with it dead, nothing gets through.
    # The fast path's programs go on with the last tables (SPEC 7).
    assert containers.ping("c1", "c2", count=1) == fast
    # The container netdevs and their addresses outlive it.
    addrs = ip_json(containers.netns["c1"], "addr", "show", "dev", "eth0")[0]["addr_info"]
    assert containers.address["c1"] in {a["local"] for a in addrs}

    daemon.start()
    after = {(e["ifname"], e["address"], e["mode"], e["spoofchk"]) for e in daemon.show()}
    assert after == before
    assert all(e["operstate"] == "UP" for e in daemon.show())
    assert containers.ping("c1", "c2")
    assert containers.ping("c2", "ext")


def test_lower_removal_tears_endpoints_down_and_the_daemon_keeps_serving(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    lab.add_lower("low1", bytes.fromhex("020000000b02"), hairpin=True)
    containers.add("c1", "vepa")
    containers.add("c2", "vepa", lower="low1")
    with EventMonitor(daemon.socket) as monitor:
        ip(lab.host, "link", "del", "low0")
        assert wait_until(lambda: [e["ifname"] for e in daemon.show()] == ["c2"])
        assert [link["ifname"] for link in ip_json(containers.netns["c1"], "link")] == ["lo"]
        monitor.wait_event(lambda e: e.get("event") == "link.del")
        events = monitor.events()
    gone = next(e for e in events if e.get("event") == "link.del")
    assert gone["ifname"] == "c1" and "low0" in gone["reason"]
    # The other lower is untouched, and a re-created lower can be used again.
    assert containers.ping("c2", "ext")
    lab.lowers.pop("low0")
    lab.add_lower("low0", LOWER_MAC, hairpin=True)
    containers.add("c3", "vepa")
    assert containers.ping("c3", "c2")


def test_unprivileged_users_are_refused(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "vepa")
    with temporary_user() as user:
        who = (user.pw_uid, user.pw_gid)
        add = daemon.run_cli(
            "link", "add", "link", "low0", "name", "x1", "type", "macvlan", user=who
        )  # fmt: skip
        assert add.returncode == 1, add.stderr
        assert (
            add.stderr.strip()
            == (
                f"pymacvtap: link add x1: permission denied: uid {user.pw_uid} is not root"
                " and no admin group is configured"
            )
            or "permission denied" in add.stderr
        )
        assert len(add.stderr.strip().splitlines()) == 1
        for argv in (("link", "del", "c1"), ("link", "set", "c1", "down")):
            proc = daemon.run_cli(*argv, user=who)
            assert proc.returncode == 1 and "permission denied" in proc.stderr
        # Not the owner: the endpoint is not even listed.
        shown = daemon.run_cli("-j", "link", "show", user=who)
        assert shown.returncode == 0 and json.loads(shown.stdout) == []
    assert [e["ifname"] for e in daemon.show()] == ["c1"]
    assert daemon.show("c1")["operstate"] == "UP"


@pytest.mark.parametrize("datapath", ["python"])  # the fast path forwards without it
def test_sigstop_stops_the_traffic(daemon: DaemonProcess, containers: Containers) -> None:
    containers.add("c1", "bridge")
    containers.add("c2", "bridge")
    assert containers.ping("c1", "c2")
    daemon.signal(signal.SIGSTOP)
    try:
        # Even bridge-mode traffic, which never touches the wire, needs the daemon.
        assert not containers.ping("c1", "c2", count=1)
    finally:
        daemon.signal(signal.SIGCONT)
    assert containers.ping("c1", "c2")


def test_socket_is_reachable_by_everyone(daemon: DaemonProcess) -> None:
    mode = daemon.socket.stat().st_mode & 0o777
    assert mode == 0o666  # authorization is per request (SO_PEERCRED), not by file mode
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(daemon.socket))
