"""Hostile frames through the sans-I/O engine and the software offload module.

At least 100,000 frames per run (times ``PYMACVTAP_FUZZ_SCALE``): any bytes,
lengths 0..65,600, any vnet header, from the lower and from every kind of
endpoint, with queues small enough that every drop reason happens.  Checked:

* no exception; every frame gets exactly one final disposition;
* **counters equal dispositions**, reason by reason: a frame lost without a
  counter is one whose disposition names no counter that went up -- the test
  counts those and requires 0;
* isolation: nothing reaches a down endpoint, an endpoint of another lower, or
  (from an endpoint) anyone but bridge peers; spoofed sources are dropped.

A share of the frames (every one with a vnet header) also goes through
``offload.to_plain``, which may only raise ``OffloadError``.
"""

from __future__ import annotations

import random
import struct
import time

from pymacvtap.core import Disposition, Endpoint, Engine, Frame, Mode, Outcome, VnetHeader
from pymacvtap.core.stats import DropReason
from pymacvtap.virtio.offload import OffloadError, to_plain
from tests.reliability.helpers import SCALE, record

FRAMES = 100_000 * SCALE
MAX_LEN = 65_600
BROADCAST = b"\xff" * 6
GROUP = bytes.fromhex("01005e000001")
OTHER_GROUP = bytes.fromhex("333300000001")
EXTERNAL = bytes.fromhex("5254000000ee")


def mac(n: int) -> bytes:
    return bytes([0x02, 0, 0, 0, n >> 8 & 0xFF, n & 0xFF])


def build_engine() -> Engine:
    """Two lowers with every mode, a passthru lower, tiny queues so every drop happens."""
    counter = iter(range(1, 1 << 30))
    engine = Engine(lambda n: next(counter).to_bytes(n, "big"))
    for lower, base in (("low0", 0x100), ("low1", 0x200)):
        port = engine.add_lower(lower, mac(base), mtu=1500)
        port.tx_queue_len = 64
        specs = [
            ("vepa", Mode.VEPA, {}),
            ("vepa2", Mode.VEPA, {"spoofchk": True}),
            ("bridge", Mode.BRIDGE, {}),
            ("bridge2", Mode.BRIDGE, {"mtu": 576}),
            ("private", Mode.PRIVATE, {}),
            ("source", Mode.SOURCE, {}),
            ("down", Mode.BRIDGE, {"up": False}),
            ("tiny", Mode.VEPA, {"rx_queue_len": 2, "bcqueuelen": 8}),
            ("nat", Mode.BRIDGE, {"macnat": True}),
            ("natvepa", Mode.VEPA, {"macnat": True}),
        ]
        for i, (label, mode, extra) in enumerate(specs):
            kwargs = {"up": True, **extra}
            if lower == "low1":  # a short broadcast queue, so it overflows
                kwargs.setdefault("bcqueuelen", 16)
            engine.add_endpoint(f"{lower}-{label}", lower, mode, mac(base + 1 + i), **kwargs)
        engine.join_group(f"{lower}-vepa", GROUP)
        engine.set_allmulti(f"{lower}-bridge", True)
        engine.macaddr(f"{lower}-source", "set", [EXTERNAL, mac(base + 1)])
    engine.add_lower("low2", mac(0x300), mtu=9000)
    engine.add_endpoint("low2-pt", "low2", Mode.PASSTHRU, up=True)
    return engine


def random_vnet(rng: random.Random) -> VnetHeader | None:
    r = rng.random()
    if r < 0.4:
        return None
    if r < 0.6:
        return VnetHeader(*struct.unpack("<BBHHHH", rng.randbytes(10)))
    gso = rng.choice([0, 0, 1, 3, 4, 5, 0x81, 0x84, rng.randrange(256)])
    return VnetHeader(
        flags=rng.choice([0, 1, 2, 3, rng.randrange(256)]),
        gso_type=gso,
        hdr_len=rng.choice([0, 14, 34, 54, 66, 74, rng.randrange(1 << 16)]),
        gso_size=rng.choice([0, 1, 8, 536, 1448, 1500, 9000, rng.randrange(1 << 16)]),
        csum_start=rng.choice([0, 14, 34, 38, 54, rng.randrange(1 << 16)]),
        csum_offset=rng.choice([6, 16, 0, rng.randrange(1 << 16)]),
    )


