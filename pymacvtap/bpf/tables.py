"""What the fast path's maps hold, computed from the engine (sans-I/O).

:func:`derive` turns the engine's endpoints into :class:`Tables`; :func:`changes`
turns two of them into the map operations that move the kernel from one to the
other without a moment where a frame is forwarded against the new
configuration; :func:`unpack_stats` reads the programs' per-CPU counters.
Layouts mirror ``fastpath.h``: change both together.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass, field

from pymacvtap.core.modes import Mode
from pymacvtap.core.stats import DropReason, EndpointStats, LowerStats

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from pymacvtap.core.engine import Engine

# enum fp_drop: the reasons a program decides itself.
DROP_CODES: dict[DropReason, int] = {
    DropReason.OVERSIZE_FROM_LOWER: 1,
    DropReason.PASSTHRU_DOWN: 2,
    DropReason.OVERSIZE_FROM_ENDPOINT: 3,
    DropReason.ENDPOINT_DOWN: 4,
    DropReason.LOWER_DOWN: 5,
    DropReason.SPOOFED: 6,
}
REASON_BY_CODE = {code: reason for reason, code in DROP_CODES.items()}
DROP_MAX = 8

# enum fp_action: what a program did with a frame (skb->cb[0] in a test run).
PASS, TO_PEER, TO_DEV, DROP, HOST = 0, 1, 2, 3, 4

_KEY = struct.Struct("<I6s2x")
_ENDPOINT = struct.Struct("<IIIIBBBBB6sx")  # followed by its lower's entry (``on``)
_LOWER = struct.Struct("<IIBBBB6sBx")
_STATS = struct.Struct(f"<4Q{DROP_MAX}QQ")
KEY_SIZE, LOWER_SIZE = _KEY.size, _LOWER.size
ENDPOINT_SIZE = _ENDPOINT.size + LOWER_SIZE


@dataclass(frozen=True)
class Device:
    """An endpoint's daemon-side netdev: a container's veth peer or a VM's tap."""

    ifindex: int
    peer: bool  # a veth peer (reached by bpf_redirect_peer); else a tap


@dataclass(frozen=True)
class LowerEntry:
    name: str
    ifindex: int
    mtu: int
    up: bool
    slot: int
    fast: bool = True
    passthru_mac: bytes | None = None
    sources: bool = False  # some source-mode endpoint listens here: look in ``sources``
    claims: bool = False  # a macnat endpoint may claim the host's frames: the daemon sees them


@dataclass(frozen=True)
class EndpointEntry:
    name: str
    lower: int  # the lower's ifindex
    mac: bytes
    mode: Mode
    up: bool
    mtu: int
    spoofchk: bool
    slot: int
    # Its lower's entry, copied into the endpoint's (fastpath.h: struct fp_endpoint.on),
    # so that the programs find both in one lookup; an endpoint's entry changes with it.
    on: LowerEntry
    ifindex: int = 0  # 0: no device of its own (a socket frontend)
    peer: bool = False
    fast: bool = True


@dataclass(frozen=True)
class Tables:
    lowers: dict[int, LowerEntry] = field(default_factory=dict)
    endpoints: dict[tuple[int, bytes], EndpointEntry] = field(default_factory=dict)
    # Device ifindex -> the key of its endpoint; the map holds a copy of that entry.
    devices: dict[int, tuple[int, bytes]] = field(default_factory=dict)
    sources: frozenset[tuple[int, bytes]] = frozenset()


def derive(
    engine: Engine,
    lowers: Mapping[str, int],
    devices: Mapping[str, Device],
    capture: Iterable[str] = (),
    previous: Tables | None = None,
) -> Tables:
    """The maps' contents for ``engine``.

    ``lowers`` gives the ifindex of each lower the fast path serves (others are
    left out: the daemon has them whole); ``devices`` the netdev of each endpoint
    that has one: an endpoint without (socket frontends) or under ``capture`` is
    in the tables with ``fast`` off, so the programs hand its frames to the daemon
    and still know it is there.  Counter slots of names in ``previous`` are kept.
    """
    captured = set(capture)
    lower_slots = _slots(
        {e.name: e.slot for e in previous.lowers.values()} if previous else {},
        [name for name in engine.ports if name in lowers],
    )
    endpoint_slots = _slots(
        {e.name: e.slot for e in previous.endpoints.values()} if previous else {},
        [
            ep.name
            for port in engine.ports.values()
            if port.name in lowers
            for ep in port.endpoints.values()
        ],
    )
    tables = Tables()
    sources: set[tuple[int, bytes]] = set()
    for port in engine.ports.values():
        ifindex = lowers.get(port.name)
        if ifindex is None:
            continue
        passthru = port.passthru.mac if port.passthru is not None else None
        listened = {
            (ifindex, mac)
            for mac, listeners in port.sources.items()
            if any(ep.up for ep in listeners)
        }
        sources |= listened
        lower = tables.lowers[ifindex] = LowerEntry(
            port.name,
            ifindex,
            port.mtu,
            port.up,
            lower_slots[port.name],
            passthru_mac=passthru,
            sources=bool(listened),
            claims=port.addressing.active,
        )
        for ep in port.endpoints.values():
            device = devices.get(ep.name)
            entry = EndpointEntry(
                ep.name,
                ifindex,
                ep.mac,
                ep.mode,
                ep.up,
                ep.mtu,
                ep.spoofchk,
                endpoint_slots[ep.name],
                lower,
                ifindex=device.ifindex if device else 0,
                peer=device.peer if device else False,
                # A macnat endpoint's frames are rewritten: the daemon's (SPEC 9).
                fast=device is not None and ep.name not in captured and not ep.macnat,
            )
            tables.endpoints[(ifindex, ep.mac)] = entry
            if device is not None:
                tables.devices[device.ifindex] = (ifindex, ep.mac)
    return dataclasses.replace(tables, sources=frozenset(sources))


