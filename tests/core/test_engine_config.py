"""Configuration rules of the engine: addresses, passthru, source lists, MTU, removal, up/down.

References: kernel-reference.md sections 1e, 1f, 3, 4 (drivers/net/macvlan.c:
macvlan_common_newlink, macvlan_changelink, macvlan_changelink_sources, macvlan_validate,
macvlan_set_mac_address, macvlan_open/stop, update_port_bc_queue_len, macvlan_device_event)
and SPEC 2.3 (a duplicate MAC is refused at `link add`, up or down).
"""

from __future__ import annotations

import pytest

from pymacvtap.core import EngineError, Mode, Outcome, format_mac

from .helpers import (
    BROADCAST,
    EXTERNAL,
    GROUP,
    LOWER1_MAC,
    LOWER_MAC,
    UNJOINED,
    WATCHED,
    copies_of,
    eth,
    local_mac,
    new_engine,
    receive,
)


def refused(code: str, call: object, *args: object, **kwargs: object) -> EngineError:
    assert callable(call)
    with pytest.raises(EngineError) as info:
        call(*args, **kwargs)
    assert info.value.code == code, info.value
    return info.value


# -- addresses ------------------------------------------------------------------------------


def test_random_default_mac_is_locally_administered_unicast_and_unique() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    macs = [engine.add_endpoint(f"e{i}", "eth0").mac for i in range(20)]
    assert len(set(macs)) == 20
    for mac in macs:
        assert len(mac) == 6
        assert mac[0] & 0x01 == 0, format_mac(mac)  # unicast
        assert mac[0] & 0x02 == 0x02, format_mac(mac)  # locally administered
        assert mac != bytes(6) and mac != port.mac
    assert [ep.mac for ep in port.endpoints.values()] == macs


def test_random_mac_skips_addresses_in_use() -> None:
    # The entropy source first returns the lower's address, then an endpoint's, then a new one.
    script = [LOWER_MAC, local_mac(7), local_mac(8)]
    from pymacvtap.core import Engine

    engine = Engine(lambda n: script.pop(0)[:n])
    engine.add_lower("eth0", LOWER_MAC)
    engine.add_endpoint("fixed", "eth0", mac=local_mac(7))
    ep = engine.add_endpoint("random", "eth0")
    assert ep.mac == local_mac(8)


@pytest.mark.parametrize(
    ("mac", "text"),
    [
        (bytes.fromhex("01005e000001"), "01:00:5e:00:00:01"),
        (BROADCAST, "ff:ff:ff:ff:ff:ff"),
        (bytes.fromhex("030000000001"), "03:00:00:00:00:01"),
        (bytes(6), "00:00:00:00:00:00"),
    ],
)
def test_invalid_user_mac_refused_with_eaddrnotavail(mac: bytes, text: str) -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    err = refused("EADDRNOTAVAIL", engine.add_endpoint, "bad", "eth0", Mode.VEPA, mac)
    assert text in str(err)
    assert "bad" not in engine.endpoints and not port.endpoints  # nothing half-created
    engine.add_endpoint("ok", "eth0", Mode.VEPA, local_mac(1), up=True)
    err = refused("EADDRNOTAVAIL", engine.set_mac, "ok", mac)
    assert text in str(err)
    assert engine.endpoint("ok").mac == local_mac(1)
    assert port.by_mac == {local_mac(1): engine.endpoint("ok")}


@pytest.mark.parametrize("other_up", [True, False])
def test_duplicate_mac_refused_at_add_even_when_the_holder_is_down(other_up: bool) -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    engine.add_lower("eth1", LOWER1_MAC)
    engine.add_endpoint("a", "eth0", Mode.VEPA, local_mac(1), up=other_up)
    err = refused("EADDRINUSE", engine.add_endpoint, "b", "eth0", Mode.BRIDGE, local_mac(1))
    assert format_mac(local_mac(1)) in str(err)
    assert "b" not in engine.endpoints and list(port.endpoints) == ["a"]
    # The same address on another lower is another network: allowed.
    other = engine.add_endpoint("b", "eth1", Mode.BRIDGE, local_mac(1), up=True)
    assert other.mac == local_mac(1)
    # Changing an address to a busy one is refused too (checked even when down).
    engine.add_endpoint("c", "eth0", Mode.VEPA, local_mac(3))
    err = refused("EADDRINUSE", engine.set_mac, "c", local_mac(1))
    assert format_mac(local_mac(1)) in str(err)
    assert engine.endpoint("c").mac == local_mac(3)
    engine.set_mac("c", local_mac(3))  # the same address: a no-op
    assert engine.endpoint("c").mac == local_mac(3)


