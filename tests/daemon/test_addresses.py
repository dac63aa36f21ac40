"""Announcements on the loop's timer: what goes to the lower's queue, and when."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from pymacvtap.core import Engine, Mode
from pymacvtap.daemon.addresses import Announcements
from pymacvtap.io.loop import Loop

LOWER = bytes.fromhex("020000000c01")
MAC = bytes.fromhex("020000000001")
IP = bytes([10, 0, 0, 11])


class FakeTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when, self.callback, self.cancelled = when, callback, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLoop:
    """call_later and time() only; :meth:`advance` runs what falls due, in order."""

    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[FakeTimer] = []

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> FakeTimer:
        timer = FakeTimer(self.now + delay, callback)
        self.timers.append(timer)
        return timer

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = [t for t in self.timers if not t.cancelled and t.when <= end]
            if not due:
                break
            timer = min(due, key=lambda t: t.when)
            self.timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = end


def setup(rounds: int = 5) -> tuple[FakeLoop, Engine, Announcements, list[float]]:
    loop = FakeLoop()
    engine = Engine(lambda n: bytes(n))
    engine.add_lower("low0", LOWER)
    engine.add_endpoint("c1", "low0", Mode.VEPA, MAC, up=True)
    flushes: list[float] = []  # when the data path was asked to write
    announcements = Announcements(
        cast(Loop, cast(Any, loop)), engine, lambda: flushes.append(loop.now), rounds
    )
    return loop, engine, announcements, flushes


def test_five_rounds_with_growing_gaps_then_silence() -> None:
    loop, engine, announcements, flushes = setup()
    port = engine.port("low0")
    port.addressing.learn_netdev("c1", IP)
    start = loop.now
    announcements.start("c1")
    loop.advance(2.0)
    times = [round(t - start, 3) for t in flushes]
    assert times == [0.0, 0.05, 0.2, 0.45, 0.8]  # QEMU's announce-self pace
    frames = [bytes(f.data) for f in port.tx_queue]
    assert len(frames) == 5
    assert all(f[6:12] == MAC and f[12:14] == b"\x08\x06" and f[28:32] == IP for f in frames)


def test_a_rarp_without_addresses_and_nothing_for_a_down_endpoint() -> None:
    loop, engine, announcements, _ = setup(rounds=1)
    port = engine.port("low0")
    announcements.start("c1")
    [rarp] = [bytes(f.data) for f in port.tx_queue]
    assert rarp[12:14] == b"\x80\x35"
    port.tx_queue.clear()
    engine.set_up("c1", False)
    announcements.start("c1")
    loop.advance(2)
    assert not port.tx_queue


def test_no_rounds_means_no_announcements() -> None:
    loop, engine, announcements, _ = setup(rounds=0)
    announcements.start("c1")
    loop.advance(2)
    assert not engine.port("low0").tx_queue
