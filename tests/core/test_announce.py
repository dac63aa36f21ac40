"""Announcement frames (read back by scapy) and QEMU's announce-self timing."""

from __future__ import annotations

import itertools

import pytest
from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
from scapy.layers.l2 import ARP, Ether

from pymacvtap.core.announce import (
    Announcer,
    AnnounceSchedule,
    announcement,
    gratuitous_arp,
    rarp,
    unsolicited_na,
)

from .l3frames import EP_A, IP6_A, IP6_A_GLOBAL, IP_A, IP_B, icmpv6_checksum_ok


def test_gratuitous_arp() -> None:
    frame = gratuitous_arp(EP_A, IP_A)
    pkt = Ether(frame)
    assert len(frame) == 60 and pkt.dst == "ff:ff:ff:ff:ff:ff" and pkt.src == "02:00:00:00:00:01"
    assert pkt[ARP].op == 1 and pkt[ARP].hwsrc == pkt.src and pkt[ARP].hwdst == "00:00:00:00:00:00"
    assert pkt[ARP].psrc == pkt[ARP].pdst == "192.168.1.11"


def test_unsolicited_na() -> None:
    frame = unsolicited_na(EP_A, IP6_A_GLOBAL)
    pkt = Ether(frame)
    assert pkt.dst == "33:33:00:00:00:01" and pkt.src == "02:00:00:00:00:01"
    assert pkt[IPv6].src == "2001:db8::11" and pkt[IPv6].dst == "ff02::1"
    assert pkt[IPv6].hlim == 255
    na = pkt[ICMPv6ND_NA]
    assert (na.R, na.S, na.O, na.tgt) == (0, 0, 1, "2001:db8::11")
    assert pkt[ICMPv6NDOptDstLLAddr].lladdr == "02:00:00:00:00:01"
    assert icmpv6_checksum_ok(frame)


def test_rarp_is_qemus() -> None:
    frame = rarp(EP_A)
    assert len(frame) == 60
    assert frame[:14] == b"\xff" * 6 + EP_A + b"\x80\x35"
    assert frame[14:22] == bytes.fromhex("0001080006040003")  # Ethernet/IPv4, reverse request
    assert frame[22:42] == EP_A + bytes(4) + EP_A + bytes(4)
    assert frame[42:] == bytes(18)


def test_one_round_has_a_frame_per_address_or_a_rarp() -> None:
    assert announcement(EP_A, [], []) == [rarp(EP_A)]
    frames = announcement(EP_A, [IP_A, IP_B], [IP6_A])
    garps = [gratuitous_arp(EP_A, IP_A), gratuitous_arp(EP_A, IP_B)]
    assert frames == [*garps, unsolicited_na(EP_A, IP6_A)]


def sends(schedule: AnnounceSchedule, until: float) -> list[float]:
    """When a loop that sleeps until ``next_event`` sends (rounded to the µs); it also
    checks that nothing is due a moment before."""
    sent: list[float] = []
    now = 0.0
    while (at := schedule.next_event(now)) is not None and at <= until:
        assert not schedule.due(at - 1e-6)
        now = at
        assert schedule.due(now)
        sent.append(round(now, 6))
    return sent


def test_qemu_defaults() -> None:
    # QEMU: initial 50 ms, step 100 ms, 5 rounds: gaps 50, 150, 250, 350 ms.
    schedule = AnnounceSchedule(0.0)
    assert schedule.next_event(0.0) == 0.0
    assert sends(schedule, 2.0) == [0.0, 0.05, 0.2, 0.45, 0.8]
    assert schedule.done and schedule.sent == 5 and schedule.next_event(5.0) is None


def test_gaps_are_capped_at_max() -> None:
    schedule = AnnounceSchedule(0.0, rounds=8, initial=0.1, step=0.2, max_gap=0.4)
    times = sends(schedule, 5.0)
    assert [round(b - a, 3) for a, b in itertools.pairwise(times)] == [
        0.1,
        0.3,
        0.4,
        0.4,
        0.4,
        0.4,
        0.4,
    ]


def test_a_late_caller_gets_one_round_not_a_burst() -> None:
    schedule = AnnounceSchedule(10.0)
    assert not schedule.due(9.9)
    assert schedule.due(10.0)
    assert schedule.due(30.0)  # woke 20 s late
    assert not schedule.due(30.0)
    assert schedule.next_event(30.0) == pytest.approx(30.15)


def test_restart_and_no_rounds() -> None:
    schedule = AnnounceSchedule(0.0)
    schedule.due(0.0)
    schedule.due(0.05)
    schedule.restart(1.0)
    assert sends(schedule, 3.0)[0] == 1.0 and schedule.sent == 5
    assert AnnounceSchedule(0.0, rounds=0).done
    with pytest.raises(ValueError):
        AnnounceSchedule(0.0, step=-1)


def test_announcer_runs_many() -> None:
    announcer = Announcer(rounds=2, initial=0.5)
    assert announcer.next_event(0.0) is None and announcer.due(0.0) == []
    announcer.start("a", 0.0)
    announcer.start("b", 0.2)
    assert announcer.next_event(0.0) == 0.0
    assert announcer.due(0.0) == ["a"]
    assert announcer.next_event(0.1) == 0.2
    assert announcer.due(0.2) == ["b"]
    assert announcer.due(0.5) == ["a"] and "a" not in announcer
    announcer.start("b", 0.6)  # again: from the first round
    assert announcer.due(0.6) == ["b"] and announcer.due(1.1) == ["b"]
    assert "b" not in announcer and announcer.next_event(2.0) is None
    announcer.start("c", 3.0)
    announcer.cancel("c")
    assert announcer.due(3.0) == []
    quiet = Announcer(rounds=0)
    quiet.start("a", 0.0)
    assert "a" not in quiet