def test_lower_mac_refused_for_endpoints() -> None:
    engine = new_engine()
    engine.add_lower("eth0", LOWER_MAC)
    err = refused("EADDRINUSE", engine.add_endpoint, "a", "eth0", Mode.VEPA, LOWER_MAC)
    assert format_mac(LOWER_MAC) in str(err)
    engine.add_endpoint("a", "eth0", Mode.VEPA, local_mac(1))
    refused("EADDRINUSE", engine.set_mac, "a", LOWER_MAC)


def test_set_mac_while_up_rehashes() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    ep = engine.add_endpoint("a", "eth0", Mode.VEPA, local_mac(1), up=True)
    engine.set_mac("a", local_mac(2))
    assert port.by_mac == {local_mac(2): ep}
    assert receive(engine, port, eth(local_mac(1), EXTERNAL)).outcome is Outcome.NOT_OURS
    assert receive(engine, port, eth(local_mac(2), EXTERNAL)).receivers == [ep]
    # The old address is free again.
    engine.add_endpoint("b", "eth0", Mode.VEPA, local_mac(1))


# -- passthru -------------------------------------------------------------------------------


def test_passthru_takes_the_lower_and_its_address() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    pt = engine.add_endpoint("pt", "eth0", Mode.PASSTHRU, up=True)
    assert pt.mac == LOWER_MAC and port.passthru is pt
    for mode in Mode:
        refused("EINVAL", engine.add_endpoint, f"x{mode.value}", "eth0", mode)
    assert list(port.endpoints) == ["pt"]
    # The lower's address changes: the passthru endpoint follows it.
    engine.set_lower_mac("eth0", local_mac(5))
    assert pt.mac == local_mac(5) and port.by_mac == {local_mac(5): pt}
    frame = eth(GROUP, local_mac(5))  # its own group frame reflected: back to it alone
    assert receive(engine, port, frame).receivers == [pt]
    # Setting the endpoint's address sets the lower's.
    engine.set_mac("pt", local_mac(6))
    assert port.mac == local_mac(6) and pt.mac == local_mac(6)
    assert port.by_mac == {local_mac(6): pt}
    # Once it is gone the lower takes any endpoint again.
    engine.remove_endpoint("pt")
    assert port.passthru is None
    engine.add_endpoint("v", "eth0", Mode.VEPA, local_mac(1))


def test_passthru_refused_when_the_lower_has_endpoints() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    engine.add_endpoint("v", "eth0", Mode.VEPA, local_mac(1), up=False)
    refused("EINVAL", engine.add_endpoint, "pt", "eth0", Mode.PASSTHRU)
    assert port.passthru is None and list(port.endpoints) == ["v"]


def test_mode_cannot_change_to_or_from_passthru() -> None:
    engine = new_engine()
    engine.add_lower("eth0", LOWER_MAC)
    engine.add_lower("eth1", LOWER1_MAC)
    engine.add_endpoint("v", "eth0", Mode.VEPA, local_mac(1))
    engine.add_endpoint("pt", "eth1", Mode.PASSTHRU)
    refused("EINVAL", engine.set_mode, "v", Mode.PASSTHRU)
    for mode in (Mode.PRIVATE, Mode.VEPA, Mode.BRIDGE, Mode.SOURCE):
        refused("EINVAL", engine.set_mode, "pt", mode)
    assert engine.endpoint("v").mode is Mode.VEPA
    assert engine.endpoint("pt").mode is Mode.PASSTHRU
    engine.set_mode("pt", Mode.PASSTHRU)  # unchanged: fine
    for mode in (Mode.PRIVATE, Mode.BRIDGE, Mode.SOURCE, Mode.VEPA):
        engine.set_mode("v", mode)
        assert engine.endpoint("v").mode is mode


# -- source mode ----------------------------------------------------------------------------


