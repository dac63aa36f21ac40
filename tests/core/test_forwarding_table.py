"""Where a frame goes: mode x frame kind x destination x hairpin, from drivers/net/macvlan.c.

Every expectation below was derived from the kernel source, not from the engine:

* macvlan_queue_xmit: a bridge endpoint sends group frames to the other UP bridge endpoints
  (macvlan_broadcast(..., MACVLAN_MODE_BRIDGE)) *and* the wire, and unicast for an UP bridge
  endpoint through the lower's receive path only (dev_forward_skb, no wire); every other mode
  and every other destination goes to the wire.
* macvlan_handle_frame, group destination: source-mode copies first (macvlan_forward_source),
  then, if the source MAC is an UP endpoint whose mode is neither vepa nor bridge, the frame
  goes to that endpoint alone; else it is flooded (macvlan_multicast_rx) to
  private|vepa|passthru|bridge (from outside), vepa|bridge minus the sender (sender vepa) or
  vepa minus the sender (sender bridge), each receiver's own filter permitting.
  macvlan_broadcast never floods PAUSE (0x8808).
* macvlan_handle_frame, unicast: source-mode copies, then the passthru endpoint (everything)
  or the UP endpoint owning the destination; a source-mode owner means "not ours".

The engine used by every row (``build``):

    eth0: p1 p2 private, v1 v2 vepa, b1 b2 bridge, s1 source (lists WATCHED), all UP;
          pd private, vd vepa, bd bridge, DOWN.  GROUP joined by p2 v2 b2 s1 vd bd.
    eth1: x1 bridge, UP (frames never cross lowers).
    eth2: pt passthru, UP.
"""

from __future__ import annotations

import pytest

from pymacvtap.core import DropReason, Engine, Frame, Mode, Outcome, VnetHeader
from pymacvtap.core.frame import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_UDP_L4,
)

from .helpers import (
    BROADCAST,
    ETH_P_8021Q,
    ETH_P_PAUSE,
    EXTERNAL,
    EXTERNAL2,
    GROUP,
    LOWER1_MAC,
    LOWER2_MAC,
    LOWER_MAC,
    PAUSE_DST,
    UNJOINED,
    WATCHED,
    copies_of,
    counted,
    eth,
    local_mac,
    names,
    new_engine,
    on_wire,
    receive,
    send,
    why,
)

D, N = Outcome.DELIVERED, Outcome.NOT_OURS

ENDPOINTS = [
    ("p1", "eth0", Mode.PRIVATE, True),
    ("p2", "eth0", Mode.PRIVATE, True),
    ("v1", "eth0", Mode.VEPA, True),
    ("v2", "eth0", Mode.VEPA, True),
    ("b1", "eth0", Mode.BRIDGE, True),
    ("b2", "eth0", Mode.BRIDGE, True),
    ("s1", "eth0", Mode.SOURCE, True),
    ("pd", "eth0", Mode.PRIVATE, False),
    ("vd", "eth0", Mode.VEPA, False),
    ("bd", "eth0", Mode.BRIDGE, False),
    ("x1", "eth1", Mode.BRIDGE, True),
]
JOINED_GROUP = ("p2", "v2", "b2", "s1", "vd", "bd")


def build() -> Engine:
    engine = new_engine()
    engine.add_lower("eth0", LOWER_MAC)
    engine.add_lower("eth1", LOWER1_MAC)
    engine.add_lower("eth2", LOWER2_MAC)
    for i, (name, lower, mode, up) in enumerate(ENDPOINTS, 1):
        engine.add_endpoint(name, lower, mode, local_mac(i), up=up)
    engine.add_endpoint("pt", "eth2", Mode.PASSTHRU, up=True)
    for name in JOINED_GROUP:
        engine.join_group(name, GROUP)
    engine.macaddr("s1", "add", [WATCHED])
    return engine


def destination(engine: Engine, token: str) -> tuple[bytes, int]:
    """(destination MAC, ethertype) for a row's destination token."""
    fixed = {
        "ext": EXTERNAL2,
        "bcast": BROADCAST,
        "group": GROUP,
        "unjoined": UNJOINED,
        "pause": PAUSE_DST,
    }
    if token == "lower":
        return LOWER_MAC, 0x0800
    if token == "pause":
        return PAUSE_DST, ETH_P_PAUSE
    if token in fixed:
        return fixed[token], 0x0800
    return engine.endpoint(token).mac, 0x0800


