"""netlink.py against real devices: get/set/delete/move, IPv6 off, groups, watching."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Callable

import pytest
from io_helpers import MakeNetns, Veth, in_ns, sh

from pymacvtap.io import netlink
from pymacvtap.io.netlink import LinkEvent, LinkNotFound, LinkWatcher


def _ip_link(ns: str, ifname: str) -> dict[str, object]:
    out = json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", ifname))
    assert isinstance(out, list)
    link = out[0]
    assert isinstance(link, dict)
    return link


def _wait_events(
    watcher: LinkWatcher, want: Callable[[LinkEvent], bool], timeout: float = 3.0
) -> list[LinkEvent]:
    """Events up to and including the first one matching ``want``."""
    seen: list[LinkEvent] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        select.select([watcher.fileno()], [], [], max(0.0, deadline - time.monotonic()))
        for ev in watcher.read_events():
            seen.append(ev)
            if want(ev):
                return seen
    raise AssertionError(f"no matching event; saw {seen}")


def test_link_info(veth: Veth) -> None:
    info = netlink.link_info(veth.b, veth.ns_b)
    ref = _ip_link(veth.ns_b, veth.b)
    assert info.name == veth.b and info.ifindex == ref["ifindex"]
    assert info.mac == bytes.fromhex(str(ref["address"]).replace(":", ""))
    assert info.mtu == 1500 and info.up and info.carrier and info.operstate == "UP"
    assert info.kind == "veth" and not info.promisc
    assert netlink.link_exists(veth.b, veth.ns_b)
    assert not netlink.link_exists(veth.b)  # not in the test's own namespace
    with pytest.raises(LinkNotFound, match="nosuch0"):
        netlink.link_info("nosuch0", veth.ns_b)
    sh("ip", "-n", veth.ns_a, "link", "set", veth.a, "down")
    info = netlink.link_info(veth.b, veth.ns_b)
    assert info.up and not info.carrier and info.operstate != "UP"


def test_set_link(veth: Veth) -> None:
    ns = veth.ns_b
    netlink.set_link(veth.b, ns, address="02:11:22:33:44:55", mtu=1400, up=False, noarp=True)
    ref = _ip_link(ns, veth.b)
    assert ref["address"] == "02:11:22:33:44:55" and ref["mtu"] == 1400
    flags = ref["flags"]
    assert isinstance(flags, list)
    assert "UP" not in flags and "NOARP" in flags
    netlink.set_link(veth.b, ns, address=bytes.fromhex("020000000066"), up=True, noarp=False)
    info = netlink.link_info(veth.b, ns)
    assert info.mac == bytes.fromhex("020000000066") and info.up and not info.flags & 0x80
    netlink.set_link(veth.b, ns, new_name="renamed0", up=False)
    assert netlink.link_exists("renamed0", ns) and not netlink.link_exists(veth.b, ns)
    netlink.set_link("renamed0", ns)  # nothing to change
    with pytest.raises(OSError) as exc:
        netlink.set_link("renamed0", ns, mtu=10)
    assert exc.value.errno is not None and "renamed0" in str(exc.value)
    with pytest.raises(LinkNotFound):
        netlink.set_link("nosuch0", ns, up=True)


def test_delete_is_idempotent(veth: Veth) -> None:
    netlink.delete_link(veth.b, veth.ns_b)
    assert not netlink.link_exists(veth.b, veth.ns_b)
    assert not netlink.link_exists(veth.a, veth.ns_a)  # a veth goes as a pair
    netlink.delete_link(veth.b, veth.ns_b)
    netlink.delete_link("whatever0", "pmvt-io-no-such-ns")


def test_move_link(make_netns: MakeNetns, veth: Veth) -> None:
    target = make_netns()
    netlink.move_link(veth.b, target, veth.ns_b)
    assert not netlink.link_exists(veth.b, veth.ns_b)
    assert netlink.link_info(veth.b, target).kind == "veth"
    netlink.move_link(veth.b, f"/run/netns/{veth.ns_b}", target)  # by path, back
    assert netlink.link_exists(veth.b, veth.ns_b)


def test_disable_ipv6(make_netns: MakeNetns) -> None:
    ns = make_netns(ipv6=True)
    sh("ip", "-n", ns, "link", "add", "v6a", "type", "veth", "peer", "name", "v6b")
    path = "/proc/sys/net/ipv6/conf/v6a/disable_ipv6"
    assert in_ns(ns, "cat", path).strip() == "0"
    netlink.disable_ipv6("v6a", ns)
    assert in_ns(ns, "cat", path).strip() == "1"
    assert in_ns(ns, "cat", "/proc/sys/net/ipv6/conf/v6b/disable_ipv6").strip() == "0"
    with pytest.raises(LinkNotFound):
        netlink.disable_ipv6("nosuch0", ns)


def test_multicast_groups(veth: Veth) -> None:
    """Read in a worker thread: /proc/self/net would show the main thread's namespace."""
    before = netlink.multicast_groups(veth.b, veth.ns_b)
    assert bytes.fromhex("01005e000001") in before  # all-hosts, joined by IPv4 on up
    sh("ip", "-n", veth.ns_b, "maddr", "add", "01:00:5e:01:02:03", "dev", veth.b)
    sh("ip", "-n", veth.ns_b, "maddr", "add", "33:33:00:00:00:42", "dev", veth.b)
    result: list[set[bytes]] = []
    worker = threading.Thread(
        target=lambda: result.append(netlink.multicast_groups(veth.b, veth.ns_b))
    )
    worker.start()
    worker.join()
    assert result[0] == before | {bytes.fromhex("01005e010203"), bytes.fromhex("333300000042")}
    assert netlink.multicast_groups(veth.a, veth.ns_a) == netlink.multicast_groups(
        veth.a, veth.ns_a
    )
    assert bytes.fromhex("01005e010203") not in netlink.multicast_groups(veth.a, veth.ns_a)
    with pytest.raises(LinkNotFound):
        netlink.multicast_groups("nosuch0", veth.ns_b)
    # One read for every device of the namespace: the same lists, by name.
    every = netlink.all_multicast_groups(veth.ns_b)
    assert every[veth.b] == result[0]
    assert veth.a not in every  # it lives in the other namespace
    assert netlink.all_multicast_groups(veth.ns_a)[veth.a] == netlink.multicast_groups(
        veth.a, veth.ns_a
    )