def l3_packet(rng: random.Random, size: int) -> tuple[int, bytes]:
    """An IPv4/IPv6 TCP/UDP packet (plausible headers, then maybe mangled) of ``size`` bytes."""
    proto = rng.choice([6, 17, rng.randrange(256)])
    l4 = (
        struct.pack("!HHIIBBHHH", 1000, 2000, 1, 0, 0x50, 0x18, 65535, 0, 0)
        if proto == 6
        else struct.pack("!HHHH", 1000, 2000, 0, 0)
    )
    if rng.random() < 0.5:
        payload_len = max(0, size - 20 - len(l4))
        total = (20 + len(l4) + payload_len) & 0xFFFF
        hdr = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, total, 1, 0x4000, 64, proto, 0, b"\x0a\0\0\1", b"\x0a\0\0\2"
        )
        ethertype = 0x0800
    else:
        payload_len = max(0, size - 40 - len(l4))
        hdr = struct.pack("!IHBB16s16s", 0x60000000, (len(l4) + payload_len) & 0xFFFF, proto, 64,
                          bytes(15) + b"\1", bytes(15) + b"\2")  # fmt: skip
        ethertype = 0x86DD
    body = bytearray(hdr + l4 + bytes(payload_len))
    for _ in range(rng.choice([0, 0, 0, 1, 3])):  # mangle a header byte or three
        if body:
            body[rng.randrange(min(len(body), 80))] = rng.randrange(256)
    return ethertype, bytes(body)


def random_frame(rng: random.Random, dsts: list[bytes], srcs: list[bytes]) -> Frame:
    r = rng.random()
    if r < 0.05:
        return Frame(rng.randbytes(rng.randrange(0, 15)), random_vnet(rng))  # runts
    if r < 0.15:
        return Frame(rng.randbytes(rng.randrange(0, MAX_LEN + 1)), random_vnet(rng))  # any bytes
    # Plausible Ethernet: an address the engine knows, then any type or an IP packet.
    if rng.random() < 0.93:
        size = rng.choice([rng.randrange(0, 200), rng.randrange(0, 1600), rng.randrange(0, 9100)])
    else:
        size = rng.randrange(0, MAX_LEN - 14)
    head = rng.choice(dsts) + rng.choice(srcs)
    if rng.random() < 0.1:
        head += rng.choice([b"\x81\x00", b"\x88\xa8"]) + rng.randbytes(2)
    if rng.random() < 0.5:
        ethertype, body = l3_packet(rng, size)
    else:
        ethertype, body = rng.choice([0x88B5, 0x0806, 0x8808, rng.randrange(1 << 16)]), bytes(size)
    return Frame(head + ethertype.to_bytes(2, "big") + body, random_vnet(rng))


def _ipv6_icmp(src_mac: bytes, icmp: bytes) -> bytes:
    ip6 = struct.pack("!IHBB16s16s", 0x60000000, len(icmp), 58, 255, bytes(15) + b"\1",
                      bytes(15) + b"\2")  # fmt: skip
    return b"\x33\x33\x00\x00\x00\x01" + src_mac + b"\x86\xdd" + ip6 + icmp