# fmt: off
# (sender, destination, hairpin) -> (receivers, wire saw it, outcome of the reflected copy)
ENDPOINT_ROWS = [
    # private: never to siblings directly; unicast reflected is matched on destination only;
    # reflected group frames go back to the sender alone, whatever its filter or ethertype.
    ("p1", "p2", False, "", True, None),
    ("p1", "p2", True, "p2", True, D),
    ("p1", "v2", True, "v2", True, D),
    ("p1", "b2", True, "b2", True, D),
    ("p1", "s1", True, "", True, N),       # owner is source-mode: not ours
    ("p1", "bd", True, "", True, N),       # owner is down: not ours
    ("p1", "x1", True, "", True, N),       # owner is on another lower
    ("p1", "ext", False, "", True, None),
    ("p1", "ext", True, "", True, N),
    ("p1", "lower", True, "", True, N),
    ("p1", "bcast", False, "", True, None),
    ("p1", "bcast", True, "p1", True, D),
    ("p1", "group", False, "", True, None),
    ("p1", "group", True, "p1", True, D),
    ("p1", "unjoined", True, "p1", True, D),
    ("p1", "pause", False, "", True, None),
    ("p1", "pause", True, "p1", True, D),  # the PAUSE check is only in macvlan_broadcast
    # vepa: everything to the wire; reflected floods reach vepa+bridge minus the sender.
    ("v1", "p2", False, "", True, None),
    ("v1", "p2", True, "p2", True, D),
    ("v1", "v2", False, "", True, None),
    ("v1", "v2", True, "v2", True, D),
    ("v1", "b2", False, "", True, None),
    ("v1", "b2", True, "b2", True, D),
    ("v1", "s1", True, "", True, N),
    ("v1", "bd", True, "", True, N),
    ("v1", "ext", False, "", True, None),
    ("v1", "ext", True, "", True, N),
    ("v1", "lower", False, "", True, None),
    ("v1", "lower", True, "", True, N),
    ("v1", "bcast", False, "", True, None),
    ("v1", "bcast", True, "b1 b2 v2", True, D),
    ("v1", "group", False, "", True, None),
    ("v1", "group", True, "b2 v2", True, D),
    ("v1", "unjoined", True, "", True, N),  # not in the lower's filter
    ("v1", "pause", False, "", True, None),
    ("v1", "pause", True, "", True, N),
    # bridge: unicast to an UP bridge endpoint stays local; groups to bridge peers + wire;
    # the reflected copy of a group frame goes to vepa endpoints only.
    ("b1", "p2", False, "", True, None),
    ("b1", "p2", True, "p2", True, D),
    ("b1", "v2", False, "", True, None),
    ("b1", "v2", True, "v2", True, D),
    ("b1", "b2", False, "b2", False, None),
    ("b1", "b2", True, "b2", False, None),
    ("b1", "s1", False, "", True, None),
    ("b1", "s1", True, "", True, N),
    ("b1", "bd", False, "", True, None),   # a down bridge endpoint is not in the hash
    ("b1", "bd", True, "", True, N),
    ("b1", "x1", False, "", True, None),   # a bridge endpoint of another lower
    ("b1", "x1", True, "", True, N),
    ("b1", "ext", False, "", True, None),
    ("b1", "ext", True, "", True, N),
    ("b1", "lower", False, "", True, None),
    ("b1", "lower", True, "", True, N),
    ("b1", "bcast", False, "b2", True, None),
    ("b1", "bcast", True, "b2 v1 v2", True, D),
    ("b1", "group", False, "b2", True, None),
    ("b1", "group", True, "b2 v2", True, D),
    ("b1", "unjoined", False, "", True, None),
    ("b1", "unjoined", True, "", True, N),
    ("b1", "pause", False, "", True, None),  # PAUSE is never flooded, not even to bridge peers
    ("b1", "pause", True, "", True, N),
    # source: transmits like vepa; reflected group frames go back to the sender alone.
    ("s1", "p2", False, "", True, None),
    ("s1", "p2", True, "p2", True, D),
    ("s1", "v2", True, "v2", True, D),
    ("s1", "b2", True, "b2", True, D),
    ("s1", "bd", True, "", True, N),
    ("s1", "ext", True, "", True, N),
    ("s1", "lower", True, "", True, N),
    ("s1", "bcast", False, "", True, None),
    ("s1", "bcast", True, "s1", True, D),
    ("s1", "group", True, "s1", True, D),
    ("s1", "unjoined", True, "s1", True, D),
    ("s1", "pause", True, "s1", True, D),
    # passthru (alone on eth2): it gets every unicast from the wire, its own reflected too.
    ("pt", "ext", False, "", True, None),
    ("pt", "ext", True, "pt", True, D),
    ("pt", "lower", True, "pt", True, D),
    ("pt", "p2", True, "pt", True, D),      # p2's address means nothing on eth2
    ("pt", "bcast", False, "", True, None),
    ("pt", "bcast", True, "pt", True, D),
    ("pt", "group", True, "pt", True, D),
    ("pt", "unjoined", True, "pt", True, D),
    ("pt", "pause", True, "pt", True, D),
    # x1, bridge alone on eth1: nothing of eth0 is local to it.
    ("x1", "b1", False, "", True, None),
    ("x1", "b1", True, "", True, N),
    ("x1", "bcast", False, "", True, None),
]

