"""The engine's unrolled unicast paths decide exactly what its general code decides.

``Port._receive`` and ``Port.from_endpoint`` take a short path for the common case
(unicast with no source-mode listener and no passthru; a non-bridge endpoint's frame
to the wire).  The same random traffic run on two engines, one with the short paths
turned off, must give the same dispositions, queues and counters.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pymacvtap.core import Disposition, Engine, Frame, Mode

from .helpers import EXTERNAL, LOWER_MAC, local_mac, new_engine

MODES = [Mode.PRIVATE, Mode.VEPA, Mode.BRIDGE, Mode.SOURCE]


def _build(modes: list[Mode], ups: list[bool], queue_len: int, fast: bool) -> Engine:
    engine = new_engine()
    engine.add_lower("low0", LOWER_MAC).fast_paths = fast
    for i, (mode, up) in enumerate(zip(modes, ups, strict=True)):
        engine.add_endpoint(f"e{i}", "low0", mode, local_mac(i + 1), up=up, rx_queue_len=queue_len)
    return engine


def _summary(d: Disposition) -> tuple[object, ...]:
    return (d.outcome, [ep.name for ep in d.receivers], [ep.name for ep in d.refused], d.wire,
            d.reason)  # fmt: skip


def _state(engine: Engine) -> dict[str, object]:
    port = engine.port("low0")
    out: dict[str, object] = {"lower": port.stats.as_dict(), "tx_queue": len(port.tx_queue)}
    for name, ep in engine.endpoints.items():
        out[name] = (ep.stats.as_dict(), dict(ep.stats.drops), list(ep.rx_queue))
    return out


steps = st.lists(
    st.tuples(st.sampled_from(["send", "receive"]), st.integers(0, 3), st.integers(0, 4)),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(
    modes=st.lists(st.sampled_from(MODES), min_size=4, max_size=4),
    ups=st.lists(st.booleans(), min_size=4, max_size=4),
    queue_len=st.integers(1, 3),
    lower_up=st.booleans(),
    script=steps,
)
def test_unrolled_paths_match_the_general_code(
    modes: list[Mode],
    ups: list[bool],
    queue_len: int,
    lower_up: bool,
    script: list[tuple[str, int, int]],
) -> None:
    fast = _build(modes, ups, queue_len, fast=True)
    general = _build(modes, ups, queue_len, fast=False)
    for engine in (fast, general):
        engine.set_lower_carrier("low0", lower_up)
    # Destinations: the four endpoints, an outside host, the lower itself.
    destinations = [local_mac(1), local_mac(2), local_mac(3), local_mac(4), EXTERNAL]
    for kind, who, dst_index in script:
        dst = destinations[dst_index]
        if kind == "send":
            src = local_mac(who + 1)
            frame = Frame(dst + src + b"\x08\x00" + bytes(46))
            results = [e.from_endpoint(e.endpoint(f"e{who}"), frame) for e in (fast, general)]
        else:
            frame = Frame(dst + EXTERNAL + b"\x08\x00" + bytes(46))
            results = [e.from_lower(e.port("low0"), frame) for e in (fast, general)]
        assert _summary(results[0]) == _summary(results[1]), (kind, who, dst_index)
    assert _state(fast) == _state(general)
