"""Invariants of the engine under random configurations and random traffic (hypothesis).

Each example builds an engine (1-2 lowers, 0-6 endpoints of random modes, states, groups,
source lists and small queues), then runs a random sequence of steps: frames from endpoints
and from lowers (any destination, any length including runts, sometimes a vnet header),
the external switch reflecting what reached the wire, queue draining, process_broadcasts and
configuration changes.  After every step and at the end it checks:

(a) every frame has exactly one final disposition; QUEUED ones settle exactly once; the
    engine never raises on a frame;
(b) counters equal dispositions (per endpoint, per lower, per drop reason), and each
    rx_queue holds what was delivered less what was drained;
(c) VEPA isolation: a frame sent by a private/vepa/source/passthru endpoint reaches no
    endpoint on transmit (only the wire); a bridge one reaches only bridge peers (and
    source-mode listeners through the lower's receive path);
(d) a group frame coming back from the wire with the source address of an UP private,
    source or passthru endpoint reaches that endpoint alone (plus source-mode listeners);
(e) down endpoints never receive;
(f) frames are never mutated, and queues hold only frames that were handed in.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from pymacvtap.core import (
    Disposition,
    DropReason,
    Endpoint,
    Engine,
    EngineError,
    Frame,
    Mode,
    Outcome,
    Port,
    VnetHeader,
)

from .helpers import (
    BROADCAST,
    ETH_P_8021Q,
    ETH_P_IP,
    ETH_P_PAUSE,
    EXTERNAL,
    EXTERNAL2,
    GROUP,
    LOWER1_MAC,
    LOWER_MAC,
    PAUSE_DST,
    UNJOINED,
    WATCHED,
    local_mac,
    new_engine,
)

GROUP2 = bytes.fromhex("333300000001")
LOWERS = {"eth0": LOWER_MAC, "eth1": LOWER1_MAC}
POOL = [local_mac(i) for i in range(1, 7)]
SOURCE_POOL = [WATCHED, EXTERNAL, *POOL[:3]]
GROUPS = [GROUP, GROUP2, PAUSE_DST]
NON_PASSTHRU = [Mode.PRIVATE, Mode.VEPA, Mode.BRIDGE, Mode.SOURCE]
ALL_MODES = [*NON_PASSTHRU, Mode.PASSTHRU]
REFLECT_TO_SENDER = (Mode.PRIVATE, Mode.SOURCE, Mode.PASSTHRU)

macs_6 = st.binary(min_size=6, max_size=6)
# Mostly ordinary frames; runts, frames around the MTU and anything up to 2000 bytes too.
lengths = st.sampled_from(["runt", "small", "small", "small", "mtu", "any"]).flatmap(
    lambda kind: {
        "runt": st.integers(0, 13),
        "small": st.integers(14, 120),
        "mtu": st.integers(1400, 1530),
        "any": st.integers(0, 2000),
    }[kind]
)
vnets = st.one_of(
    st.none(),
    st.builds(
        VnetHeader,
        flags=st.integers(0, 3),
        gso_type=st.sampled_from([0, 1, 3, 4, 5, 0x81]),
        hdr_len=st.integers(0, 120),
        gso_size=st.integers(0, 2000),
        csum_start=st.integers(0, 100),
        csum_offset=st.integers(0, 20),
    ),
)
ethertypes = st.sampled_from([ETH_P_IP, ETH_P_IP, ETH_P_PAUSE, ETH_P_8021Q, 0x86DD, 0x0806])


class World:
    """The engine plus everything the test handed it, to compare counters against."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.endpoints: list[Endpoint] = []  # every endpoint ever created, removed ones too
        self.ports: list[Port] = []  # every lower ever attached
        self.sent: Counter[Endpoint] = Counter()
        self.fed: Counter[Port] = Counter()
        self.rx_drained: Counter[Endpoint] = Counter()
        self.tx_drained: Counter[Port] = Counter()
        # (disposition, origin): origin is the sending endpoint or the lower it came from.
        self.dispositions: list[tuple[Disposition, Endpoint | Port]] = []
        # id -> (QUEUED disposition, its receivers at enqueue time, its lower)
        self.pending: dict[int, tuple[Disposition, int, Port]] = {}
        self.settled: set[int] = set()
        self.frames: list[tuple[Frame, bytes, bytes | None]] = []

    # -- bookkeeping --------------------------------------------------------------------

    def track_frame(self, frame: Frame) -> None:
        vnet = frame.vnet.pack() if frame.vnet is not None else None
        self.frames.append((frame, frame.data, vnet))

    def add_endpoint(self, ep: Endpoint) -> None:
        self.endpoints.append(ep)

    def live(self) -> list[Endpoint]:
        return list(self.engine.endpoints.values())

    def live_ports(self) -> list[Port]:
        return list(self.engine.ports.values())

    # -- checks -----------------------------------------------------------------------------

    def check_new_receivers(self, d: Disposition, port: Port, start: int = 0) -> None:
        for ep in d.receivers[start:]:
            assert ep.up, f"down endpoint {ep.name} received {d}"  # (e)
            assert ep.port is port, f"{ep.name} got a frame of another lower"
        for ep in d.refused:
            assert ep.port is port or ep.port is None

    def check_counters(self) -> None:
        received: Counter[Endpoint] = Counter()
        refused: Counter[Endpoint] = Counter()
        drops: dict[object, Counter[DropReason]] = {}
        not_ours: Counter[Port] = Counter()
        for d, origin in self.dispositions:
            received.update(d.receivers)
            refused.update(d.refused)
            for ep in d.refused:
                drops.setdefault(ep, Counter())[DropReason.RX_QUEUE_FULL] += 1
            if d.reason is not None and d.reason is not DropReason.RX_QUEUE_FULL:
                drops.setdefault(origin, Counter())[d.reason] += 1
            if d.outcome is Outcome.NOT_OURS:
                assert isinstance(origin, Port)
                not_ours[origin] += 1
        for ep in self.endpoints:
            s = ep.stats
            assert s.rx_packets == received[ep], ep
            assert s.rx_dropped == refused[ep], ep
            assert s.tx_packets + s.tx_dropped + s.tx_errors == self.sent[ep], ep
            want = drops.get(ep, Counter())
            assert Counter({k: v for k, v in s.drops.items() if v}) == want, ep
            assert s.tx_dropped == sum(v for k, v in want.items() if k.counter == "tx_dropped")
            assert s.tx_errors == sum(v for k, v in want.items() if k.counter == "tx_errors")
            assert s.rx_multicast <= s.rx_packets
            if ep.port is None:
                assert not ep.rx_queue
            else:
                assert len(ep.rx_queue) == s.rx_packets - self.rx_drained[ep], ep
                assert len(ep.rx_queue) <= ep.rx_queue_len
        for port in self.ports:
            s = port.stats
            assert s.rx_packets == self.fed[port]
            want = drops.get(port, Counter())
            assert Counter({k: v for k, v in s.drops.items() if v}) == want, port.name
            assert s.rx_errors == sum(v for k, v in want.items() if k.counter == "rx_errors")
            assert s.rx_dropped == sum(v for k, v in want.items() if k.counter == "rx_dropped")
            assert s.bcqueue_dropped == want[DropReason.BCQUEUE_FULL]
            assert s.rx_not_ours == not_ours[port]
            assert s.tx_packets == len(port.tx_queue) + self.tx_drained[port]

    def check_frames(self) -> None:
        handed_in = {id(f) for f, _, _ in self.frames}
        for frame, data, vnet in self.frames:  # (f)
            assert frame.data is data
            assert (frame.vnet.pack() if frame.vnet is not None else None) == vnet
        for ep in self.live():
            assert all(id(f) in handed_in for f in ep.rx_queue)
        for port in self.live_ports():
            assert all(id(f) in handed_in for f in port.tx_queue)

    # -- frames -----------------------------------------------------------------------------

    def from_endpoint(self, ep: Endpoint, frame: Frame) -> None:
        port = ep.port
        assert port is not None
        mode = ep.mode
        self.track_frame(frame)
        self.sent[ep] += 1
        d = self.engine.from_endpoint(ep, frame)
        self.dispositions.append((d, ep))
        assert d.frame is frame
        assert d.outcome in (Outcome.DELIVERED, Outcome.DROPPED), d
        self.check_new_receivers(d, port)
        if mode is not Mode.BRIDGE:  # (c): only the wire
            assert d.receivers == [] and d.refused == [], (mode, d)
        else:
            src = frame.data[6:12]
            for r in [*d.receivers, *d.refused]:
                assert r.mode is Mode.BRIDGE or (r.mode is Mode.SOURCE and src in r.source_macs), (
                    r,
                    d,
                )
        if d.wire:
            assert port.tx_queue and port.tx_queue[-1] is frame

    def from_lower(self, port: Port, frame: Frame) -> None:
        self.track_frame(frame)
        self.fed[port] += 1
        data = frame.data
        owner = port.by_mac.get(data[6:12]) if len(data) >= 14 else None
        d = self.engine.from_lower(port, frame)
        self.dispositions.append((d, port))
        assert d.frame is frame and not d.wire
        self.check_new_receivers(d, port)
        if d.outcome is Outcome.QUEUED:
            self.pending[id(d)] = (d, len(d.receivers), port)
        if (
            len(data) >= 14
            and data[0] & 1
            and owner is not None
            and owner.mode in REFLECT_TO_SENDER
            and d.reason is None
        ):
            # (d): the sender's own group frame came back: to it alone (+ source listeners).
            src = data[6:12]
            others = [
                r
                for r in [*d.receivers, *d.refused]
                if not (r.mode is Mode.SOURCE and src in r.source_macs and r is not owner)
            ]
            assert others == [owner] or (
                owner.mode is Mode.SOURCE and src in owner.source_macs and others == [owner] * 2
            ), (owner, d)
            assert d.outcome is not Outcome.QUEUED

    def process(self, budget: int) -> None:
        for d in self.engine.process_broadcasts(budget):
            assert id(d) in self.pending, f"settled twice or never queued: {d}"  # (a)
            _, start, _ = self.pending.pop(id(d))
            self.settled.add(id(d))
            assert d.outcome is not Outcome.QUEUED
            origin = next(o for x, o in self.dispositions if x is d)
            assert isinstance(origin, Port)
            self.check_new_receivers(d, origin, start)
            for ep in d.receivers[start:]:
                assert ep.mode is not Mode.SOURCE, "source-mode endpoints never get floods"

    def lower_removed(self, port: Port) -> None:
        """Floods still queued on a removed lower must have been settled by the removal."""
        for key, (d, _, where) in list(self.pending.items()):
            if where is port:
                assert d.outcome is not Outcome.QUEUED, f"lost with its lower: {d}"  # (a)
                del self.pending[key]
                self.settled.add(key)

    def finish(self) -> None:
        self.process(1 << 30)
        assert self.pending == {}, "frames left without a final disposition"  # (a)
        assert all(d.outcome is not Outcome.QUEUED for d, _ in self.dispositions)
        self.check_counters()
        self.check_frames()


