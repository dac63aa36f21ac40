"""The programs' verdicts equal the engine's, frame by frame (SPEC 7, issue 13).

For random configurations (modes, up/down, passthru, spoofchk, MTUs, source
lists, endpoints the daemon keeps) and random frames, each frame goes through
the engine and, via ``BPF_PROG_TEST_RUN``, through the program on the device it
would arrive on.  A program that forwards or drops must do exactly what the
engine does, and count it as the engine counts it; a program that passes a frame
on must do so only where the engine's decision is one the fast path leaves to
the daemon (group frames, source-mode copies, an endpoint without a device or
under capture) or the frame is not ours.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymacvtap.bpf.tables import (
    DROP,
    HOST,
    PASS,
    REASON_BY_CODE,
    TO_DEV,
    TO_PEER,
    Counters,
    Device,
    Tables,
    changes,
    derive,
    packed,
)
from pymacvtap.core import Disposition, DropReason, Engine, Frame, Mode, Outcome, VnetHeader
from pymacvtap.core.frame import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_UDP_L4,
)
from pymacvtap.io.bpf import FastPath

from .conftest import SCALE

pytestmark = pytest.mark.root  # BPF_PROG_LOAD and BPF_PROG_TEST_RUN

# TC_ACT_UNSPEC (-1) as the u32 BPF_PROG_TEST_RUN returns: the frame goes on, past ours.
TC_ACT_UNSPEC, TC_ACT_SHOT, TC_ACT_REDIRECT = 0xFFFFFFFF, 2, 7
LOWER = "eth0"
LOWER_IFINDEX = 100
INBOX_IFINDEX = 0x7FFF0001  # no such device: a test run hands nothing over for real
LOWER_MAC = bytes.fromhex("020000000001")
MACS = [bytes.fromhex(f"0200000001{i:02x}") for i in range(5)]
STRANGER = bytes.fromhex("020000000909")
GROUPS = [b"\xff" * 6, bytes.fromhex("01005e000001")]


@dataclass
class EndpointSpec:
    mode: Mode
    up: bool
    spoofchk: bool
    mtu: int
    kind: str  # "peer", "tap" or "socket" (no device: the daemon's)
    capture: bool
    sources: list[bytes]
    macnat: bool = False  # the daemon's, and its lower's host frames too (it may claim them)


@dataclass
class Config:
    lower_mtu: int
    lower_up: bool
    endpoints: list[EndpointSpec]


@dataclass
class FrameSpec:
    sender: int | None  # None: from the lower; else the endpoint's index
    dst: bytes
    src: bytes
    vlan: bool
    l4: str  # "tcp", "udp" or "raw"
    payload: int
    gso_size: int


@st.composite
def configs(draw: st.DrawFn) -> Config:
    lower_mtu = draw(st.sampled_from([1500, 1500, 3000, 68, 576]) | st.integers(68, 3000))
    passthru = draw(st.integers(0, 6)) == 0

    def endpoint(mode: Mode) -> EndpointSpec:
        listens = mode is Mode.SOURCE
        return EndpointSpec(
            mode=mode,
            up=draw(st.integers(0, 3)) > 0,
            spoofchk=draw(st.booleans()),
            mtu=draw(
                st.sampled_from([lower_mtu, lower_mtu, lower_mtu, 68]) | st.integers(68, lower_mtu)
            ),
            kind=draw(st.sampled_from(["peer", "peer", "tap", "socket"])),
            capture=draw(st.integers(0, 7)) == 0,
            sources=draw(st.lists(st.sampled_from([*MACS, STRANGER]), max_size=2))
            if listens
            else [],
            macnat=mode in (Mode.VEPA, Mode.BRIDGE, Mode.PRIVATE) and draw(st.integers(0, 7)) == 0,
        )

    if passthru:
        eps = [endpoint(Mode.PASSTHRU)]
    else:
        modes = draw(
            st.lists(
                st.sampled_from([Mode.VEPA, Mode.BRIDGE, Mode.BRIDGE, Mode.PRIVATE, Mode.SOURCE]),
                min_size=1,
                max_size=4,
            )
        )
        eps = [endpoint(mode) for mode in modes]
    return Config(lower_mtu, draw(st.integers(0, 3)) > 0, eps)


@st.composite
def frames(draw: st.DrawFn, config: Config) -> FrameSpec:
    n = len(config.endpoints)
    macs = [LOWER_MAC] if config.endpoints[0].mode is Mode.PASSTHRU else MACS[:n]
    sender = draw(st.none() | st.integers(0, n - 1))
    dst = draw(st.sampled_from(macs) | st.sampled_from([*MACS, STRANGER, *GROUPS]))
    if sender is not None and draw(st.integers(0, 4)):
        src = macs[sender]  # mostly its own address; sometimes a spoofed one
    else:
        src = draw(st.sampled_from([*MACS, STRANGER, LOWER_MAC]))
    l4 = draw(st.sampled_from(["tcp", "udp", "raw"]))
    gso_size = draw(st.sampled_from([0, 0, 100, 536, 1448])) if l4 != "raw" else 0
    payload = draw(
        st.integers(0, 200)
        | st.integers(0, 200)
        | st.integers(0, 3000)
        | st.sampled_from([config.lower_mtu - 40, config.lower_mtu - 39, 1460])
    )
    return FrameSpec(sender, dst, src, draw(st.booleans()), l4, max(0, payload), gso_size)


def device_ifindex(i: int) -> int:
    return 200 + i


def build(config: Config) -> tuple[Engine, Tables, list[str]]:
    engine = Engine(lambda n: bytes(n))
    engine.add_lower(LOWER, LOWER_MAC, config.lower_mtu, up=config.lower_up)
    names = []
    devices: dict[str, Device] = {}
    captured = []
    for i, spec in enumerate(config.endpoints):
        name = f"ep{i}"
        mac = None if spec.mode is Mode.PASSTHRU else MACS[i]
        engine.add_endpoint(
            name, LOWER, spec.mode, mac, spec.mtu, up=spec.up, spoofchk=spec.spoofchk
        )
        if spec.sources:
            engine.macaddr(name, "set", spec.sources)
        if spec.macnat:
            engine.set_macnat(name, True)
        if spec.kind != "socket":
            devices[name] = Device(device_ifindex(i), peer=spec.kind == "peer")
        if spec.capture:
            captured.append(name)
        names.append(name)
    tables = derive(engine, {LOWER: LOWER_IFINDEX}, devices, captured)
    return engine, tables, names


def frame_bytes(spec: FrameSpec) -> tuple[bytes, VnetHeader | None]:
    """An Ethernet frame, and the vnet header AF_PACKET would give the daemon for it."""
    head = spec.dst + spec.src
    if spec.vlan:
        head += b"\x81\x00\x00\x05"
    if spec.l4 == "raw":
        return head + b"\x88\xb5" + bytes(spec.payload), None
    l4_header = (
        struct.pack("!HHIIBBHHH", 1, 2, 0, 0, 5 << 4, 0x10, 0, 0, 0)
        if spec.l4 == "tcp"
        else struct.pack("!HHHH", 1, 2, 8 + spec.payload, 0)
    )
    proto = 6 if spec.l4 == "tcp" else 17
    total = 20 + len(l4_header) + spec.payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total & 0xFFFF, 0, 0, 64, proto, 0, bytes(4), bytes(4)
    )
    data = head + b"\x08\x00" + ip + l4_header + bytes(spec.payload)
    if not spec.gso_size:
        return data, None
    l4_offset = len(head) + 2 + 20
    gso_type = VIRTIO_NET_HDR_GSO_TCPV4 if spec.l4 == "tcp" else VIRTIO_NET_HDR_GSO_UDP_L4
    vnet = VnetHeader(
        flags=VIRTIO_NET_HDR_F_NEEDS_CSUM,
        gso_type=gso_type,
        hdr_len=l4_offset + len(l4_header),
        gso_size=spec.gso_size,
        csum_start=l4_offset,
        csum_offset=16 if spec.l4 == "tcp" else 6,
    )
    return data, vnet


def engine_counts(engine: Engine) -> dict[str, Counters]:
    counts = {}
    port = engine.ports[LOWER]
    for name, stats in [(LOWER, port.stats)] + [
        (name, ep.stats) for name, ep in engine.endpoints.items()
    ]:
        counts[name] = Counters(
            stats.rx_packets,
            stats.rx_bytes,
            stats.tx_packets,
            stats.tx_bytes,
            dict(stats.drops),
            getattr(stats, "rx_not_ours", 0),
        )
    return counts


def program_counts(fastpath: FastPath, tables: Tables) -> dict[str, Counters]:
    counts = {}
    for lower in tables.lowers.values():
        counts[lower.name] = fastpath.counters("lower_stats", lower.slot)
    for ep in tables.endpoints.values():
        counts[ep.name] = fastpath.counters("endpoint_stats", ep.slot)
    return counts


def left_to_daemon(d: Disposition, spec: FrameSpec, tables: Tables, sender: str | None) -> bool:
    """The engine's decision is one the programs do not make (or the frame is not ours)."""
    entries = {ep.name: ep for ep in tables.endpoints.values()}
    if d.outcome is Outcome.NOT_OURS or spec.dst[0] & 1:
        return True
    if sender is not None and not entries[sender].fast:
        return True
    if sender is not None and d.reason is DropReason.ENDPOINT_DOWN and entries[sender].peer:
        return True  # a netdev that sends is up: the daemon is behind, and catches up
    lower = tables.lowers[LOWER_IFINDEX]
    target = tables.endpoints.get((LOWER_IFINDEX, lower.passthru_mac or spec.dst))
    if target is not None and not target.fast:
        return True  # the frame is for an endpoint the daemon serves
    if sender is None and d.reason is DropReason.OVERSIZE_FROM_LOWER:
        # Too big, and not for an endpoint: the host keeps it, the daemon counts it.
        ours = lower.passthru_mac is not None or (
            target is not None and target.up and target.mode is not Mode.SOURCE
        )
        return not ours or (LOWER_IFINDEX, spec.src) in tables.sources
    return any(not entries[ep.name].fast or ep.mode is Mode.SOURCE for ep in d.receivers) or (
        len(d.receivers) > 1
    )