def macnat_special(rng: random.Random, src_mac: bytes) -> Frame:
    """What a macnat endpoint cannot send translated, which random bytes rarely hit."""
    kind = rng.randrange(3)
    if kind == 0:  # a VLAN tag cut short: no layer 3 to find
        return Frame(BROADCAST + src_mac + b"\x81\x00" + rng.randbytes(rng.randrange(0, 2)))
    if kind == 1:  # an ND redirect names another machine's MAC
        return Frame(_ipv6_icmp(src_mac, bytes([137, 0, 0, 0]) + bytes(36)))
    # a neighbour solicitation with a zero-length option (RFC 4861: invalid)
    return Frame(_ipv6_icmp(src_mac, bytes([135, 0, 0, 0]) + bytes(20) + b"\x01\x00" + bytes(6)))


def check_isolation(engine: Engine, d: Disposition, sender: str | None, lower: str) -> None:
    for ep in d.receivers:
        assert ep.up, f"{ep.name} is down but got {d}"
        assert ep.port is not None and ep.port.name == lower, f"{ep.name} on another lower: {d}"
    if sender is None:
        return
    ep = engine.endpoints[sender]
    if d.receivers:  # from an endpoint, only bridge mode delivers without the switch
        assert ep.mode is Mode.BRIDGE, f"{sender} ({ep.mode.label}) delivered directly: {d}"
        assert all(r.mode in (Mode.BRIDGE, Mode.SOURCE) for r in d.receivers), d
    frame = d.frame
    if d.receivers and frame.data[0] & 1:
        assert ep not in d.receivers, f"{sender}'s own flood came back to it: {d}"
    if ep.spoofchk and len(frame.data) >= 14 and frame.data[6:12] != ep.mac:
        assert d.outcome is Outcome.DROPPED, d


def wire_sender(ep: Endpoint) -> bool:
    """Whether a unicast to an outside MAC from ``ep`` goes to its lower's wire queue."""
    port = ep.port
    return ep.up and port is not None and port.up and not ep.macnat and ep.mode is not Mode.SOURCE