def test_macaddr_add_del_set_flush() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    s = engine.add_endpoint("s", "eth0", Mode.SOURCE, local_mac(1), up=True)
    a, b, c = WATCHED, EXTERNAL, local_mac(9)
    engine.macaddr("s", "add", [a])
    engine.macaddr("s", "add", [a, b])  # a again: no-op
    assert s.source_macs == {a, b}
    assert port.sources == {a: [s], b: [s]}
    engine.macaddr("s", "del", [c])  # missing: no-op
    assert s.source_macs == {a, b}
    engine.macaddr("s", "del", [a])
    assert s.source_macs == {b} and port.sources == {b: [s]}
    engine.macaddr("s", "set", [a, c])
    assert s.source_macs == {a, c} and port.sources == {a: [s], c: [s]}
    frame = eth(EXTERNAL, a)
    assert receive(engine, port, frame).receivers == [s]
    engine.macaddr("s", "flush")
    assert s.source_macs == set() and port.sources == {}
    frame = eth(EXTERNAL, a)
    assert receive(engine, port, frame).outcome is Outcome.NOT_OURS
    refused("EINVAL", engine.macaddr, "s", "replace", [a])


def test_macaddr_refused_on_other_modes() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    for i, mode in enumerate((Mode.PRIVATE, Mode.VEPA, Mode.BRIDGE), 1):
        ep = engine.add_endpoint(f"e{i}", "eth0", mode, local_mac(i))
        for op in ("add", "del", "set", "flush"):
            refused("EINVAL", engine.macaddr, ep.name, op, [WATCHED])
        assert ep.source_macs == set()
    assert port.sources == {}


def test_macaddr_invalid_address_refused_with_eaddrnotavail() -> None:
    # macvlan_validate: IFLA_MACVLAN_MACADDR (and each MACADDR_DATA entry) that is not a
    # valid unicast address -> -EADDRNOTAVAIL.
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    s = engine.add_endpoint("s", "eth0", Mode.SOURCE, local_mac(1))
    for bad in (GROUP, bytes(6)):
        for op in ("add", "set"):
            err = refused("EADDRNOTAVAIL", engine.macaddr, "s", op, [WATCHED, bad])
            assert format_mac(bad) in str(err)
    assert s.source_macs == set() and port.sources == {}


def test_mode_change_away_from_source_flushes_the_list() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    s = engine.add_endpoint("s", "eth0", Mode.SOURCE, local_mac(1), up=True)
    engine.macaddr("s", "set", [WATCHED, EXTERNAL])
    engine.set_mode("s", Mode.SOURCE)  # same mode: list kept
    assert s.source_macs == {WATCHED, EXTERNAL}
    engine.set_mode("s", Mode.VEPA)
    assert s.source_macs == set() and port.sources == {}
    frame = eth(local_mac(99), WATCHED)
    assert receive(engine, port, frame).outcome is Outcome.NOT_OURS
    engine.set_mode("s", Mode.SOURCE)
    assert s.source_macs == set()


# -- MTU ------------------------------------------------------------------------------------


def test_mtu_range_and_default() -> None:
    engine = new_engine()
    engine.add_lower("eth0", LOWER_MAC, mtu=1500)
    assert engine.add_endpoint("d", "eth0").mtu == 1500
    for bad in (0, 67, 1501, 9000):
        refused("EINVAL", engine.add_endpoint, f"m{bad}", "eth0", Mode.VEPA, None, bad)
        assert f"m{bad}" not in engine.endpoints
        err = refused("EINVAL", engine.set_mtu, "d", bad)
        assert str(bad) in str(err)
    assert engine.endpoint("d").mtu == 1500
    assert engine.add_endpoint("lo", "eth0", mtu=68).mtu == 68
    engine.set_mtu("d", 68)
    engine.set_mtu("d", 1500)
    assert engine.endpoint("d").mtu == 1500


def test_lower_mtu_shrink_clamps_growth_does_not_raise() -> None:
    engine = new_engine()
    engine.add_lower("eth0", LOWER_MAC, mtu=1500)
    big = engine.add_endpoint("big", "eth0")
    mid = engine.add_endpoint("mid", "eth0", mtu=1200)
    small = engine.add_endpoint("small", "eth0", mtu=900)
    clamped = engine.set_lower_mtu("eth0", 1000)
    assert sorted(ep.name for ep in clamped) == ["big", "mid"]
    assert (big.mtu, mid.mtu, small.mtu) == (1000, 1000, 900)
    refused("EINVAL", engine.set_mtu, "small", 1001)
    assert engine.set_lower_mtu("eth0", 9000) == []
    assert (big.mtu, mid.mtu, small.mtu) == (1000, 1000, 900)
    engine.set_mtu("small", 9000)
    assert small.mtu == 9000


