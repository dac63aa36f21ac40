"""The programs forwarding for real: two containers, VEPA through a hairpin switch.

No daemon yet: a small fixture loads the object, fills the maps from an engine
and attaches the programs where the daemon will (the lower's ingress, each veth
peer's ingress, and an inbox with its labelled socket, as daemon/inbox.py makes
it).  ARP is a broadcast, which is the daemon's, so the containers get static
neighbours: what is tested is the unicast the programs forward.
"""

from __future__ import annotations

import os
import select
import subprocess
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lab.capture import PacketSocket
from lab.netns import in_netns, ip, ip_json
from lab.topology import Lab, mac_str
from pymacvtap.bpf.tables import Device, Tables, changes, derive
from pymacvtap.core import Engine, Frame, Mode
from pymacvtap.daemon.inbox import Inbox, key_of
from pymacvtap.io import hooks
from pymacvtap.io.afpacket import PACKET_FANOUT_CBPF, DeviceSocket
from pymacvtap.io.bpf import PROGRAMS, FastPath
from pymacvtap.io.tap import Tap

pytestmark = pytest.mark.root

LOWER = "low0"
LOWER_MAC = bytes.fromhex("02000000aa00")
MACS = {"c1": bytes.fromhex("02000000aa01"), "c2": bytes.fromhex("02000000aa02")}
ADDRS = {"c1": "10.77.0.1", "c2": "10.77.0.2"}
SOL_PACKET, PACKET_IGNORE_OUTGOING = 263, 23


@dataclass
class FastLab:
    lab: Lab
    fastpath: FastPath
    tables: Tables
    netns: dict[str, str]
    engine: Engine
    devices: dict[str, Device]
    inbox: Inbox

    def add_vm(self, name: str, mac: bytes) -> Tap:
        """A VM's tap in the daemon's namespace, added to the running fast path."""
        tap = Tap.open(name, netns=self.lab.host, vnet_hdr=False)
        ip(self.lab.host, "link", "set", name, "up")
        self.lab.fdb_static(mac, self.lab.lowers[LOWER].port)
        self.engine.add_endpoint(name, LOWER, Mode.VEPA, mac, up=True)
        self.devices[name] = Device(ifindex(self.lab.host, name), peer=False)
        new = derive(
            self.engine, {LOWER: ifindex(self.lab.host, LOWER)}, self.devices, previous=self.tables
        )
        self.fastpath.apply(changes(self.tables, new))
        self.tables = new
        with in_netns(self.lab.host):
            self.fastpath.attach(self.devices[name].ifindex, "endpoint_ingress")
        return tap


def ifindex(netns: str, name: str) -> int:
    return int(ip_json(netns, "link", "show", "dev", name)[0]["ifindex"])