# (source MAC, lower, destination) -> (receivers, outcome): frames from the outside.
OUTSIDE_ROWS = [
    ("ext", "eth0", "p2", "p2", D),
    ("ext", "eth0", "v2", "v2", D),
    ("ext", "eth0", "b2", "b2", D),
    ("ext", "eth0", "s1", "", N),
    ("ext", "eth0", "pd", "", N),
    ("ext", "eth0", "vd", "", N),
    ("ext", "eth0", "bd", "", N),
    ("ext", "eth0", "x1", "", N),
    ("ext", "eth0", "ext", "", N),
    ("ext", "eth0", "lower", "", N),
    ("ext", "eth0", "bcast", "b1 b2 p1 p2 v1 v2", D),  # never source, never down
    ("ext", "eth0", "group", "b2 p2 v2", D),
    ("ext", "eth0", "unjoined", "", N),
    ("ext", "eth0", "pause", "", N),
    # WATCHED is in s1's list: s1 gets a copy of everything it sends, unicast or not.
    ("watched", "eth0", "v2", "s1 v2", D),
    ("watched", "eth0", "ext", "s1", D),
    ("watched", "eth0", "lower", "s1", D),
    ("watched", "eth0", "s1", "s1", D),
    ("watched", "eth0", "bcast", "b1 b2 p1 p2 s1 v1 v2", D),
    ("watched", "eth0", "group", "b2 p2 s1 v2", D),
    ("watched", "eth0", "unjoined", "s1", D),
    ("watched", "eth0", "pause", "s1", D),
    # passthru lower: the endpoint takes every unicast; groups go through its filter.
    ("ext", "eth2", "ext", "pt", D),
    ("ext", "eth2", "lower", "pt", D),
    ("ext", "eth2", "p2", "pt", D),
    ("ext", "eth2", "bcast", "pt", D),
    ("ext", "eth2", "group", "", N),
    ("ext", "eth2", "pause", "", N),
    # eth1 holds only x1.
    ("ext", "eth1", "x1", "x1", D),
    ("ext", "eth1", "b1", "", N),
    ("ext", "eth1", "bcast", "x1", D),
]
# fmt: on


def _row_id(row: tuple[object, ...]) -> str:
    return "-".join(str(v) for v in row[:3])


@pytest.mark.parametrize(
    ("sender", "dst", "hairpin", "expected", "wire", "reflected"),
    ENDPOINT_ROWS,
    ids=[_row_id(r) for r in ENDPOINT_ROWS],
)
def test_endpoint_sends(
    sender: str, dst: str, hairpin: bool, expected: str, wire: bool, reflected: Outcome | None
) -> None:
    engine = build()
    ep = engine.endpoint(sender)
    mac, ethertype = destination(engine, dst)
    if dst == "lower":
        mac = ep.port.mac  # type: ignore[union-attr]
    frame = eth(mac, ep.mac, ethertype)
    trip = send(engine, ep, frame, hairpin)

    assert trip.tx.outcome is Outcome.DELIVERED
    assert trip.tx.wire is wire
    assert on_wire(engine, frame) == ([ep.port.name] if wire else [])  # type: ignore[union-attr]
    # What the endpoints' queues hold and what the dispositions say agree with the kernel.
    assert copies_of(engine, frame) == names(expected)
    assert trip.receivers == names(expected)
    if reflected is None:
        assert trip.rx is None
    else:
        assert trip.rx is not None
        assert trip.rx.outcome is reflected
    for d in (trip.tx, trip.rx):
        assert d is None or (d.refused == [] and d.reason is None)
    # The sender was charged one transmitted frame, nothing else.
    assert (ep.stats.tx_packets, ep.stats.tx_dropped, ep.stats.tx_errors) == (1, 0, 0)


@pytest.mark.parametrize(
    ("src", "lower", "dst", "expected", "outcome"),
    OUTSIDE_ROWS,
    ids=[_row_id(r) for r in OUTSIDE_ROWS],
)
def test_frame_from_outside(
    src: str, lower: str, dst: str, expected: str, outcome: Outcome
) -> None:
    engine = build()
    port = engine.port(lower)
    mac, ethertype = destination(engine, dst)
    if dst == "lower":
        mac = port.mac
    frame = eth(mac, {"ext": EXTERNAL, "watched": WATCHED}[src], ethertype)
    d = receive(engine, port, frame)
    assert d.outcome is outcome
    assert sorted(d.receiver_names) == names(expected)
    assert copies_of(engine, frame) == names(expected)
    assert on_wire(engine, frame) == []
    assert port.stats.rx_packets == 1
    assert all(p.stats.rx_packets == 0 for p in engine.ports.values() if p is not port)


