"""Announcements: the frames that tell the network where an endpoint is now (SPEC 9).

After an endpoint comes up, the daemon restarts, a VM attaches or moves, switches still
forward to the old port until the endpoint speaks.  The daemon speaks for it: a
gratuitous ARP per IPv4 address, an unsolicited Neighbour Advertisement per IPv6
address, or a RARP when no address is known (what QEMU's announce-self sends), from the
endpoint's MAC, a few times with growing gaps.

The frames are plain builders; the timing is :class:`AnnounceSchedule`, a sans-I/O timer
in the style of aioquic's: the caller asks :meth:`~AnnounceSchedule.next_event` when to
wake up and :meth:`~AnnounceSchedule.due` whether to send now, passing the time in.
"""

from __future__ import annotations

from pymacvtap.core import headers as h
from pymacvtap.core.mac import BROADCAST

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable

# QEMU's announce-self defaults (qapi/net.json AnnounceParameters), in seconds.
INITIAL = 0.050
MAX_GAP = 0.550
ROUNDS = 5
STEP = 0.100


# -- frames ----------------------------------------------------------------------------


def gratuitous_arp(mac: bytes, address: bytes) -> bytes:
    """A broadcast ARP request for our own ``address``, as Linux sends with arp_notify.

    A request rather than a reply: every stack updates its cache from one, and switches
    learn the source MAC either way.
    """
    body = h.arp_body(h.ARPOP_REQUEST, mac, address, bytes(6), address)
    return h.ethernet(BROADCAST, mac, h.ETH_P_ARP, body)


def unsolicited_na(mac: bytes, address: bytes) -> bytes:
    """An unsolicited NA for ``address`` to all nodes, Override set (RFC 4861 7.2.6)."""
    icmp = bytearray(32)
    icmp[0] = h.ND_NEIGHBOR_ADVERT
    icmp[4] = h.ND_NA_FLAG_OVERRIDE
    icmp[8:24] = address
    icmp[24] = h.ND_OPT_TARGET_LL
    icmp[25] = 1  # units of 8 bytes
    icmp[26:32] = mac
    checksum = h.icmpv6_checksum(address, h.IPV6_ALL_NODES, icmp)
    icmp[2:4] = checksum.to_bytes(2, "big")
    ip = h.ipv6_header(address, h.IPV6_ALL_NODES, h.IPPROTO_ICMPV6, len(icmp), 255)
    return h.ethernet(h.ALL_NODES_MAC, mac, h.ETH_P_IPV6, ip + bytes(icmp))


def rarp(mac: bytes) -> bytes:
    """The RARP QEMU broadcasts for a MAC with no known address (net/announce.c)."""
    body = h.arp_body(h.ARPOP_RREQUEST, mac, h.IPV4_ZERO, mac, h.IPV4_ZERO)
    return h.ethernet(BROADCAST, mac, h.ETH_P_RARP, body)


def announcement(mac: bytes, ipv4: Iterable[bytes], ipv6: Iterable[bytes]) -> list[bytes]:
    """One round: a frame per address, or a single RARP when there is none."""
    frames = [gratuitous_arp(mac, a) for a in ipv4]
    frames += [unsolicited_na(mac, a) for a in ipv6]
    return frames or [rarp(mac)]


# -- timing ----------------------------------------------------------------------------


class AnnounceSchedule:
    """When to send the rounds of one announcement, QEMU's way.

    The first round is due at once; after round ``k`` (1-based) the gap is
    ``initial + (k - 1) * step``, capped at ``max_gap``, counted from when that round was
    sent (with the defaults: 0, 50, 200, 450, 800 ms).
    """

    __slots__ = ("_at", "_sent", "initial", "max_gap", "rounds", "step")

    def __init__(
        self,
        now: float,
        *,
        initial: float = INITIAL,
        max_gap: float = MAX_GAP,
        rounds: int = ROUNDS,
        step: float = STEP,
    ) -> None:
        if rounds < 0 or initial < 0 or step < 0 or max_gap < 0:
            raise ValueError("announce parameters must not be negative")
        self.initial = initial
        self.max_gap = max_gap
        self.rounds = rounds
        self.step = step
        self._sent = 0
        self._at: float | None = now if rounds else None

    def restart(self, now: float) -> None:
        """Start over (another ``announce`` while one runs): all rounds again from now."""
        self._sent = 0
        self._at = now if self.rounds else None

    @property
    def done(self) -> bool:
        return self._at is None

    @property
    def sent(self) -> int:
        return self._sent

    def next_event(self, now: float) -> float | None:
        """When the next round is due (``<= now``: due already), None when all are sent."""
        return self._at

    def due(self, now: float) -> bool:
        """True when a round should be sent now; the round is then counted as sent.

        A caller that woke late gets one round, not a burst of the ones it missed: a
        burst would tell the network nothing more.
        """
        if self._at is None or now < self._at:
            return False
        self._sent += 1
        if self._sent >= self.rounds:
            self._at = None
        else:
            gap = self.initial + (self._sent - 1) * self.step
            self._at = now + min(gap, self.max_gap)
        return True


class Announcer:
    """The running announcements of many endpoints (by name), for one timer in the loop."""

    def __init__(
        self,
        *,
        initial: float = INITIAL,
        max_gap: float = MAX_GAP,
        rounds: int = ROUNDS,
        step: float = STEP,
    ) -> None:
        self.initial = initial
        self.max_gap = max_gap
        self.rounds = rounds
        self.step = step
        self._running: dict[str, AnnounceSchedule] = {}

    def start(self, name: str, now: float) -> None:
        """Announce ``name`` (again, from the first round, if one is running)."""
        schedule = self._running.get(name)
        if schedule is None:
            schedule = AnnounceSchedule(
                now, initial=self.initial, max_gap=self.max_gap, rounds=self.rounds, step=self.step
            )
            self._running[name] = schedule
        else:
            schedule.restart(now)
        if schedule.done:
            del self._running[name]

    def cancel(self, name: str) -> None:
        self._running.pop(name, None)

    def __contains__(self, name: object) -> bool:
        return name in self._running

    def next_event(self, now: float) -> float | None:
        times = [t for t in (s.next_event(now) for s in self._running.values()) if t is not None]
        return min(times) if times else None

    def due(self, now: float) -> list[str]:
        """The endpoints to send a round for now (finished ones are then forgotten)."""
        ready = [name for name, schedule in self._running.items() if schedule.due(now)]
        for name in [k for k, s in self._running.items() if s.done]:
            del self._running[name]
        return ready
