"""Builders shared by the engine tests: addresses, frames, a deterministic engine, hairpin.

The external switch is modelled the way SPEC 2.1 describes it: a frame the engine put on
``port.tx_queue`` comes back in through ``engine.from_lower(port, frame)`` when the switch
hairpins (reflective relay), and not at all when it does not.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from pymacvtap.core import Disposition, Endpoint, Engine, Frame, Mode, Port, VnetHeader
from pymacvtap.core.stats import EndpointStats, LowerStats

LOWER_MAC = bytes.fromhex("525400a00001")
LOWER1_MAC = bytes.fromhex("525400a00002")
LOWER2_MAC = bytes.fromhex("525400a00003")
EXTERNAL = bytes.fromhex("5254000000ee")
EXTERNAL2 = bytes.fromhex("5254000000ef")
WATCHED = bytes.fromhex("5254000000aa")  # an external host that source endpoints list
BROADCAST = b"\xff" * 6
GROUP = bytes.fromhex("01005e000001")
UNJOINED = bytes.fromhex("01005e0000ff")
PAUSE_DST = bytes.fromhex("0180c2000001")
ETH_P_IP = 0x0800
ETH_P_PAUSE = 0x8808
ETH_P_8021Q = 0x8100


def local_mac(n: int) -> bytes:
    """A locally administered unicast address, distinct per ``n``."""
    return bytes([0x02, 0x00, 0x00, 0x00, (n >> 8) & 0xFF, n & 0xFF])


def counting_entropy() -> Callable[[int], bytes]:
    """Deterministic stand-in for os.urandom: a counter, never all-zero."""
    counter = itertools.count(1)

    def entropy(n: int) -> bytes:
        return next(counter).to_bytes(n, "big")

    return entropy


def new_engine() -> Engine:
    return Engine(counting_entropy())


def eth(
    dst: bytes,
    src: bytes,
    ethertype: int = ETH_P_IP,
    size: int = 60,
    vnet: VnetHeader | None = None,
) -> Frame:
    """An Ethernet frame of ``size`` bytes (no FCS); a distinct object on every call."""
    header = dst + src + ethertype.to_bytes(2, "big")
    payload = bytes(i & 0xFF for i in range(max(0, size - len(header))))
    return Frame((header + payload)[:size], vnet)


def copies_of(engine: Engine, frame: Frame) -> list[str]:
    """Names of the endpoints holding ``frame`` in their rx_queue, once per copy, sorted."""
    names = []
    for ep in engine.endpoints.values():
        names.extend(ep.name for queued in ep.rx_queue if queued is frame)
    return sorted(names)


def on_wire(engine: Engine, frame: Frame) -> list[str]:
    """Names of the lowers whose tx_queue holds ``frame``."""
    return sorted(p.name for p in engine.ports.values() for f in p.tx_queue if f is frame)


class Trip:
    """What happened to one frame an endpoint sent, hairpin included."""

    def __init__(self, tx: Disposition, rx: Disposition | None, settled: list[Disposition]):
        self.tx = tx
        self.rx = rx
        self.settled = settled

    @property
    def receivers(self) -> list[str]:
        names = list(self.tx.receiver_names)
        if self.rx is not None:
            names.extend(self.rx.receiver_names)
        return sorted(names)


def send(engine: Engine, ep: Endpoint, frame: Frame, hairpin: bool) -> Trip:
    """``ep`` sends ``frame``; a hairpinning switch reflects what reached the wire."""
    port = ep.port
    assert port is not None
    before = len(port.tx_queue)
    tx = engine.from_endpoint(ep, frame)
    reached_wire = len(port.tx_queue) == before + 1 and port.tx_queue[-1] is frame
    rx = engine.from_lower(port, frame) if hairpin and reached_wire else None
    settled = engine.process_broadcasts()
    return Trip(tx, rx, settled)


def receive(engine: Engine, port: Port, frame: Frame) -> Disposition:
    """A frame arrives from the wire; floods are settled before returning."""
    d = engine.from_lower(port, frame)
    engine.process_broadcasts()
    return d


def why(d: Disposition) -> str | None:
    """The drop reason's *name*: DropReason members must stay distinct, not aliases."""
    return d.reason.name if d.reason is not None else None


def counted(stats: EndpointStats | LowerStats) -> dict[str, int]:
    """Per-reason drop counters by reason name, zeros left out."""
    return {reason.name: n for reason, n in stats.drops.items() if n}


def names(text: str) -> list[str]:
    return sorted(text.split())


MODES = {
    "private": Mode.PRIVATE,
    "vepa": Mode.VEPA,
    "bridge": Mode.BRIDGE,
    "passthru": Mode.PASSTHRU,
    "source": Mode.SOURCE,
}
