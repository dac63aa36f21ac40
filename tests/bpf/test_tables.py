"""derive and changes: what the maps hold, and the order they are changed in."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from pymacvtap.bpf.tables import (
    DeleteDevice,
    DeleteEndpoint,
    DeleteSource,
    Device,
    PutDevice,
    PutEndpoint,
    PutLower,
    PutSource,
    Tables,
    ZeroStats,
    changes,
    derive,
    install,
    unpack_stats,
    withdraw,
    withdrawn,
)
from pymacvtap.core import DropReason, Engine, Mode
from pymacvtap.core.stats import EndpointStats, LowerStats

MAC_A = bytes.fromhex("020000000001")
MAC_B = bytes.fromhex("020000000002")
LOWER_MAC = bytes.fromhex("0200000000ff")


def engine_with_two() -> Engine:
    engine = Engine(lambda n: bytes(n))
    engine.add_lower("eth0", LOWER_MAC, 1500)
    engine.add_endpoint("a", "eth0", Mode.BRIDGE, MAC_A, up=True)
    engine.add_endpoint("b", "eth0", Mode.VEPA, MAC_B, 1400, spoofchk=True)
    return engine


DEVICES = {"a": Device(11, peer=True), "b": Device(12, peer=False)}


def test_derive_holds_every_endpoint_with_its_state() -> None:
    tables = derive(engine_with_two(), {"eth0": 5}, DEVICES)
    assert tables.lowers[5].mtu == 1500 and tables.lowers[5].passthru_mac is None
    a, b = tables.endpoints[(5, MAC_A)], tables.endpoints[(5, MAC_B)]
    assert (a.mode, a.up, a.ifindex, a.peer, a.fast) == (Mode.BRIDGE, True, 11, True, True)
    assert (b.mode, b.up, b.mtu, b.spoofchk, b.peer) == (Mode.VEPA, False, 1400, True, False)
    assert tables.devices == {11: (5, MAC_A), 12: (5, MAC_B)}
    assert {a.slot, b.slot} == {0, 1}


def test_endpoints_without_a_device_or_under_capture_are_the_daemons() -> None:
    tables = derive(engine_with_two(), {"eth0": 5}, {"a": DEVICES["a"]}, capture=["a"])
    assert not tables.endpoints[(5, MAC_A)].fast
    assert not tables.endpoints[(5, MAC_B)].fast  # a socket frontend: no device
    assert tables.devices == {11: (5, MAC_A)}


def test_a_macnat_endpoint_is_the_daemons() -> None:
    """Its frames are rewritten on the way out and claimed by IP on the way in (SPEC 9)."""
    engine = engine_with_two()
    engine.set_macnat("a", True)
    tables = derive(engine, {"eth0": 5}, DEVICES)
    assert not tables.endpoints[(5, MAC_A)].fast
    assert tables.devices == {11: (5, MAC_A), 12: (5, MAC_B)}
    # It may claim frames for the lower's own MAC: the host's frames go to the daemon too.
    assert tables.lowers[5].claims
    assert not derive(engine_with_two(), {"eth0": 5}, DEVICES).lowers[5].claims


def test_lowers_the_fast_path_does_not_serve_are_left_out() -> None:
    assert derive(engine_with_two(), {}, DEVICES) == Tables()


def test_passthru_names_its_endpoint_and_sources_only_up_listeners() -> None:
    engine = Engine(lambda n: bytes(n))
    engine.add_lower("eth0", LOWER_MAC)
    engine.add_lower("eth1", MAC_B)
    engine.add_endpoint("p", "eth0", Mode.PASSTHRU, up=True)
    engine.add_endpoint("s", "eth1", Mode.SOURCE, MAC_A, up=True)
    engine.add_endpoint("t", "eth1", Mode.SOURCE, LOWER_MAC)
    engine.macaddr("s", "set", [MAC_B])
    engine.macaddr("t", "set", [LOWER_MAC])
    tables = derive(engine, {"eth0": 5, "eth1": 6}, {})
    assert tables.lowers[5].passthru_mac == LOWER_MAC
    assert tables.sources == {(6, MAC_B)}


def test_slots_are_kept_across_changes_and_reused_after_removal() -> None:
    engine = engine_with_two()
    first = derive(engine, {"eth0": 5}, DEVICES)
    engine.remove_endpoint("a")
    engine.add_endpoint("c", "eth0", Mode.VEPA, MAC_A)
    second = derive(engine, {"eth0": 5}, DEVICES, previous=first)
    assert second.endpoints[(5, MAC_B)].slot == first.endpoints[(5, MAC_B)].slot
    assert second.endpoints[(5, MAC_A)].slot == first.endpoints[(5, MAC_A)].slot  # a's, freed


def test_changes_from_nothing_zero_the_counters_before_writing() -> None:
    tables = derive(engine_with_two(), {"eth0": 5}, DEVICES)
    ops = changes(Tables(), tables)
    zeroed = [i for i, op in enumerate(ops) if isinstance(op, ZeroStats)]
    written = [i for i, op in enumerate(ops) if isinstance(op, PutEndpoint | PutLower)]
    assert len(zeroed) == 3 and max(zeroed) < min(written)
    assert changes(tables, tables) == []


def test_a_changed_endpoint_leaves_the_fast_path_before_it_returns() -> None:
    engine = engine_with_two()
    old = derive(engine, {"eth0": 5}, DEVICES)
    engine.set_mode("a", Mode.VEPA)
    new = derive(engine, {"eth0": 5}, DEVICES, previous=old)
    ops = changes(old, new)
    entry = new.endpoints[(5, MAC_A)]
    slow = withdrawn(entry)
    assert not slow.fast and not slow.on.fast
    # The device's copy (what endpoint_ingress reads) follows the entry, phase by phase.
    assert ops == [PutEndpoint(slow), PutDevice(11, slow), PutEndpoint(entry), PutDevice(11, entry)]


def test_an_address_change_removes_the_old_entry_and_device_first() -> None:
    engine = engine_with_two()
    old = derive(engine, {"eth0": 5}, DEVICES)
    new_mac = bytes.fromhex("020000000003")
    engine.set_mac("a", new_mac)
    new = derive(engine, {"eth0": 5}, DEVICES, previous=old)
    ops = changes(old, new)
    assert ops == [
        DeleteEndpoint(5, MAC_A),
        DeleteDevice(11),
        PutEndpoint(new.endpoints[(5, new_mac)]),
        PutDevice(11, new.endpoints[(5, new_mac)]),
    ]


def test_source_listeners_are_added_first_and_removed_last() -> None:
    engine = engine_with_two()
    engine.add_endpoint("s", "eth0", Mode.SOURCE, bytes.fromhex("020000000007"), up=True)
    old = derive(engine, {"eth0": 5}, DEVICES)
    engine.macaddr("s", "set", [MAC_B])
    new = derive(engine, {"eth0": 5}, DEVICES, previous=old)
    # The lower's "look in sources" flag changes with them, so the lower leaves the
    # fast path for the change, and with it every endpoint (each carries its copy).
    lower = new.lowers[5]
    assert lower.sources and not old.lowers[5].sources
    ops = changes(old, new)
    split = ops.index(PutSource(5, MAC_B)) + 1
    first, second = ops[:split], ops[split:]
    assert first[0] == PutLower(5, dataclasses.replace(lower, fast=False))
    assert [op for op in first if isinstance(op, PutEndpoint)] == [
        PutEndpoint(withdrawn(e)) for e in new.endpoints.values()
    ]
    assert second[0] == PutLower(5, lower)
    assert [op for op in second if isinstance(op, PutEndpoint)] == [
        PutEndpoint(e) for e in new.endpoints.values()
    ]
    back = changes(new, old)
    assert back[0] == PutLower(5, dataclasses.replace(old.lowers[5], fast=False))
    assert back[-1] == DeleteSource(5, MAC_B)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.sampled_from(
                ["up", "down", "mode", "mtu", "spoofchk", "capture", "lower-mtu", "carrier"]
            ),
        ),
        max_size=6,
    )
)
def test_between_any_two_configurations_nothing_forwards_by_a_mix(steps: list) -> None:  # type: ignore[type-arg]
    """After the first phase, every forwarding entry is one both tables agree on."""
    engine = engine_with_two()
    old = derive(engine, {"eth0": 5}, DEVICES)
    captured: set[str] = set()
    for name, what in steps:
        ep = engine.endpoints[name]
        if what in ("up", "down"):
            engine.set_up(name, what == "up")
        elif what == "mode":
            engine.set_mode(name, Mode.BRIDGE if ep.mode is Mode.VEPA else Mode.VEPA)
        elif what == "mtu":
            engine.set_mtu(name, 1000 if ep.mtu == 1500 else 1500)
        elif what == "spoofchk":
            engine.set_spoofchk(name, not ep.spoofchk)
        elif what == "lower-mtu":
            engine.set_lower_mtu("eth0", 9000 if engine.ports["eth0"].mtu == 1500 else 1500)
        elif what == "carrier":
            engine.set_lower_carrier("eth0", not engine.ports["eth0"].up)
        else:
            captured ^= {name}
    new = derive(engine, {"eth0": 5}, DEVICES, capture=captured, previous=old)
    state = dict(old.endpoints)
    copies = {ifindex: old.endpoints[owner] for ifindex, owner in old.devices.items()}

    def apply(op: object) -> None:
        if isinstance(op, PutEndpoint):
            state[(op.entry.lower, op.entry.mac)] = op.entry
        elif isinstance(op, DeleteEndpoint):
            del state[(op.lower, op.mac)]
        elif isinstance(op, PutDevice):
            copies[op.ifindex] = op.entry
        elif isinstance(op, DeleteDevice):
            del copies[op.ifindex]

    for op in withdraw(old, new):
        apply(op)
    # Whatever the programs still decide by in between is unchanged: the same in old
    # and new, in the endpoints map (with its lower's copy) and in the devices' copies.
    for ep in state.values():
        if ep.on.fast:
            assert old.endpoints[(ep.lower, ep.mac)] == ep == new.endpoints[(ep.lower, ep.mac)]
    for ep in copies.values():
        if ep.fast:
            assert old.endpoints[(ep.lower, ep.mac)] == ep == new.endpoints[(ep.lower, ep.mac)]
    # And the second phase ends in exactly the new tables.
    for op in install(old, new):
        apply(op)
    assert state == new.endpoints
    assert copies == {ifindex: new.endpoints[owner] for ifindex, owner in new.devices.items()}


def test_counters_sum_the_cpus_and_fold_into_the_engines() -> None:
    one_cpu = (1).to_bytes(8, "little") + (100).to_bytes(8, "little") + bytes(16)
    drops = bytearray(64)
    drops[8 * 6 : 8 * 7] = (2).to_bytes(8, "little")  # FP_SPOOFED
    not_ours = (3).to_bytes(8, "little")
    raw = (one_cpu + bytes(drops) + not_ours) * 2
    counters = unpack_stats(raw, 2)
    assert (counters.rx_packets, counters.rx_bytes) == (2, 200)
    assert counters.drops == {DropReason.SPOOFED: 4}
    assert counters.rx_not_ours == 6
    lower = LowerStats()
    dataclasses.replace(counters, drops={}).add_to(lower)
    assert (lower.rx_packets, lower.rx_not_ours) == (2, 6)
    stats = EndpointStats()
    counters.add_to(stats)
    assert (stats.rx_packets, stats.tx_dropped, stats.drops) == (2, 4, {DropReason.SPOOFED: 4})


def test_tables_is_sans_io() -> None:
    """It imports the engine and pure helpers only: the daemon owns every fd."""
    import ast
    import inspect

    import pymacvtap.bpf.tables as tables

    allowed = {"__future__", "dataclasses", "struct", "collections.abc"}
    for node in ast.walk(ast.parse(inspect.getsource(tables))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            assert name in allowed or name.startswith("pymacvtap.core"), name