def make_frame(draw: Any, dst: bytes, src: bytes) -> Frame:
    ethertype = draw(ethertypes)
    length = draw(lengths)
    header = dst + src + ethertype.to_bytes(2, "big")
    data = (header + bytes(i & 0xFF for i in range(max(0, length - 14))))[:length]
    return Frame(data, draw(vnets))


def pick_dst(draw: Any, world: World) -> bytes:
    choices = [EXTERNAL2, BROADCAST, UNJOINED, *GROUPS]
    choices += [ep.mac for ep in world.live()]
    choices += [p.mac for p in world.live_ports()]
    return draw(st.one_of(st.sampled_from(choices), macs_6))


def build(draw: Any) -> World:
    world = World(new_engine())
    engine = world.engine
    for name in draw(st.sampled_from([["eth0"], ["eth0", "eth1"]])):
        world.ports.append(
            engine.add_lower(name, LOWERS[name], mtu=draw(st.sampled_from([1500, 1400])))
        )
    for i in range(draw(st.integers(0, 6))):
        add_random_endpoint(draw, world, f"e{i}")
    return world


def add_random_endpoint(draw: Any, world: World, name: str) -> None:
    engine = world.engine
    lower = draw(st.sampled_from(sorted(engine.ports)))
    mode = draw(st.sampled_from(ALL_MODES if draw(st.integers(0, 5)) == 0 else NON_PASSTHRU))
    try:
        ep = engine.add_endpoint(
            name,
            lower,
            mode,
            draw(st.one_of(st.none(), st.sampled_from(POOL))),
            spoofchk=draw(st.booleans()),
            bcqueuelen=draw(st.integers(0, 4)),
            rx_queue_len=draw(st.integers(1, 4)),
        )
    except EngineError:
        return
    world.add_endpoint(ep)
    for group in draw(st.lists(st.sampled_from(GROUPS), max_size=2)):
        engine.join_group(name, group)
    if draw(st.integers(0, 4)) == 0:
        engine.set_allmulti(name, True)
    if mode is Mode.SOURCE:
        engine.macaddr(name, "set", draw(st.lists(st.sampled_from(SOURCE_POOL), max_size=3)))
    if draw(st.integers(0, 3)) > 0:
        engine.set_up(name, True)