def _slots(kept: dict[str, int], names: list[str]) -> dict[str, int]:
    """Each name's counter slot: its old one if it had one, else the lowest free."""
    slots = {name: kept[name] for name in names if name in kept}
    used = set(slots.values())
    free = 0
    for name in names:
        if name not in slots:
            while free in used:
                free += 1
            slots[name] = free
            used.add(free)
    return slots


# -- operations on the maps ------------------------------------------------------


@dataclass(frozen=True)
class PutLower:
    ifindex: int
    lower: LowerEntry


@dataclass(frozen=True)
class DeleteLower:
    ifindex: int


@dataclass(frozen=True)
class PutEndpoint:
    entry: EndpointEntry


@dataclass(frozen=True)
class DeleteEndpoint:
    lower: int
    mac: bytes


@dataclass(frozen=True)
class PutDevice:
    ifindex: int
    entry: EndpointEntry  # the device's endpoint, as in ``endpoints``


@dataclass(frozen=True)
class DeleteDevice:
    ifindex: int


@dataclass(frozen=True)
class PutSource:
    lower: int
    mac: bytes


@dataclass(frozen=True)
class DeleteSource:
    lower: int
    mac: bytes


@dataclass(frozen=True)
class ZeroStats:
    table: str  # "endpoint_stats" or "lower_stats"
    slot: int


Op = (
    PutLower
    | DeleteLower
    | PutEndpoint
    | DeleteEndpoint
    | PutDevice
    | DeleteDevice
    | PutSource
    | DeleteSource
    | ZeroStats
)


def changes(old: Tables, new: Tables) -> list[Op]:
    """Operations taking the maps from ``old`` to ``new``, in the order to apply them.

    Two phases.  First everything that changes is taken from the programs: gone
    entries deleted, changed ones written with ``fast`` off (their frames go to
    the daemon, whose engine already has the new configuration; an endpoint's
    entry changes with its lower's, whose copy it carries), new source listeners
    added.  Then the final entries are written.  A frame the programs
    see in between is the daemon's: none is forwarded by the old rules, nor by a
    half-written new one.  Counter slots given to a new name are zeroed before
    anything can count into them.
    """
    return withdraw(old, new) + install(old, new)


def withdraw(old: Tables, new: Tables) -> list[Op]:
    """The first phase of :func:`changes`: take from the programs what changes."""
    restrict: list[Op] = []
    for ifindex, lower in old.lowers.items():
        now = new.lowers.get(ifindex)
        if now is None:
            restrict.append(DeleteLower(ifindex))
        elif now != lower and lower.fast:
            restrict.append(PutLower(ifindex, dataclasses.replace(now, fast=False)))
    for key, entry in old.endpoints.items():
        now_ep = new.endpoints.get(key)
        if now_ep is None:
            restrict.append(DeleteEndpoint(*key))
        elif now_ep != entry:
            # Even the entry of an endpoint the daemon serves decides (by its lower's
            # copy) that a frame for it while it is down is the host's: withdrawn too.
            restrict.append(PutEndpoint(withdrawn(now_ep)))
    for ifindex, owner in old.devices.items():
        now_ep = new.endpoints.get(owner)
        if new.devices.get(ifindex) != owner or now_ep is None:
            restrict.append(DeleteDevice(ifindex))
        elif now_ep != old.endpoints[owner] and old.endpoints[owner].fast:
            restrict.append(PutDevice(ifindex, withdrawn(now_ep)))
    restrict.extend(PutSource(*key) for key in sorted(new.sources - old.sources))
    return restrict


def withdrawn(entry: EndpointEntry) -> EndpointEntry:
    """``entry`` as the first phase of :func:`changes` writes it: the programs decide
    nothing by it, neither for the endpoint nor (by its copy) for its lower."""
    return dataclasses.replace(entry, fast=False, on=dataclasses.replace(entry.on, fast=False))