def nonzero(c: Counters) -> Counters:
    return Counters(
        c.rx_packets,
        c.rx_bytes,
        c.tx_packets,
        c.tx_bytes,
        {r: n for r, n in c.drops.items() if n},
        c.rx_not_ours,
    )


class MapState:
    """What the maps hold now, so each example moves them with :func:`changes`."""

    owner: FastPath | None = None
    tables = Tables()


@settings(
    max_examples=1000 * SCALE,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_programs_decide_as_the_engine(fastpath: FastPath, data: st.DataObject) -> None:
    config = data.draw(configs())
    check(fastpath, config, data.draw(st.lists(frames(config), min_size=1, max_size=4)))


def check(fastpath: FastPath, config: Config, specs: list[FrameSpec]) -> list[int]:
    """Each frame through the engine and the program; the programs' actions."""
    engine, tables, names = build(config)
    if fastpath is not MapState.owner:
        MapState.owner, MapState.tables = fastpath, Tables()
        fastpath.set_inbox(INBOX_IFINDEX)
        fastpath.set_label(LOWER_IFINDEX, 0, endpoint=False, queued=False)
        for i in range(len(MACS)):
            fastpath.set_label(device_ifindex(i), i, endpoint=True, queued=False)
    fastpath.apply(changes(MapState.tables, tables))
    MapState.tables = tables
    assert fastpath.contents() == packed(tables)
    port = engine.ports[LOWER]
    actions = []
    for spec in specs:
        raw, vnet = frame_bytes(spec)
        before_engine = engine_counts(engine)
        before_program = program_counts(fastpath, tables)
        frame = Frame(raw, vnet)
        sender = None if spec.sender is None else names[spec.sender]
        if sender is None:
            d = engine.from_lower(port, frame)
            prog, ingress = "lower_ingress", LOWER_IFINDEX
        else:
            d = engine.from_endpoint(engine.endpoints[sender], frame)
            prog, ingress = "endpoint_ingress", device_ifindex(spec.sender or 0)
            if config.endpoints[spec.sender or 0].kind == "socket":
                ingress = 999  # no device: its frames never meet a program
        engine.process_broadcasts()
        verdict, action, ifindex, code = fastpath.test_run(
            prog, raw, ingress_ifindex=ingress, gso_size=spec.gso_size
        )
        actions.append(action)
        explain = f"{spec} {config} engine={d} program={(verdict, action, ifindex, code)}"
        entries = {ep.ifindex: ep for ep in tables.endpoints.values() if ep.ifindex}
        if action == PASS:
            assert left_to_daemon(d, spec, tables, sender), explain
            if ingress == 999:
                # No device, no label: nothing to hand over, as if no program ran.
                assert verdict == TC_ACT_UNSPEC and ifindex == 0, explain
            else:
                # Handed to the daemon's inbox: a lower's frame stays the host's too
                # (a copy goes), an endpoint device's goes over whole.
                assert ifindex == INBOX_IFINDEX, explain
                assert verdict == (TC_ACT_UNSPEC if sender is None else TC_ACT_REDIRECT), explain
        elif action == HOST:
            # A unicast frame from the wire for no endpoint: the host's alone.
            assert verdict == TC_ACT_UNSPEC and sender is None, explain
            assert d.outcome is Outcome.NOT_OURS or (
                d.outcome is Outcome.DROPPED and d.reason is DropReason.OVERSIZE_FROM_LOWER
            ), explain
            assert not any(ep.macnat for ep in engine.endpoints.values()), explain
        elif action == DROP:
            assert verdict == TC_ACT_SHOT, explain
            assert d.outcome is Outcome.DROPPED and d.reason is REASON_BY_CODE[code], explain
        else:
            assert verdict == TC_ACT_REDIRECT, explain
            assert d.outcome is Outcome.DELIVERED and d.reason is None, explain
            if ifindex == LOWER_IFINDEX and sender is not None:
                assert action == TO_DEV and d.wire and not d.receivers, explain
            else:
                target = entries[ifindex]
                assert [ep.name for ep in d.receivers] == [target.name], explain
                assert not d.wire, explain
                assert action == (TO_PEER if target.peer else TO_DEV), explain
        # The programs count exactly what the engine counted for the frames they
        # decide, and nothing for the frames they pass on.
        after_engine = engine_counts(engine)
        after_program = program_counts(fastpath, tables)
        for name in after_program:
            counted = nonzero(after_program[name] - before_program[name])
            if action == PASS:
                assert counted == Counters(), f"{name}: {counted} {explain}"
            else:
                expected = nonzero(after_engine[name] - before_engine[name])
                assert counted == expected, f"{name}: {counted} != {expected} {explain}"
    return actions


def bridge_pair(**changes: object) -> Config:
    spec = {"up": True, "spoofchk": True, "mtu": 1500, "kind": "peer", "capture": False}
    return Config(
        1500,
        True,
        [
            EndpointSpec(Mode.BRIDGE, sources=[], **spec),  # type: ignore[arg-type]
            EndpointSpec(Mode.BRIDGE, sources=[], **spec),  # type: ignore[arg-type]
            EndpointSpec(**{"mode": Mode.VEPA, "sources": [], **spec, **changes}),  # type: ignore[arg-type]
        ],
    )


def unicast(sender: int | None, dst: bytes, src: bytes, payload: int = 64) -> FrameSpec:
    return FrameSpec(sender, dst, src, False, "tcp", payload, 0)


def test_bridge_peers_talk_directly_and_vepa_goes_out(fastpath: FastPath) -> None:
    actions = check(
        fastpath,
        bridge_pair(),
        [
            unicast(0, MACS[1], MACS[0]),  # bridge -> bridge: redirected to the peer
            unicast(2, MACS[0], MACS[2]),  # vepa -> bridge: out of the lower
            unicast(None, MACS[2], STRANGER),  # the reflection: to the vepa endpoint
        ],
    )
    assert actions == [TO_PEER, TO_DEV, TO_PEER]


def test_a_source_listener_takes_bridge_peer_frames_to_the_daemon(fastpath: FastPath) -> None:
    config = bridge_pair(mode=Mode.SOURCE, sources=[MACS[0]])
    actions = check(fastpath, config, [unicast(0, MACS[1], MACS[0]), unicast(1, MACS[0], MACS[1])])
    assert actions == [PASS, TO_PEER]


def test_a_captured_endpoint_is_the_daemons(fastpath: FastPath) -> None:
    actions = check(
        fastpath,
        bridge_pair(capture=True),
        [unicast(None, MACS[2], STRANGER), unicast(2, STRANGER, MACS[2])],
    )
    assert actions == [PASS, PASS]


def test_super_frames_are_measured_by_their_segments(fastpath: FastPath) -> None:
    big = FrameSpec(None, MACS[2], STRANGER, False, "tcp", 2900, 1448)
    too_big = FrameSpec(None, MACS[2], STRANGER, False, "tcp", 2900, 1600)
    assert check(fastpath, bridge_pair(), [big, too_big]) == [TO_PEER, DROP]