STEPS = [
    "from_endpoint",
    "from_endpoint",
    "from_endpoint",
    "from_lower",
    "from_lower",
    "from_lower",
    "hairpin",
    "hairpin",
    "process",
    "drain_rx",
    "drain_tx",
    "config",
]
CONFIG = [
    "set_up",
    "set_mode",
    "group",
    "macaddr",
    "bcqueuelen",
    "mtu",
    "spoofchk",
    "set_mac",
    "remove_endpoint",
    "add_endpoint",
    "carrier",
    "lower_mtu",
    "lower_mac",
    "tx_queue_len",
    "remove_lower",
    "add_lower",
]


def config_step(draw: Any, world: World, serial: int) -> None:
    engine = world.engine
    what = draw(st.sampled_from(CONFIG))
    live = world.live()
    ports = world.live_ports()
    if what == "add_endpoint":
        if ports:
            add_random_endpoint(draw, world, f"n{serial}")
        return
    if what == "add_lower":
        free = sorted(set(LOWERS) - set(engine.ports))
        if free:
            world.ports.append(engine.add_lower(free[0], LOWERS[free[0]]))
        return
    if what in ("carrier", "lower_mtu", "lower_mac", "tx_queue_len", "remove_lower"):
        if not ports:
            return
        port = draw(st.sampled_from(ports))
        if what == "carrier":
            engine.set_lower_carrier(port.name, draw(st.booleans()))
        elif what == "lower_mtu":
            engine.set_lower_mtu(port.name, draw(st.integers(68, 1500)))
        elif what == "lower_mac":
            engine.set_lower_mac(port.name, draw(st.sampled_from([LOWERS[port.name], *POOL])))
        elif what == "tx_queue_len":
            port.tx_queue_len = draw(st.integers(0, 3))
        else:
            engine.remove_lower(port.name)
            world.lower_removed(port)
        return
    if not live:
        return
    ep = draw(st.sampled_from(live))
    name = ep.name
    try:
        if what == "set_up":
            engine.set_up(name, draw(st.booleans()))
        elif what == "set_mode":
            engine.set_mode(name, draw(st.sampled_from(NON_PASSTHRU)))
        elif what == "group":
            group = draw(st.sampled_from(GROUPS))
            if draw(st.booleans()):
                engine.join_group(name, group)
            else:
                engine.leave_group(name, group)
        elif what == "macaddr":
            op = draw(st.sampled_from(["add", "del", "set", "flush"]))
            engine.macaddr(name, op, draw(st.lists(st.sampled_from(SOURCE_POOL), max_size=3)))
        elif what == "bcqueuelen":
            engine.set_bcqueuelen(name, draw(st.integers(0, 4)))
        elif what == "mtu":
            engine.set_mtu(name, draw(st.integers(60, 1500)))
        elif what == "spoofchk":
            engine.set_spoofchk(name, draw(st.booleans()))
        elif what == "set_mac":
            engine.set_mac(name, draw(st.sampled_from(POOL)))
        elif what == "remove_endpoint":
            engine.remove_endpoint(name)
    except EngineError:
        pass