def test_down_endpoint_cannot_send() -> None:
    engine = build()
    vd = engine.endpoint("vd")
    frame = eth(BROADCAST, vd.mac)
    trip = send(engine, vd, frame, hairpin=True)
    assert trip.tx.outcome is Outcome.DROPPED
    assert why(trip.tx) == "ENDPOINT_DOWN"
    assert on_wire(engine, frame) == [] and copies_of(engine, frame) == []
    assert (vd.stats.tx_packets, vd.stats.tx_dropped) == (0, 1)


def test_passthru_down_drops_unicast_and_floods_nothing() -> None:
    engine = build()
    engine.set_up("pt", False)
    port = engine.port("eth2")
    d = receive(engine, port, eth(EXTERNAL2, EXTERNAL))
    assert d.outcome is Outcome.DROPPED
    assert why(d) == "PASSTHRU_DOWN"
    assert port.stats.rx_dropped == 1
    assert counted(port.stats) == {"PASSTHRU_DOWN": 1}
    frame = eth(BROADCAST, EXTERNAL)
    d = receive(engine, port, frame)
    assert d.outcome is Outcome.NOT_OURS
    assert copies_of(engine, frame) == []
    assert engine.endpoint("pt").stats.rx_packets == 0


def test_pause_never_flooded_even_when_its_group_is_joined() -> None:
    engine = build()
    for name in ("v2", "b2", "p2", "b1"):
        engine.join_group(name, PAUSE_DST)
    port = engine.port("eth0")
    frame = eth(PAUSE_DST, EXTERNAL, ETH_P_PAUSE)
    d = receive(engine, port, frame)
    assert d.receivers == [] and copies_of(engine, frame) == []
    # Same group, another ethertype: flooded to those who joined.
    other = eth(PAUSE_DST, EXTERNAL)
    receive(engine, port, other)
    assert copies_of(engine, other) == ["b1", "b2", "p2", "v2"]
    # A bridge endpoint's PAUSE reaches no bridge peer, only the wire.
    b1 = engine.endpoint("b1")
    pause = eth(PAUSE_DST, b1.mac, ETH_P_PAUSE)
    trip = send(engine, b1, pause, hairpin=False)
    assert trip.tx.wire and copies_of(engine, pause) == []


def test_source_mode_sees_sibling_frames_only_as_the_wire_returns_them() -> None:
    engine = build()
    engine.add_endpoint("s2", "eth0", Mode.SOURCE, local_mac(40), up=True)
    v1, b1 = engine.endpoint("v1"), engine.endpoint("b1")
    engine.macaddr("s2", "set", [v1.mac, b1.mac])
    # vepa unicast: without hairpin nothing comes back, with it s2 sees a copy.
    f = eth(EXTERNAL2, v1.mac)
    assert send(engine, v1, f, hairpin=False).receivers == []
    f = eth(EXTERNAL2, v1.mac)
    assert send(engine, v1, f, hairpin=True).receivers == ["s2"]
    # bridge-local unicast goes through the lower's receive path: s2 sees it, the wire does not.
    f = eth(engine.endpoint("b2").mac, b1.mac)
    trip = send(engine, b1, f, hairpin=False)
    assert trip.receivers == ["b2", "s2"] and on_wire(engine, f) == []
    # bridge group frame: peers on transmit (no source copy), s2 when reflected.
    f = eth(BROADCAST, b1.mac)
    assert send(engine, b1, f, hairpin=False).receivers == ["b2"]
    f = eth(BROADCAST, b1.mac)
    assert send(engine, b1, f, hairpin=True).receivers == ["b2", "s2", "v1", "v2"]


def test_source_lists_overlap_and_down_source_gets_nothing() -> None:
    engine = build()
    engine.add_endpoint("s2", "eth0", Mode.SOURCE, local_mac(40), up=True)
    engine.add_endpoint("s3", "eth0", Mode.SOURCE, local_mac(41), up=False)
    engine.macaddr("s2", "add", [WATCHED])
    engine.macaddr("s3", "add", [WATCHED])
    port = engine.port("eth0")
    frame = eth(EXTERNAL2, WATCHED)
    d = receive(engine, port, frame)
    assert sorted(d.receiver_names) == ["s1", "s2"]
    assert d.outcome is Outcome.DELIVERED
    engine.set_up("s3", True)
    frame = eth(EXTERNAL2, WATCHED)
    assert sorted(receive(engine, port, frame).receiver_names) == ["s1", "s2", "s3"]
    engine.macaddr("s1", "del", [WATCHED])
    frame = eth(EXTERNAL2, WATCHED)
    assert sorted(receive(engine, port, frame).receiver_names) == ["s2", "s3"]
    assert copies_of(engine, frame) == ["s2", "s3"]