# -- removal --------------------------------------------------------------------------------


def test_remove_endpoint_leaves_no_stale_entries() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    keep = engine.add_endpoint("keep", "eth0", Mode.VEPA, local_mac(1), up=True)
    engine.join_group("keep", GROUP)
    gone = engine.add_endpoint("gone", "eth0", Mode.SOURCE, local_mac(2), up=True)
    engine.join_group("gone", GROUP)
    engine.join_group("gone", UNJOINED)
    engine.set_allmulti("gone", True)
    engine.macaddr("gone", "set", [WATCHED, EXTERNAL])
    receive(engine, port, eth(local_mac(1), WATCHED))
    assert len(gone.rx_queue) == 1
    engine.remove_endpoint("gone")
    assert port.by_mac == {local_mac(1): keep}
    assert port.sources == {}
    assert port.groups == {GROUP: 1}
    assert list(port.endpoints) == ["keep"] and "gone" not in engine.endpoints
    assert gone not in port.ready and not gone.rx_queue
    refused("ENODEV", engine.endpoint, "gone")
    # Its name and address can be used again, and nothing reaches the removed endpoint.
    again = engine.add_endpoint("gone", "eth0", Mode.VEPA, local_mac(2), up=True)
    frame = eth(BROADCAST, WATCHED)
    d = receive(engine, port, frame)
    assert sorted(d.receiver_names) == ["gone", "keep"] and gone not in d.receivers
    assert again in d.receivers


def test_remove_lower_removes_its_endpoints_only() -> None:
    engine = new_engine()
    engine.add_lower("eth0", LOWER_MAC)
    eth1 = engine.add_lower("eth1", LOWER1_MAC)
    engine.add_endpoint("a", "eth0", Mode.VEPA, local_mac(1), up=True)
    engine.add_endpoint("b", "eth0", Mode.SOURCE, local_mac(2), up=True)
    engine.macaddr("b", "add", [WATCHED])
    engine.join_group("a", GROUP)
    c = engine.add_endpoint("c", "eth1", Mode.BRIDGE, local_mac(1), up=True)
    removed = engine.remove_lower("eth0")
    assert sorted(ep.name for ep in removed) == ["a", "b"]
    assert all(ep.port is None for ep in removed)
    assert list(engine.endpoints) == ["c"] and list(engine.ports) == ["eth1"]
    refused("ENODEV", engine.port, "eth0")
    assert eth1.by_mac == {local_mac(1): c}
    # The lower can come back, empty, and the names are free.
    port = engine.add_lower("eth0", LOWER_MAC)
    assert port.endpoints == {} and port.sources == {} and port.groups == {}
    engine.add_endpoint("a", "eth0", Mode.VEPA, local_mac(1))


def test_remove_lower_settles_its_queued_broadcasts() -> None:
    # SPEC 2.2: every frame handed to the engine gets a disposition. The kernel frees what is
    # left on the broadcast queue when the port goes (macvlan_port_destroy): those frames
    # must not stay QUEUED forever.
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    engine.add_endpoint("a", "eth0", Mode.VEPA, local_mac(1), up=True)
    pending = [engine.from_lower(port, eth(BROADCAST, EXTERNAL)) for _ in range(3)]
    assert all(d.outcome is Outcome.QUEUED for d in pending)
    engine.remove_lower("eth0")
    engine.process_broadcasts()
    assert [d.outcome for d in pending if d.outcome is Outcome.QUEUED] == []


# -- up / down ------------------------------------------------------------------------------