def run_step(draw: Any, world: World, serial: int) -> None:
    engine = world.engine
    step = draw(st.sampled_from(STEPS))
    live = world.live()
    ports = world.live_ports()
    if step == "from_endpoint" and live:
        up = [ep for ep in live if ep.up]
        ep = draw(st.sampled_from(up if up and draw(st.integers(0, 3)) else live))
        src = ep.mac if draw(st.integers(0, 4)) else draw(st.sampled_from([EXTERNAL, *POOL]))
        world.from_endpoint(ep, make_frame(draw, pick_dst(draw, world), src))
    elif step == "from_lower" and ports:
        port = draw(st.sampled_from(ports))
        srcs = [EXTERNAL, WATCHED, *(ep.mac for ep in live)]
        src = draw(st.one_of(st.sampled_from(srcs), macs_6))
        world.from_lower(port, make_frame(draw, pick_dst(draw, world), src))
    elif step == "hairpin" and ports:
        # The external switch reflects what is waiting on a lower's transmit queue.
        port = draw(st.sampled_from(ports))
        for _ in range(min(len(port.tx_queue), draw(st.integers(1, 3)))):
            frame = port.tx_queue.popleft()
            world.tx_drained[port] += 1
            world.fed[port] += 1
            d = engine.from_lower(port, frame)
            world.dispositions.append((d, port))
            world.check_new_receivers(d, port)
            if d.outcome is Outcome.QUEUED:
                world.pending[id(d)] = (d, len(d.receivers), port)
    elif step == "process":
        world.process(draw(st.integers(1, 4)))
    elif step == "drain_rx" and live:
        ep = draw(st.sampled_from(live))
        for _ in range(min(len(ep.rx_queue), draw(st.integers(1, 4)))):
            ep.rx_queue.popleft()
            world.rx_drained[ep] += 1
    elif step == "drain_tx" and ports:
        port = draw(st.sampled_from(ports))
        world.tx_drained[port] += len(port.tx_queue)
        port.tx_queue.clear()
    elif step == "config":
        config_step(draw, world, serial)