def test_private_reflected_group_frame_ignores_the_lower_filter() -> None:
    # The "back to the sender" branch runs before any filter check (macvlan_handle_frame).
    engine = build()
    p1 = engine.endpoint("p1")
    frame = eth(UNJOINED, p1.mac)
    d = receive(engine, engine.port("eth0"), frame)
    assert d.receiver_names == ["p1"]
    assert p1.stats.rx_multicast == 0  # not a flooded copy


def test_lower_without_endpoints_leaves_broadcasts_to_the_host() -> None:
    # With no endpoint the kernel has no macvlan port (macvlan_port_destroy when count drops
    # to 0): no rx_handler, the broadcast is simply the host's, nothing is counted dropped.
    engine = new_engine()
    port = engine.add_lower("eth9", LOWER_MAC)
    d = receive(engine, port, eth(BROADCAST, EXTERNAL))
    assert d.outcome is Outcome.NOT_OURS
    assert d.reason is None
    assert port.stats.rx_dropped == 0 and port.stats.bcqueue_dropped == 0
    # Same after the last endpoint went away.
    engine.add_endpoint("a", "eth9", Mode.VEPA, local_mac(1), up=True)
    engine.remove_endpoint("a")
    d = receive(engine, port, eth(BROADCAST, EXTERNAL))
    assert d.outcome is Outcome.NOT_OURS
    assert port.stats.rx_dropped == 0 and port.stats.bcqueue_dropped == 0


# -- counters -------------------------------------------------------------------------------


def test_every_drop_reason_is_a_distinct_counter() -> None:
    # SPEC 2.2: a dropped frame names the counter incremented. Each reason must be its own
    # enum member, not an alias of another reason charged to the same counter (an Enum
    # whose values repeat turns the later names into aliases of the first).
    assert sorted(m.name for m in DropReason) == sorted(DropReason.__members__)
    engine = build()
    v1 = engine.endpoint("v1")
    engine.set_spoofchk("v1", True)
    d = engine.from_endpoint(v1, eth(EXTERNAL, EXTERNAL2))
    assert why(d) == "SPOOFED"
    engine.set_up("v1", False)
    d = engine.from_endpoint(v1, eth(EXTERNAL, v1.mac))
    assert why(d) == "ENDPOINT_DOWN"
    assert counted(v1.stats) == {"SPOOFED": 1, "ENDPOINT_DOWN": 1}
    assert v1.stats.tx_dropped == 2
    port = engine.port("eth0")
    receive(engine, port, Frame(b"\x00" * 5))
    receive(engine, port, eth(EXTERNAL2, EXTERNAL, size=1600))
    assert counted(port.stats) == {"RUNT_FROM_LOWER": 1, "OVERSIZE_FROM_LOWER": 1}


def test_rx_and_tx_counters_per_kind_of_copy() -> None:
    engine = build()
    eth0 = engine.port("eth0")
    ep = {name: engine.endpoint(name) for name in ("p1", "p2", "v1", "v2", "b1", "b2", "s1")}
    receive(engine, eth0, eth(BROADCAST, EXTERNAL, size=100))  # flood: multicast copies
    for name in ("p1", "p2", "v1", "v2", "b1", "b2"):
        assert (ep[name].stats.rx_packets, ep[name].stats.rx_multicast) == (1, 1)
        assert ep[name].stats.rx_bytes == 100
    assert (ep["s1"].stats.rx_packets, ep["s1"].stats.rx_multicast) == (0, 0)
    receive(engine, eth0, eth(BROADCAST, WATCHED))  # source copy: not a multicast copy
    assert (ep["s1"].stats.rx_packets, ep["s1"].stats.rx_multicast) == (1, 0)
    receive(engine, eth0, eth(ep["v2"].mac, EXTERNAL))  # unicast
    assert (ep["v2"].stats.rx_packets, ep["v2"].stats.rx_multicast) == (3, 2)
    send(engine, ep["p1"], eth(BROADCAST, ep["p1"].mac), hairpin=True)  # back to sender only
    assert (ep["p1"].stats.rx_packets, ep["p1"].stats.rx_multicast) == (3, 2)
    assert ep["p1"].stats.tx_packets == 1
    send(engine, ep["b1"], eth(GROUP, ep["b1"].mac, size=80), hairpin=False)  # bridge-local
    assert (ep["b2"].stats.rx_packets, ep["b2"].stats.rx_multicast) == (3, 3)
    send(engine, ep["b1"], eth(ep["b2"].mac, ep["b1"].mac, size=90), hairpin=False)
    assert (ep["b2"].stats.rx_packets, ep["b2"].stats.rx_multicast) == (4, 3)
    assert (ep["b1"].stats.tx_packets, ep["b1"].stats.tx_bytes) == (2, 170)
    # Only what reached the wire is on the lower's transmit counters.
    assert (eth0.stats.tx_packets, eth0.stats.tx_bytes) == (2, 60 + 80)
    assert eth0.stats.rx_packets == 4  # 3 from outside + 1 reflected