@pytest.fixture
def fast_lab(request: pytest.FixtureRequest, compiled: Path) -> Iterator[FastLab]:
    """``request.param`` (indirect): the hook to attach by, "tcx" unless a test asks for
    "clsact" (what a kernel without tcx gets)."""
    hook = getattr(request, "param", "tcx")
    with Lab() as lab, FastPath(compiled, hook=hook) as fastpath:
        lab.add_lower(LOWER, LOWER_MAC, hairpin=True)
        engine = Engine(lambda n: bytes(n))
        engine.add_lower(LOWER, LOWER_MAC)
        devices = {}
        netns = {}
        for name, mac in MACS.items():
            ns = netns[name] = lab.add_netns(name)
            peer = f"pv-{name}"
            ip(lab.host, "link", "add", peer, "type", "veth", "peer", "name", "eth0",
               "netns", ns, "address", mac_str(mac))  # fmt: skip
            ip(lab.host, "link", "set", peer, "up")
            ip(ns, "link", "set", "eth0", "up")
            ip(ns, "addr", "add", f"{ADDRS[name]}/24", "dev", "eth0")
            lab.fdb_static(mac, lab.lowers[LOWER].port)
            engine.add_endpoint(name, LOWER, Mode.VEPA, mac, up=True)
            devices[name] = Device(ifindex(lab.host, peer), peer=True)
        for name, other in (("c1", "c2"), ("c2", "c1")):
            ip(netns[name], "neigh", "replace", ADDRS[other], "lladdr", mac_str(MACS[other]),
               "dev", "eth0")  # fmt: skip
        tables = derive(engine, {LOWER: ifindex(lab.host, LOWER)}, devices)
        fastpath.apply(changes(Tables(), tables))
        with in_netns(lab.host):
            inbox = Inbox.open()
        try:
            with in_netns(lab.host):
                fastpath.attach(inbox.ifindex, "inbox_ingress")
                fastpath.set_inbox(inbox.ifindex)
                label, _ = inbox.give(LOWER, endpoint=False)
                fastpath.set_label(ifindex(lab.host, LOWER), label, endpoint=False, queued=False)
                fastpath.attach(ifindex(lab.host, LOWER), "lower_ingress")
                for name in MACS:
                    label, _ = inbox.give(name, endpoint=True)
                    fastpath.set_label(devices[name].ifindex, label, endpoint=True, queued=False)
                    fastpath.attach(devices[name].ifindex, "endpoint_ingress")
            assert fastpath.hook == hook
            yield FastLab(lab, fastpath, tables, netns, engine, devices, inbox)
        finally:
            with in_netns(lab.host):
                inbox.close()


def ping(netns: str, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "ping", "-c", "3", "-i", "0.1", "-W", "1", address],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )


def sniffer(lab: Lab, ifname: str) -> PacketSocket:
    """A socket as the Python data path opens one: own transmissions ignored."""
    sock = PacketSocket(lab.host, ifname)
    sock.sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    return sock


def read_inbox(inbox: Inbox, timeout: float = 1.0) -> list[tuple[int, bytes]]:
    """(label, frame) of what reached the inbox's sockets within ``timeout``; each frame
    on its label's own socket (the fanout program picks it)."""
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for index, sock in enumerate(inbox.sockets):
            frames = sock.recv_batch(64)
            assert sock.labels is not None
            for frame, label in zip(frames, sock.labels, strict=True):
                assert label & 0xFFF == index, (label, index)
                got.append((label, frame.data))
        time.sleep(0.02)
    return got


def icmp_between(frames: list[bytes]) -> list[bytes]:
    macs = set(MACS.values())
    return [f for f in frames if f[0:6] in macs and f[6:12] in macs and f[23:24] == b"\x01"]


@pytest.mark.parametrize("fast_lab", ["tcx", "clsact"], indirect=True)
def test_vepa_pings_both_ways_through_the_hairpin_without_the_daemon(fast_lab: FastLab) -> None:
    lab, fastpath = fast_lab.lab, fast_lab.fastpath
    sockets = {dev: sniffer(lab, dev) for dev in (LOWER, "pv-c1", "pv-c2")}
    try:
        there = ping(fast_lab.netns["c1"], ADDRS["c2"])
        back = ping(fast_lab.netns["c2"], ADDRS["c1"])
        assert there.returncode == 0, there.stdout + there.stderr
        assert back.returncode == 0, back.stdout + back.stderr
        seen = {dev: icmp_between([c.data for c in s.read_all()]) for dev, s in sockets.items()}
    finally:
        for s in sockets.values():
            s.close()
    # Every echo crossed each device (12 on the lower: 6 each way after the
    # hairpin), but none was handed to the daemon.
    assert len(seen[LOWER]) == 12
    assert len(seen["pv-c1"]) == 6
    assert icmp_between([frame for _, frame in read_inbox(fast_lab.inbox, 0.2)]) == []
    # Counted as the engine counts: each endpoint sent and received six.
    for ep in fast_lab.tables.endpoints.values():
        counters = fastpath.counters("endpoint_stats", ep.slot)
        assert counters.tx_packets >= 6 and counters.rx_packets >= 6, (ep.name, counters)
    lower = next(iter(fast_lab.tables.lowers.values()))
    assert fastpath.counters("lower_stats", lower.slot).rx_packets >= 12