def test_down_endpoints_receive_nothing_and_leave_the_lower_filter() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    a = engine.add_endpoint("a", "eth0", Mode.VEPA, local_mac(1))
    b = engine.add_endpoint("b", "eth0", Mode.BRIDGE, local_mac(2))
    assert not a.up and port.by_mac == {}  # endpoints start down, like `ip link add`
    engine.join_group("a", GROUP)
    assert port.groups == {}  # joined while down: not on the lower's filter
    engine.set_up("a", True)
    engine.set_up("b", True)
    engine.join_group("b", GROUP)
    assert port.groups == {GROUP: 2}
    engine.set_up("a", False)
    assert port.groups == {GROUP: 1} and port.by_mac == {local_mac(2): b}
    frame = eth(GROUP, EXTERNAL)
    assert receive(engine, port, frame).receivers == [b]
    assert receive(engine, port, eth(local_mac(1), EXTERNAL)).outcome is Outcome.NOT_OURS
    frame = eth(BROADCAST, EXTERNAL)
    assert receive(engine, port, frame).receivers == [b]
    engine.set_up("b", False)
    assert port.groups == {} and port.by_mac == {}
    frame = eth(GROUP, EXTERNAL)
    assert receive(engine, port, frame).outcome is Outcome.NOT_OURS
    assert copies_of(engine, frame) == []
    assert a.stats.rx_packets == 0
    # Back up: the groups come back.
    engine.set_up("a", True)
    assert port.groups == {GROUP: 1}
    assert receive(engine, port, eth(GROUP, EXTERNAL)).receivers == [a]
    engine.leave_group("a", GROUP)
    assert port.groups == {}


def test_allmulti_counts_on_the_lower_while_up() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    a = engine.add_endpoint("a", "eth0", Mode.VEPA, local_mac(1), up=True)
    engine.set_allmulti("a", True)
    assert receive(engine, port, eth(UNJOINED, EXTERNAL)).receivers == [a]
    engine.set_up("a", False)
    assert port.groups == {}
    engine.set_up("a", True)
    engine.set_allmulti("a", False)
    assert port.groups == {}
    assert receive(engine, port, eth(UNJOINED, EXTERNAL)).outcome is Outcome.NOT_OURS


def test_bcqueuelen_is_the_max_over_the_lowers_endpoints() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    other = engine.add_lower("eth1", LOWER1_MAC)
    engine.add_endpoint("a", "eth0", bcqueuelen=10)
    assert port.bcqueuelen == 10
    engine.add_endpoint("b", "eth0")  # default request: 1000
    assert port.bcqueuelen == 1000
    engine.add_endpoint("c", "eth0", bcqueuelen=5000, up=False)  # down ones count too
    assert port.bcqueuelen == 5000
    engine.add_endpoint("x", "eth1", bcqueuelen=7)
    assert other.bcqueuelen == 7 and port.bcqueuelen == 5000
    engine.set_bcqueuelen("c", 20)
    assert port.bcqueuelen == 1000
    engine.remove_endpoint("b")
    assert port.bcqueuelen == 20
    refused("EINVAL", engine.set_bcqueuelen, "a", -1)
    refused("EINVAL", engine.add_endpoint, "d", "eth0", bcqueuelen=-1)
    assert port.bcqueuelen == 20


def test_names_and_lowers() -> None:
    engine = new_engine()
    engine.add_lower("eth0", LOWER_MAC)
    engine.add_lower("eth1", LOWER1_MAC)
    refused("EEXIST", engine.add_lower, "eth0", LOWER_MAC)
    engine.add_endpoint("a", "eth0")
    refused("EEXIST", engine.add_endpoint, "a", "eth1")  # names are unique across lowers
    refused("ENODEV", engine.add_endpoint, "z", "eth9")
    refused("EINVAL", engine.add_endpoint, "", "eth0")
    refused("ENODEV", engine.set_up, "nope", True)


@pytest.mark.parametrize(
    "mode",
    [Mode.PRIVATE | Mode.VEPA, Mode.BRIDGE | Mode.SOURCE, Mode(0)],
    ids=["private+vepa", "bridge+source", "none"],
)
def test_mode_must_be_exactly_one_of_the_five(mode: Mode) -> None:
    # macvlan_validate: IFLA_MACVLAN_MODE other than private/vepa/bridge/passthru/source
    # -> -EINVAL, at creation and at changelink.
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    refused("EINVAL", engine.add_endpoint, "bad", "eth0", mode, local_mac(1))
    assert "bad" not in engine.endpoints and not port.endpoints
    ep = engine.add_endpoint("ok", "eth0", Mode.BRIDGE, local_mac(2))
    refused("EINVAL", engine.set_mode, "ok", mode)
    assert ep.mode is Mode.BRIDGE