def install(old: Tables, new: Tables) -> list[Op]:
    """The second phase of :func:`changes`: zero new counters, write the final entries."""
    settle: list[Op] = []
    old_lower_names = {lower.name: lower.slot for lower in old.lowers.values()}
    old_endpoint_names = {ep.name: ep.slot for ep in old.endpoints.values()}
    for lower in new.lowers.values():
        if old_lower_names.get(lower.name) != lower.slot:
            settle.append(ZeroStats("lower_stats", lower.slot))
    for ep in new.endpoints.values():
        if old_endpoint_names.get(ep.name) != ep.slot:
            settle.append(ZeroStats("endpoint_stats", ep.slot))
    for ifindex, lower in new.lowers.items():
        if old.lowers.get(ifindex) != lower:
            settle.append(PutLower(ifindex, lower))
    for key, entry in new.endpoints.items():
        if old.endpoints.get(key) != entry:
            settle.append(PutEndpoint(entry))
    for ifindex, owner in new.devices.items():
        entry = new.endpoints[owner]
        if old.devices.get(ifindex) != owner or old.endpoints.get(owner) != entry:
            settle.append(PutDevice(ifindex, entry))
    settle.extend(DeleteSource(*key) for key in sorted(old.sources - new.sources))
    return settle


# -- packing (fastpath.h) ------------------------------------------------------------


def pack_key(lower: int, mac: bytes) -> bytes:
    return _KEY.pack(lower, mac)


def pack_endpoint(e: EndpointEntry) -> bytes:
    own = _ENDPOINT.pack(
        e.ifindex, e.lower, e.mtu, e.slot, int(e.mode), e.up, e.spoofchk, e.fast, e.peer, e.mac
    )
    return own + pack_lower(e.on)


def pack_lower(lower: LowerEntry) -> bytes:
    passthru = lower.passthru_mac
    return _LOWER.pack(
        lower.mtu,
        lower.slot,
        lower.up,
        lower.fast,
        passthru is not None,
        lower.sources,
        passthru or bytes(6),
        lower.claims,
    )


def packed(tables: Tables) -> dict[str, dict[bytes, bytes]]:
    """The tables as the kernel's maps hold them: map name -> {key: value}."""
    return {
        "lowers": {
            ifindex.to_bytes(4, "little"): pack_lower(lower)
            for ifindex, lower in tables.lowers.items()
        },
        "endpoints": {pack_key(*key): pack_endpoint(e) for key, e in tables.endpoints.items()},
        "devices": {
            ifindex.to_bytes(4, "little"): pack_endpoint(tables.endpoints[owner])
            for ifindex, owner in tables.devices.items()
        },
        "sources": {pack_key(*key): b"\x01" for key in tables.sources},
    }


def stats_size() -> int:
    return _STATS.size


# -- counters ------------------------------------------------------------------------


@dataclass
class Counters:
    """One endpoint's or lower's share of the fast path's counting, all CPUs summed."""

    rx_packets: int = 0
    rx_bytes: int = 0
    tx_packets: int = 0
    tx_bytes: int = 0
    drops: dict[DropReason, int] = field(default_factory=dict)
    rx_not_ours: int = 0  # a lower's frames left to the host (LowerStats.rx_not_ours)

    def __sub__(self, other: Counters) -> Counters:
        reasons = self.drops.keys() | other.drops.keys()
        return Counters(
            self.rx_packets - other.rx_packets,
            self.rx_bytes - other.rx_bytes,
            self.tx_packets - other.tx_packets,
            self.tx_bytes - other.tx_bytes,
            {r: self.drops.get(r, 0) - other.drops.get(r, 0) for r in reasons},
            self.rx_not_ours - other.rx_not_ours,
        )

    def add_to(self, stats: EndpointStats | LowerStats) -> None:
        """Fold these counts into the engine's counters (as deltas: pass a difference)."""
        stats.rx_packets += self.rx_packets
        stats.rx_bytes += self.rx_bytes
        stats.tx_packets += self.tx_packets
        stats.tx_bytes += self.tx_bytes
        if self.rx_not_ours and isinstance(stats, LowerStats):
            stats.rx_not_ours += self.rx_not_ours
        for reason, count in self.drops.items():
            if count:
                setattr(stats, reason.counter, getattr(stats, reason.counter) + count)
                stats.drops[reason] = stats.drops.get(reason, 0) + count


def unpack_stats(raw: bytes, ncpus: int) -> Counters:
    """A per-CPU ``struct fp_stats`` value (one per possible CPU), summed."""
    total = Counters()
    size = _STATS.size
    for cpu in range(ncpus):
        if len(raw) < (cpu + 1) * size:
            break
        rx_p, rx_b, tx_p, tx_b, *drops, not_ours = _STATS.unpack_from(raw, cpu * size)
        total.rx_not_ours += not_ours
        total.rx_packets += rx_p
        total.rx_bytes += rx_b
        total.tx_packets += tx_p
        total.tx_bytes += tx_b
        for code, count in enumerate(drops):
            reason = REASON_BY_CODE.get(code)
            if reason is not None and count:
                total.drops[reason] = total.drops.get(reason, 0) + count
    return total