@pytest.mark.parametrize("fast_lab", ["tcx", "clsact"], indirect=True)
def test_what_the_programs_leave_reaches_the_inbox_labelled_by_its_device(
    fast_lab: FastLab,
) -> None:
    lab = fast_lab.lab
    payload = b"\x88\xb5" + b"for the daemon" * 4
    from_c1 = b"\xff" * 6 + MACS["c1"] + payload
    from_wire = b"\xff" * 6 + bytes.fromhex("02000000bb01") + payload
    c1 = PacketSocket(fast_lab.netns["c1"], "eth0")
    host = sniffer(lab, LOWER)
    try:
        c1.send(from_c1)
        got = read_inbox(fast_lab.inbox)
        # c1's broadcast, labelled as c1's peer (802.1ad, label 1); out of the lower
        # (by the daemon, not here) it is not.  Nothing of it is left in the frame.
        assert (key_of(True, 1), from_c1) in got, got
        # A broadcast from the wire: labelled as the lower's (802.1Q, label 0), and
        # the host gets it too.
        ext = lab.ext_socket()
        try:
            ext.send(from_wire)
        finally:
            ext.close()
        got = read_inbox(fast_lab.inbox)
        assert (key_of(False, 0), from_wire) in got, got
        assert from_wire in [c.data for c in host.read_all()]
    finally:
        c1.close()
        host.close()


def test_a_label_given_back_takes_its_unread_frames_with_it(fast_lab: FastLab) -> None:
    """What a removed device sent and the daemon did not read must not be taken for the
    frames of the next device to get its label."""
    inbox, c1 = fast_lab.inbox, PacketSocket(fast_lab.netns["c1"], "eth0")
    label, _ = inbox.give("c1", endpoint=True)
    try:
        c1.send(b"\xff" * 6 + MACS["c1"] + b"\x88\xb5" + b"left behind".ljust(46, b"."))
    finally:
        c1.close()
    deadline = time.monotonic() + 2
    while not select.select([inbox.sockets[label]], [], [], 0)[0]:
        assert time.monotonic() < deadline, "c1's frame never reached its inbox socket"
        time.sleep(0.02)
    with in_netns(fast_lab.lab.host):
        fast_lab.fastpath.delete_label(fast_lab.devices["c1"].ifindex)
    assert inbox.take_back("c1", endpoint=True) == label
    assert inbox.give("newcomer", endpoint=True) == (label, None)
    assert inbox.sockets[label].recv_batch(64) == []


def test_an_inbox_whose_fanout_group_id_is_taken_picks_another(fast_lab: FastLab) -> None:
    """Fanout group ids belong to the namespace: another daemon's (or anyone's) group with
    the id this daemon would take does not stop it."""
    with in_netns(fast_lab.lab.host):
        # The fixture's inbox has this process's id; someone else's group the next one.
        squatter = DeviceSocket(LOWER, ring_size=0)
        taken = (os.getpid() + 1) & 0xFFFF
        squatter.join_fanout(taken, PACKET_FANOUT_CBPF)
        second = Inbox("pv-c2")  # a device of the lab's, not a new inbox: not closed here
        second._group = taken  # as if this daemon's pid gave it that id
        try:
            label, sock = second.give("x", endpoint=True)
            assert (label, sock is not None) == (0, True)
            assert second._group not in (taken, fast_lab.inbox._group)
        finally:
            for s in second.sockets:
                s.close()
            squatter.close()


def read_for(tap: Tap, dst: bytes, timeout: float = 2.0) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = [f.data for f in tap.read_batch(0, 64) if f.data[0:6] == dst]
        if got:
            return got
        time.sleep(0.02)
    return []