def test_broadcast_queue_overflow_is_counted_on_the_lower_and_drains_in_order() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    engine.add_endpoint("a", "eth0", Mode.VEPA, local_mac(1), up=True, bcqueuelen=3)
    engine.add_endpoint("b", "eth0", Mode.BRIDGE, local_mac(2), up=True, bcqueuelen=5)
    engine.add_endpoint("c", "eth0", Mode.VEPA, local_mac(3), up=False, bcqueuelen=2)
    assert port.bcqueuelen == 5  # usedbcqueuelen: the largest request
    frames = [eth(BROADCAST, EXTERNAL, size=60 + i) for i in range(8)]
    ds = [engine.from_lower(port, f) for f in frames]
    assert [d.outcome for d in ds] == [Outcome.QUEUED] * 5 + [Outcome.DROPPED] * 3
    assert all(why(d) == "BCQUEUE_FULL" for d in ds[5:])
    assert port.stats.rx_dropped == 3
    assert port.stats.bcqueue_dropped == 3
    assert counted(port.stats) == {"BCQUEUE_FULL": 3}
    a, b = engine.endpoint("a"), engine.endpoint("b")
    assert (a.stats.rx_dropped, b.stats.rx_dropped) == (0, 0)
    assert not a.rx_queue and not b.rx_queue
    first = engine.process_broadcasts(budget=2)
    assert [d.frame for d in first] == frames[:2]
    assert all(d.outcome is Outcome.DELIVERED for d in first)
    assert ds[2].outcome is Outcome.QUEUED
    rest = engine.process_broadcasts()
    assert [d.frame for d in rest] == frames[2:5]
    assert list(a.rx_queue) == frames[:5] and list(b.rx_queue) == frames[:5]
    assert engine.process_broadcasts() == []
    # Room again: the next broadcast is queued.
    assert engine.from_lower(port, eth(BROADCAST, EXTERNAL)).outcome is Outcome.QUEUED


def test_bcqueuelen_zero_everywhere_drops_every_broadcast() -> None:
    # bc_queue_len_used = 0: skb_queue_len(...) < 0 never holds (macvlan_broadcast_enqueue).
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    engine.add_endpoint("a", "eth0", Mode.VEPA, local_mac(1), up=True, bcqueuelen=0)
    d = engine.from_lower(port, eth(BROADCAST, EXTERNAL))
    assert d.outcome is Outcome.DROPPED and why(d) == "BCQUEUE_FULL"
    assert port.stats.rx_dropped == 1
    engine.set_bcqueuelen("a", 1)
    assert engine.from_lower(port, eth(BROADCAST, EXTERNAL)).outcome is Outcome.QUEUED


def test_overflow_with_source_copies_still_delivers_them() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    engine.add_endpoint("v", "eth0", Mode.VEPA, local_mac(1), up=True, bcqueuelen=1)
    engine.add_endpoint("s", "eth0", Mode.SOURCE, local_mac(2), up=True, bcqueuelen=1)
    engine.macaddr("s", "add", [WATCHED])
    assert engine.from_lower(port, eth(BROADCAST, EXTERNAL)).outcome is Outcome.QUEUED
    d = engine.from_lower(port, eth(BROADCAST, WATCHED))
    assert d.receiver_names == ["s"]
    assert d.outcome is Outcome.DELIVERED and why(d) == "BCQUEUE_FULL"
    assert port.stats.bcqueue_dropped == 1