# No "explain" phase: on a failure it replays the example for minutes; shrinking is enough.
FAST_FAILURE = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]


@settings(
    max_examples=400,
    deadline=None,
    phases=FAST_FAILURE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_engine_invariants(data: st.DataObject) -> None:
    draw = data.draw
    world = build(draw)
    for serial in range(draw(st.integers(0, 60))):
        run_step(draw, world, serial)
        world.check_counters()
    world.finish()


@settings(max_examples=200, deadline=None, phases=FAST_FAILURE)
@given(st.data())
def test_reflection_is_the_only_path_for_non_bridge_senders(data: st.DataObject) -> None:
    """(c)/(d) in isolation: without the switch nothing arrives; with it, the kernel's masks."""
    draw = data.draw
    engine = new_engine()
    port = engine.add_lower("eth0", LOWER_MAC)
    count = draw(st.integers(2, 5))
    eps = [
        engine.add_endpoint(f"e{i}", "eth0", draw(st.sampled_from(NON_PASSTHRU)), POOL[i], up=True)
        for i in range(count)
    ]
    for ep in eps:
        engine.set_allmulti(ep.name, draw(st.booleans()))
    senders = [ep for ep in eps if ep.mode is not Mode.BRIDGE]
    if not senders:
        return
    sender = draw(st.sampled_from(senders))
    dst = draw(st.sampled_from([BROADCAST, GROUP, EXTERNAL, LOWER_MAC, *(e.mac for e in eps)]))
    frame = Frame(dst + sender.mac + b"\x08\x00" + bytes(46))
    d = engine.from_endpoint(sender, frame)
    engine.process_broadcasts()
    assert d.wire and d.receivers == [] and d.refused == []
    assert all(not ep.rx_queue for ep in eps)
    assert list(port.tx_queue) == [frame]

    back = engine.from_lower(port, port.tx_queue.popleft())
    engine.process_broadcasts()
    if dst[0] & 1:
        if sender.mode in REFLECT_TO_SENDER:
            expected = [sender]  # (d)
        else:  # vepa: every other vepa/bridge endpoint whose filter takes it
            expected = [
                e
                for e in eps
                if e is not sender
                and e.mode in (Mode.VEPA, Mode.BRIDGE)
                and (dst == BROADCAST or e.allmulti)
            ]
    else:
        owner = next((e for e in eps if e.mac == dst), None)
        expected = [owner] if owner is not None and owner.mode is not Mode.SOURCE else []
    assert sorted(back.receiver_names) == sorted(e.name for e in expected)
    assert sorted(e.name for e in eps if e.rx_queue) == sorted(e.name for e in expected)