def test_a_vm_tap_is_reached_by_redirect_and_sends_through_the_lower(fast_lab: FastLab) -> None:
    vm_mac = bytes.fromhex("02000000aa03")
    tap = fast_lab.add_vm("vm0", vm_mac)
    payload = b"\x88\xb5" + b"fast path" * 6
    c1 = PacketSocket(fast_lab.netns["c1"], "eth0")
    c2 = PacketSocket(fast_lab.netns["c2"], "eth0")
    try:
        # c1 -> vm0: out of the lower, back by the hairpin, redirected to the tap.
        c1.send(vm_mac + MACS["c1"] + payload)
        assert read_for(tap, vm_mac) == [vm_mac + MACS["c1"] + payload]
        # vm0 -> c2: what QEMU writes enters the tap, leaves by the lower, comes back.
        c2.flush()
        tap.write_batch(deque([Frame(MACS["c2"] + vm_mac + payload)]), 1)
        deadline = time.monotonic() + 2
        got: list[bytes] = []
        while not got and time.monotonic() < deadline:
            got = [c.data for c in c2.read_all() if c.data[6:12] == vm_mac]
            time.sleep(0.02)
        assert got == [MACS["c2"] + vm_mac + payload]
    finally:
        c1.close()
        c2.close()
        tap.close()
    vm = fast_lab.tables.endpoints[(ifindex(fast_lab.lab.host, LOWER), vm_mac)]
    counters = fast_lab.fastpath.counters("endpoint_stats", vm.slot)
    assert (counters.rx_packets, counters.tx_packets) == (1, 1)


def tc_filters(netns: str, dev: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "tc", "filter", "show", "dev", dev, "ingress"],
        capture_output=True, text=True, check=False,
    ).stdout  # fmt: skip


@pytest.mark.parametrize("fast_lab", ["tcx", "clsact"], indirect=True)
def test_detaching_leaves_a_users_own_filters_on_the_lower(fast_lab: FastLab) -> None:
    host = fast_lab.lab.host
    lower = ifindex(host, LOWER)
    # A filter of the user's (classic BPF, "pass"; this kernel has no other classifier).
    subprocess.run(["ip", "netns", "exec", host, "tc", "qdisc", "replace", "dev", LOWER, "clsact"],
                   check=True)  # fmt: skip
    subprocess.run(
        ["ip", "netns", "exec", host, "tc", "filter", "add", "dev", LOWER, "ingress",
         "pref", "7", "bpf", "bytecode", "1,6 0 0 0,", "classid", "1:1"],
        check=True,
    )  # fmt: skip
    with in_netns(host):
        assert hooks.attached(lower, PROGRAMS) == [(fast_lab.fastpath.hook, "lower_ingress")]
        FastPath.detach(lower)
        assert not FastPath.ours_attached(lower)
        assert hooks.attached(lower, PROGRAMS) == []
    left = tc_filters(host, LOWER)
    assert "lower_ingress" not in left and "bytecode" in left
    # Where nothing else was on it, no clsact qdisc stays behind our program.
    name = next(iter(MACS))
    with in_netns(host):
        FastPath.detach(fast_lab.devices[name].ifindex)
        assert hooks.attached(fast_lab.devices[name].ifindex, PROGRAMS) == []
    qdiscs = subprocess.run(
        ["ip", "netns", "exec", host, "tc", "qdisc", "show", "dev", f"pv-{name}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "clsact" not in qdiscs


def test_the_programs_a_daemon_loaded_come_off_by_their_fds(fast_lab: FastLab) -> None:
    """Without looking programs up by id (BPF_PROG_GET_FD_BY_ID needs CAP_SYS_ADMIN): no
    names to look for here, so only the fds can take the program off."""
    lower = ifindex(fast_lab.lab.host, LOWER)
    with in_netns(fast_lab.lab.host):
        assert hooks.attached(lower, PROGRAMS) == [("tcx", "lower_ingress")]
        hooks.detach(lower, (), own=fast_lab.fastpath.prog_fds.values())
        assert hooks.attached(lower, PROGRAMS) == []