def test_engine_fuzz_counters_equal_dispositions() -> None:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    engine = build_engine()
    ports = engine.ports
    endpoints = list(engine.endpoints.values())
    known = [ep.mac for ep in endpoints] + [p.mac for p in ports.values()]
    dsts = [*known, BROADCAST, GROUP, OTHER_GROUP, EXTERNAL, bytes.fromhex("0180c2000001")]
    srcs = [*known, EXTERNAL, BROADCAST]
    dispositions: list[Disposition] = []
    plain_calls = plain_ok = 0
    started = time.monotonic()
    try:
        for i in range(FRAMES):
            frame = random_frame(rng, dsts, srcs)
            if rng.random() < 0.35:
                lower = rng.choice(["low0", "low1", "low2"])
                d = engine.from_lower(ports[lower], frame)
                dispositions.append(d)
                check_isolation(engine, d, None, lower)
            else:
                ep = rng.choice(endpoints)
                assert ep.port is not None
                if ep.spoofchk and rng.random() < 0.5 and len(frame.data) >= 12:
                    frame = Frame(frame.data[:6] + ep.mac + frame.data[12:], frame.vnet)
                if ep.macnat and rng.random() < 0.02:
                    frame = macnat_special(rng, ep.mac)
                d = engine.from_endpoint(ep, frame)
                dispositions.append(d)
                check_isolation(engine, d, ep.name, ep.port.name)
            if frame.vnet is not None or rng.random() < 0.05:
                # What a frontend without vnet headers does with it (stream, dgram).
                plain_calls += 1
                try:
                    pieces = to_plain(frame, rng.choice([None, 1500, 9000]))
                except OffloadError:
                    pass
                else:
                    plain_ok += 1
                    assert all(p.vnet is None for p in pieces)
            if i % 97 == 0:  # the daemon's breath: settle floods, drain some queues
                engine.process_broadcasts(rng.choice([1, 16, 256]))
                for ep in endpoints:
                    for _ in range(rng.randrange(0, 4)):
                        if ep.rx_queue:
                            ep.rx_queue.popleft()
                for port in ports.values():
                    for _ in range(rng.randrange(0, 40)):
                        if port.tx_queue:
                            port.tx_queue.popleft()
            if i % 5000 == 2500:  # a broadcast burst from outside overflows the queue
                for _ in range(40):
                    burst = Frame(BROADCAST + EXTERNAL + b"\x08\x06" + bytes(46))
                    dispositions.append(engine.from_lower(ports["low1"], burst))
            if i % 5000 == 3500:  # an endpoint outruns a wire nobody drains
                sender = next((ep for ep in endpoints if wire_sender(ep)), None)
                if sender is not None:
                    port = ports[sender.port.name]  # type: ignore[union-attr]
                    to_wire = Frame(EXTERNAL + sender.mac + b"\x08\x00" + bytes(46))
                    for _ in range(port.tx_queue_len - len(port.tx_queue) + 3):
                        dispositions.append(engine.from_endpoint(sender, to_wire))
            if i % 1000 == 999:  # the passthru endpoint goes down and up
                engine.set_up("low2-pt", not engine.endpoints["low2-pt"].up)
            if i % 5000 == 4999:  # a lower loses and regains carrier
                port = ports[rng.choice(["low0", "low1"])]
                engine.set_lower_carrier(port.name, not port.up)
        engine.process_broadcasts()
    except Exception as exc:  # name the seed so the failure can be replayed
        raise AssertionError(f"seed {seed}: {exc!r}") from exc
    elapsed = time.monotonic() - started

    # -- counters equal dispositions ------------------------------------------------
    stats_drops: dict[DropReason, int] = {}
    for holder in [*(p.stats for p in ports.values()), *(ep.stats for ep in endpoints)]:
        for reason, n in holder.drops.items():
            stats_drops[reason] = stats_drops.get(reason, 0) + n
    by_reason: dict[DropReason, int] = {}
    uncounted = 0
    refused = receivers = wire = not_ours = 0
    for d in dispositions:
        assert d.outcome is not Outcome.QUEUED, f"seed {seed}: unsettled {d}"
        refused += len(d.refused)
        receivers += len(d.receivers)
        wire += d.wire
        if d.reason is not None and d.reason is not DropReason.RX_QUEUE_FULL:
            by_reason[d.reason] = by_reason.get(d.reason, 0) + 1
        if d.outcome is Outcome.DELIVERED:
            uncounted += not (d.receivers or d.wire)
        elif d.outcome is Outcome.NOT_OURS:
            not_ours += 1
            uncounted += bool(d.receivers or d.wire or d.reason)
        else:  # dropped: it must name a counter (for a full queue: one per refusal)
            uncounted += d.reason is None or (
                d.reason is DropReason.RX_QUEUE_FULL and not d.refused
            )
    assert uncounted == 0, f"seed {seed}: {uncounted} frames lost without a counter"
    by_reason[DropReason.RX_QUEUE_FULL] = refused
    assert {r: n for r, n in by_reason.items() if n} == stats_drops, f"seed {seed}"
    assert receivers == sum(ep.stats.rx_packets for ep in endpoints)
    assert wire == sum(p.stats.tx_packets for p in ports.values())
    assert not_ours == sum(p.stats.rx_not_ours for p in ports.values())
    lower_errors = sum(p.stats.rx_errors for p in ports.values())
    assert lower_errors == by_reason.get(DropReason.RUNT_FROM_LOWER, 0) + by_reason.get(
        DropReason.OVERSIZE_FROM_LOWER, 0
    )
    # The fuzz reached every way a frame can end (it can fail by not exercising them).
    assert set(stats_drops) == set(DropReason), set(DropReason) - set(stats_drops)
    assert receivers and wire and not_ours and plain_ok
    record("engine frames fuzzed", FRAMES)
    record("engine frames through offload.to_plain", plain_calls)
    record("engine frames lost without a counter", uncounted)
    print(f"seed {seed}: {FRAMES} frames in {elapsed:.1f}s, to_plain {plain_calls} ({plain_ok} ok)")
