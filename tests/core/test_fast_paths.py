"""The data path's entry points decide exactly what the engine's general code decides.

``Port.forward_from_lower`` and ``Port.forward_from_endpoint`` are what the daemon
calls per frame: they unroll the common unicast case and build no Disposition.
The same random traffic run on two engines, one fed through them and one through
``Engine.from_lower``/``Engine.from_endpoint`` (the general code), must leave the
same queues (the same frames, in order) and the same counters, drop reasons
included.  Frames come in every shape the short paths must tell apart: unicast to
each endpoint and outside, broadcast, runts, frames over the MTU, super-frames whose
segments fit, spoofed sources, with endpoints up or down in every mode.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymacvtap.core import Engine, Frame, Mode, VnetHeader
from pymacvtap.core.frame import VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4

from .helpers import BROADCAST, EXTERNAL, LOWER_MAC, local_mac, new_engine

MODES = [Mode.PRIVATE, Mode.VEPA, Mode.BRIDGE, Mode.SOURCE, Mode.PASSTHRU]
MTU = 1500


def _build(
    modes: list[Mode], ups: list[bool], spoofchk: list[bool], queue_len: int, listing: bool
) -> Engine:
    engine = new_engine()
    # Queues of one to three frames, the wire's too: "full" comes up often.
    engine.add_lower("low0", LOWER_MAC, mtu=MTU).tx_queue_len = queue_len
    if Mode.PASSTHRU in modes:
        # A passthru endpoint must be the lower's only one.
        modes = [Mode.PASSTHRU]
    for i, mode in enumerate(modes):
        # A passthru endpoint carries the lower's address.
        mac = LOWER_MAC if mode is Mode.PASSTHRU else local_mac(i + 1)
        engine.add_endpoint(f"e{i}", "low0", mode, mac, up=ups[i], rx_queue_len=queue_len)
        engine.set_spoofchk(f"e{i}", spoofchk[i])
    if Mode.SOURCE in modes and listing:
        # A source endpoint listing nobody copies nothing: the short path may run.
        # Listed: the outside host and e0 (whose bridge-local frames it must see).
        engine.macaddr(f"e{modes.index(Mode.SOURCE)}", "set", [EXTERNAL, local_mac(1)])
    return engine


def _frame(dst: bytes, src: bytes, shape: str) -> Frame:
    header = dst + src + b"\x08\x00"
    if shape == "runt":
        return Frame(header[:10])
    if shape == "oversize":
        return Frame(header + bytes(MTU + 1))
    if shape == "superframe":
        # IPv4 (20 bytes) + TCP (20 bytes, data offset 5) + 4,000 bytes in 1,448-byte
        # segments: over the MTU as a whole, within it segment by segment.
        ip_tcp = bytes(20) + bytes(12) + b"\x50" + bytes(7)
        vnet = VnetHeader(
            flags=VIRTIO_NET_HDR_F_NEEDS_CSUM,
            gso_type=VIRTIO_NET_HDR_GSO_TCPV4,
            hdr_len=54,
            gso_size=1448,
            csum_start=34,
            csum_offset=16,
        )
        return Frame(header + ip_tcp + bytes(4000), vnet)
    return Frame(header + bytes(46))


def _state(engine: Engine) -> dict[str, object]:
    port = engine.port("low0")
    out: dict[str, object] = {
        "lower": (port.stats.as_dict(), dict(port.stats.drops)),
        "tx_queue": [id(f) for f in port.tx_queue],
        "bc_queue": len(port.bc_queue),
        "ready": [ep.name for ep in port.ready],
    }
    for name, ep in engine.endpoints.items():
        out[name] = (ep.stats.as_dict(), dict(ep.stats.drops), [id(f) for f in ep.rx_queue])
    return out


steps = st.lists(
    st.tuples(
        st.sampled_from(["send", "receive", "flush"]),
        st.integers(0, 3),  # who sends (an endpoint); unused for receive and flush
        st.integers(0, 5),  # destination: e0..e3, outside, broadcast
        st.sampled_from(["normal", "normal", "runt", "oversize", "superframe"]),
        st.booleans(),  # spoofed source
    ),
    min_size=5,
    max_size=40,
)


Step = tuple[str, int, int, str, bool]


@dataclass
class Scenario:
    """Four endpoints on one lower, and the traffic to run through both engines."""

    modes: list[Mode]
    ups: list[bool]
    spoofchk: list[bool]
    queue_len: int
    lower_up: bool
    listing: bool
    script: list[Step]

    def build(self) -> Engine:
        engine = _build(self.modes, self.ups, self.spoofchk, self.queue_len, self.listing)
        engine.set_lower_carrier("low0", self.lower_up)
        return engine

    def check(self) -> None:
        """Run the script on both engines, comparing their state after every step."""
        forwarded = self.build()
        general = self.build()
        port = forwarded.port("low0")
        destinations = (
            [ep.mac for ep in forwarded.endpoints.values()]
            + [local_mac(9)] * (4 - len(forwarded.endpoints))
            + [EXTERNAL, BROADCAST]
        )
        for step in self.script:
            kind, who, dst_index, shape, spoofed = step
            dst = destinations[dst_index]
            if kind == "flush":
                # The I/O layer drains the queues; the short paths see them empty again.
                for engine in (forwarded, general):
                    engine.port("low0").tx_queue.clear()
                    for ep in engine.endpoints.values():
                        ep.rx_queue.clear()
                    engine.port("low0").ready.clear()
                continue
            name = f"e{who}"
            if kind == "send" and name not in forwarded.endpoints:
                continue
            if kind == "send":
                src = EXTERNAL if spoofed else forwarded.endpoint(name).mac
                frame = _frame(dst, src, shape)
                port.forward_from_endpoint(forwarded.endpoint(name), frame)
                general.from_endpoint(general.endpoint(name), frame)
            else:
                frame = _frame(dst, EXTERNAL, shape)
                port.forward_from_lower(frame)
                general.from_lower(general.port("low0"), frame)
            # Flood copies are settled later in both; settle them now to compare.
            forwarded.process_broadcasts()
            general.process_broadcasts()
            assert _state(forwarded) == _state(general), step


four = st.lists(st.booleans(), min_size=4, max_size=4)
scenarios = st.builds(
    Scenario,
    modes=st.lists(st.sampled_from(MODES), min_size=4, max_size=4),
    ups=four,
    spoofchk=four,
    queue_len=st.integers(1, 3),
    lower_up=st.booleans(),
    listing=st.booleans(),
    script=steps,
)


@settings(max_examples=300, deadline=None)
@given(scenario=scenarios)
def test_data_path_entry_points_match_the_general_code(scenario: Scenario) -> None:
    scenario.check()


BRIDGES = [Mode.BRIDGE, Mode.BRIDGE, Mode.BRIDGE, Mode.SOURCE]
TO_E1 = ("send", 0, 1, "normal", False)


@pytest.mark.parametrize(
    ("case", "listing", "script"),
    [
        # Rare for random traffic, so spelled out: a bridge peer's queue filling up
        # (queue_len 1: the second frame is refused)...
        ("bridge peer full", False, [TO_E1, TO_E1, ("send", 2, 1, "normal", False)]),
        # ...and a source endpoint listing the sender, which must see the frame too.
        ("source listener", True, [TO_E1, ("flush", 0, 0, "normal", False), TO_E1]),
    ],
)
def test_bridge_peers_edge_cases(case: str, listing: bool, script: list[Step]) -> None:
    Scenario(BRIDGES, [True] * 4, [False] * 4, 1, True, listing, script).check()