def test_link_watcher(veth: Veth) -> None:
    ns = veth.ns_b
    with LinkWatcher(ns) as watcher:
        assert watcher.read_events() == []
        sh("ip", "-n", ns, "link", "set", veth.b, "down")
        evs = _wait_events(watcher, lambda e: e.ifname == veth.b and e.up is False)
        assert all(e.ifname == veth.b for e in evs)
        sh("ip", "-n", ns, "link", "set", veth.b, "up")
        _wait_events(watcher, lambda e: e.ifname == veth.b and e.up is True)
        sh("ip", "-n", ns, "link", "set", veth.b, "mtu", "1280")
        _wait_events(watcher, lambda e: e.mtu == 1280)
        sh("ip", "-n", ns, "link", "set", veth.b, "address", "02:00:00:00:77:77")
        _wait_events(watcher, lambda e: e.mac == bytes.fromhex("020000007777"))
        # carrier follows the peer, in another namespace
        sh("ip", "-n", veth.ns_a, "link", "set", veth.a, "down")
        _wait_events(watcher, lambda e: e.ifname == veth.b and e.carrier is False)
        sh("ip", "-n", veth.ns_a, "link", "del", veth.a)
        ev = _wait_events(watcher, lambda e: e.deleted)[-1]
        assert ev.ifname == veth.b and ev.up is None
        # events of other namespaces are not ours
        sh("ip", "-n", veth.ns_a, "link", "add", "other0", "type", "veth", "peer", "name", "o1")
        time.sleep(0.1)
        assert watcher.read_events() == []


def test_link_watcher_sees_bridge_port_changes_as_nothing_special(make_netns: MakeNetns) -> None:
    """Bridge-port notifications (AF_BRIDGE) share the group; their DELLINK is no deletion."""
    ns = make_netns()
    sh("ip", "-n", ns, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", ns, "link", "add", "p0", "type", "veth", "peer", "name", "p1")
    sh("ip", "-n", ns, "link", "set", "p0", "master", "br0")
    with LinkWatcher(ns) as watcher:
        sh("ip", "-n", ns, "link", "set", "p0", "nomaster")
        sh("ip", "-n", ns, "link", "set", "p0", "mtu", "1300")
        evs = _wait_events(watcher, lambda e: e.ifname == "p0" and e.mtu == 1300)
        assert not any(e.deleted for e in evs)


def test_link_watcher_recovers_from_overrun(veth: Veth) -> None:
    ns = veth.ns_b
    with LinkWatcher(ns) as watcher:
        watcher.read_events()
        watcher._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # tiny: force ENOBUFS
        for i in range(40):
            sh("ip", "-n", ns, "link", "set", veth.b, "mtu", str(1300 + i))
        sh("ip", "-n", ns, "link", "add", "late0", "type", "veth", "peer", "name", "late1")
        sh("ip", "-n", ns, "link", "del", veth.b)
        evs = watcher.read_events()
        assert watcher.overruns >= 1
        assert any(e.ifname == veth.b and e.deleted for e in evs)
        assert any(e.ifname == "late0" and not e.deleted for e in evs)