def test_rx_queue_bound_drops_are_charged_to_the_receiver() -> None:
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    small = engine.add_endpoint("small", "eth0", Mode.VEPA, local_mac(1), up=True, rx_queue_len=2)
    big = engine.add_endpoint("big", "eth0", Mode.VEPA, local_mac(2), up=True)
    ds = [engine.from_lower(port, eth(small.mac, EXTERNAL)) for _ in range(3)]
    assert [d.outcome for d in ds] == [Outcome.DELIVERED] * 2 + [Outcome.DROPPED]
    assert why(ds[2]) == "RX_QUEUE_FULL" and ds[2].refused == [small]
    assert (small.stats.rx_packets, small.stats.rx_dropped) == (2, 1)
    assert counted(small.stats) == {"RX_QUEUE_FULL": 1}
    assert len(small.rx_queue) == 2
    # A flood: the full receiver refuses, the other takes it; the frame is delivered.
    frame = eth(BROADCAST, EXTERNAL)
    d = receive(engine, port, frame)
    assert d.outcome is Outcome.DELIVERED
    assert d.receivers == [big] and d.refused == [small]
    assert small.stats.rx_dropped == 2 and big.stats.rx_packets == 1
    assert port.stats.rx_dropped == 0
    # Draining makes room again.
    small.rx_queue.popleft()
    assert engine.from_lower(port, eth(small.mac, EXTERNAL)).outcome is Outcome.DELIVERED
    # Bridge-local unicast into a full queue: sent (tx_packets), refused by the receiver.
    b1 = engine.add_endpoint("b1", "eth0", Mode.BRIDGE, local_mac(3), up=True)
    b2 = engine.add_endpoint("b2", "eth0", Mode.BRIDGE, local_mac(4), up=True, rx_queue_len=1)
    engine.from_endpoint(b1, eth(b2.mac, b1.mac))
    d = engine.from_endpoint(b1, eth(b2.mac, b1.mac))
    assert d.outcome is Outcome.DROPPED and why(d) == "RX_QUEUE_FULL"
    assert d.refused == [b2] and b2.stats.rx_dropped == 1
    assert (b1.stats.tx_packets, b1.stats.tx_dropped) == (2, 0)
    # A bridge group frame that no peer could take and the wire could not take
    # either: the refusal stays in the disposition next to the wire's reason.
    engine.set_lower_carrier("eth0", False)
    d = engine.from_endpoint(b1, eth(BROADCAST, b1.mac))
    assert d.outcome is Outcome.DROPPED and why(d) == "LOWER_DOWN"
    assert d.refused == [b2] and d.receivers == [] and not d.wire
    assert b2.stats.rx_dropped == 2
    assert (b1.stats.tx_packets, b1.stats.tx_dropped) == (2, 1)


@pytest.mark.parametrize("length", range(14))
def test_runts_are_counted_errors(length: int) -> None:
    engine = build()
    v1 = engine.endpoint("v1")
    port = engine.port("eth0")
    frame = Frame((BROADCAST + v1.mac + b"\x08\x00")[:length])
    d = engine.from_endpoint(v1, frame)
    assert d.outcome is Outcome.DROPPED and why(d) == "RUNT_FROM_ENDPOINT"
    assert (v1.stats.tx_errors, v1.stats.tx_packets, v1.stats.tx_dropped) == (1, 0, 0)
    assert not port.tx_queue
    d = engine.from_lower(port, frame)
    assert d.outcome is Outcome.DROPPED and why(d) == "RUNT_FROM_LOWER"
    assert port.stats.rx_errors == 1 and port.stats.rx_packets == 1
    assert engine.process_broadcasts() == []
    assert all(not ep.rx_queue for ep in engine.endpoints.values())


def test_oversize_segments_are_counted_errors() -> None:
    engine = build()
    v1 = engine.endpoint("v1")
    port = engine.port("eth0")
    engine.set_mtu("v1", 1400)
    assert engine.from_endpoint(v1, eth(EXTERNAL, v1.mac, size=1414)).wire
    d = engine.from_endpoint(v1, eth(EXTERNAL, v1.mac, size=1415))
    assert d.outcome is Outcome.DROPPED and why(d) == "OVERSIZE_FROM_ENDPOINT"
    assert v1.stats.tx_errors == 1
    # A VLAN tag does not count against the MTU.
    assert engine.from_endpoint(v1, eth(EXTERNAL, v1.mac, ETH_P_8021Q, size=1418)).wire
    # A GSO super-frame is limited by its segment size, not its length.
    gso = VnetHeader(gso_type=VIRTIO_NET_HDR_GSO_TCPV4, hdr_len=54, gso_size=1360)
    assert engine.from_endpoint(v1, eth(EXTERNAL, v1.mac, size=65000, vnet=gso)).wire
    gso_big = VnetHeader(gso_type=VIRTIO_NET_HDR_GSO_TCPV4, hdr_len=54, gso_size=1361)
    d = engine.from_endpoint(v1, eth(EXTERNAL, v1.mac, size=65000, vnet=gso_big))
    assert why(d) == "OVERSIZE_FROM_ENDPOINT"
    assert (v1.stats.tx_packets, v1.stats.tx_errors) == (3, 2)
    # hdr_len is a hint: Linux guests put skb_headlen() there, payload included. The
    # segment's headers end where the TCP header does (csum_start + its data offset).
    tcp = 34  # Ethernet + IPv4
    tcp_header = bytes(12) + bytes([0x80]) + bytes(7)  # data offset 8: 32 bytes, as with timestamps
    guest = VnetHeader(
        flags=VIRTIO_NET_HDR_F_NEEDS_CSUM, gso_type=VIRTIO_NET_HDR_GSO_TCPV4,
        hdr_len=1500, gso_size=1400 - 20 - 32, csum_start=tcp, csum_offset=16,
    )  # fmt: skip
    frame = eth(EXTERNAL, v1.mac, size=tcp)
    frame = Frame(frame.data + tcp_header + bytes(20_000), guest)
    assert frame.segment_size() == 1400
    assert engine.from_endpoint(v1, frame).wire
    one_more = Frame(frame.data, guest.replace(gso_size=guest.gso_size + 1))
    assert why(engine.from_endpoint(v1, one_more)) == "OVERSIZE_FROM_ENDPOINT"
    # UDP segmentation: 8 bytes of UDP header after csum_start.
    uso = guest.replace(gso_type=VIRTIO_NET_HDR_GSO_UDP_L4, gso_size=1400 - 20 - 8)
    assert Frame(frame.data, uso).segment_size() == 1400
    assert (v1.stats.tx_packets, v1.stats.tx_errors) == (4, 3)
    # From the wire, the lower's MTU applies; rx_errors on the lower.
    v2 = engine.endpoint("v2")
    assert receive(engine, port, eth(v2.mac, EXTERNAL, size=1514)).receivers == [v2]
    d = receive(engine, port, eth(v2.mac, EXTERNAL, size=1515))
    assert d.outcome is Outcome.DROPPED and why(d) == "OVERSIZE_FROM_LOWER"
    assert port.stats.rx_errors == 1 and v2.stats.rx_packets == 1


def test_spoofchk() -> None:
    engine = build()
    v1 = engine.endpoint("v1")
    forged = eth(EXTERNAL, EXTERNAL2)
    d = engine.from_endpoint(v1, forged)  # spoofchk off (default): let through
    assert d.wire and d.outcome is Outcome.DELIVERED
    engine.set_spoofchk("v1", True)
    forged = eth(EXTERNAL, EXTERNAL2)
    d = engine.from_endpoint(v1, forged)
    assert d.outcome is Outcome.DROPPED and why(d) == "SPOOFED"
    assert on_wire(engine, forged) == []
    assert (v1.stats.tx_packets, v1.stats.tx_dropped) == (1, 1)
    assert counted(v1.stats) == {"SPOOFED": 1}
    assert engine.from_endpoint(v1, eth(EXTERNAL, v1.mac)).wire  # its own address passes
    # A forged bridge frame reaches no bridge peer either.
    engine.set_spoofchk("b1", True)
    b1 = engine.endpoint("b1")
    forged = eth(BROADCAST, EXTERNAL2)
    assert engine.from_endpoint(b1, forged).receivers == []
    assert copies_of(engine, forged) == []


def test_lower_down_and_full_wire_queue() -> None:
    engine = build()
    b1 = engine.endpoint("b1")
    port = engine.port("eth0")
    engine.set_lower_carrier("eth0", False)
    d = engine.from_endpoint(engine.endpoint("v1"), eth(EXTERNAL, engine.endpoint("v1").mac))
    assert d.outcome is Outcome.DROPPED and why(d) == "LOWER_DOWN"
    # A bridge group frame whose bridge copies went out but whose wire copy failed.
    frame = eth(BROADCAST, b1.mac)
    d = engine.from_endpoint(b1, frame)
    assert d.outcome is Outcome.DELIVERED and why(d) == "LOWER_DOWN"
    assert d.receiver_names == ["b2"] and not d.wire
    assert (b1.stats.tx_packets, b1.stats.tx_dropped) == (0, 1)
    engine.set_lower_carrier("eth0", True)
    port.tx_queue_len = 1
    assert engine.from_endpoint(b1, eth(EXTERNAL, b1.mac)).wire
    d = engine.from_endpoint(b1, eth(EXTERNAL, b1.mac))
    assert d.outcome is Outcome.DROPPED and why(d) == "WIRE_QUEUE_FULL"
    assert (b1.stats.tx_packets, b1.stats.tx_dropped) == (1, 2)
    assert len(port.tx_queue) == 1 and port.stats.tx_packets == 1
