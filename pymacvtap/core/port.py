"""The forwarding policy of one lower: where each frame goes.

A :class:`Port` is one lower (the kernel's ``struct macvlan_port``), an
:class:`Endpoint` one MAC address on it (``struct macvlan_dev``); they refer to
each other, so they live together, as in the kernel's file.  A
:class:`Disposition` says where one frame went: delivered to k endpoints and/or
the wire, not ours (the host's to handle), or dropped with the named counter
that was incremented (SPEC 2.2).

This module is the one place to read to know where a frame can go.  Its three
entry points mirror drivers/net/macvlan.c:

* :meth:`Port.from_lower`        -- macvlan_handle_frame (frames off the wire)
* :meth:`Port.flood`             -- macvlan_broadcast / macvlan_multicast_rx
* :meth:`Port.from_endpoint`     -- macvlan_queue_xmit (frames an endpoint sends)

Frames for an endpoint are appended to its bounded ``rx_queue``; frames for the
wire to the port's bounded ``tx_queue``.  The I/O layer drains both.

``from_lower`` and ``from_endpoint`` return a :class:`Disposition` saying where
the frame went, for tests and for anyone explaining a drop.  The daemon's data
path calls :meth:`Port.forward_from_lower` and :meth:`Port.forward_from_endpoint`
instead: they take the same decisions without building that record, which cost
more than the decision itself (two objects and two lists per frame crossing),
and unroll the common unicast cases; anything else they hand to the general code.
"""

from __future__ import annotations

import enum
from collections import deque

from pymacvtap.core.addressing import LowerAddressing, may_be_dhcp_reply, shows_addresses
from pymacvtap.core.frame import ETH_HLEN, ETH_P_PAUSE, Frame
from pymacvtap.core.mac import BROADCAST
from pymacvtap.core.macnat import MacNatDrop
from pymacvtap.core.modes import (
    FLOOD_FROM_BRIDGE,
    FLOOD_FROM_OUTSIDE,
    FLOOD_FROM_VEPA,
    REFLECT_TO_SENDER_ONLY,
    Mode,
)
from pymacvtap.core.stats import DropReason, EndpointStats, LowerStats
from pymacvtap.defaults import BCQUEUELEN

DEFAULT_TX_QUEUE_LEN = 4096
DEFAULT_RX_QUEUE_LEN = 500  # macvtap's tx_queue_len (TUN_READQ_SIZE)
DEFAULT_BCQUEUELEN = BCQUEUELEN  # MACVLAN_DEFAULT_BC_QUEUE_LEN

# Module constants for the unrolled paths: a global is cheaper than an enum attribute
# (``Mode.BRIDGE`` goes through the enum metaclass on every lookup).
_BRIDGE = Mode.BRIDGE
_SOURCE = Mode.SOURCE
_MACNAT_DROPS = {d: r for d in MacNatDrop for r in DropReason if r.value[2] == d.value}


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    NOT_OURS = "not_ours"
    DROPPED = "dropped"
    QUEUED = "queued"


class Disposition:
    """Where one frame went.

    ``receivers`` are the endpoints that got a copy, in delivery order;
    ``refused`` those offered one whose queue was full (each counted in its
    ``rx_dropped``); ``wire`` says whether it was queued for the lower.  A
    ``reason`` on a delivered frame names the counter charged for the part of
    it that was lost (the wire copy, or the flood after the broadcast queue
    overflowed).
    """

    __slots__ = ("frame", "outcome", "reason", "receivers", "refused", "wire")

    def __init__(
        self,
        frame: Frame,
        outcome: Outcome,
        receivers: list[Endpoint] | None = None,
        wire: bool = False,
        reason: DropReason | None = None,
    ) -> None:
        self.frame = frame
        self.outcome = outcome
        self.receivers: list[Endpoint] = receivers if receivers is not None else []
        self.refused: list[Endpoint] = []
        self.wire = wire
        self.reason = reason

    @property
    def receiver_names(self) -> list[str]:
        return [ep.name for ep in self.receivers]

    def __repr__(self) -> str:
        extra = f" reason={self.reason.name}" if self.reason else ""
        return f"Disposition({self.outcome.value} to={self.receiver_names} wire={self.wire}{extra})"


class Port:
    """Per-lower state (the kernel's ``struct macvlan_port``)."""

    __slots__ = (
        "addressing",
        "bc_queue",
        "by_mac",
        "endpoints",
        "groups",
        "mac",
        "macs",
        "mtu",
        "name",
        "passthru",
        "ready",
        "sources",
        "stats",
        "tx_queue",
        "tx_queue_len",
        "up",
    )

    def __init__(self, name: str, mac: bytes, mtu: int = 1500) -> None:
        self.name = name
        self.mac = mac
        self.mtu = mtu
        self.up = True  # carrier of the lower
        # Every endpoint, up or down, in creation order (the kernel's port->vlans).
        self.endpoints: dict[str, Endpoint] = {}
        # Endpoints that are UP, by MAC: the kernel's vlan_hash holds only these.
        self.by_mac: dict[bytes, Endpoint] = {}
        # Every endpoint by MAC, up or down: the uniqueness check of SPEC 2.3 in O(1).
        self.macs: dict[bytes, Endpoint] = {}
        # Allowed source MAC -> source-mode endpoints listing it (vlan_source_hash).
        self.sources: dict[bytes, list[Endpoint]] = {}
        # The single passthru endpoint, when the lower is in passthru mode.
        self.passthru: Endpoint | None = None
        # The lower's multicast filter: group -> number of UP endpoints that joined;
        # None key counts UP endpoints in allmulti (the lower goes allmulti).
        self.groups: dict[bytes | None, int] = {}
        self.bc_queue: deque[tuple[Disposition, Endpoint | None]] = deque()
        self.tx_queue: deque[Frame] = deque()
        self.tx_queue_len = DEFAULT_TX_QUEUE_LEN
        self.stats = LowerStats()
        # Endpoints with frames waiting in rx_queue, in the order they became ready.
        self.ready: dict[Endpoint, None] = {}
        # The endpoints' addresses and the translation of macnat endpoints (SPEC 9).
        self.addressing = LowerAddressing(mac)

    # -- helpers ---------------------------------------------------------------

    @property
    def bcqueuelen(self) -> int:
        """The queue bound: the largest any endpoint asked for (usedbcqueuelen)."""
        return max((ep.bcqueuelen for ep in self.endpoints.values()), default=0)

    def accepts_group(self, dst: bytes) -> bool:
        """The lower's filter (port->mc_filter): broadcast, joined groups, allmulti."""
        groups = self.groups
        return dst == b"\xff\xff\xff\xff\xff\xff" or dst in groups or None in groups

    def _deliver(self, ep: Endpoint, frame: Frame, multicast: bool) -> bool:
        """Queue ``frame`` for ``ep``; False (and counted) when its queue is full."""
        queue = ep.rx_queue
        stats = ep.stats
        if len(queue) >= ep.rx_queue_len:
            stats.rx_dropped += 1
            stats.drops[DropReason.RX_QUEUE_FULL] = stats.drops.get(DropReason.RX_QUEUE_FULL, 0) + 1
            return False
        queue.append(frame)
        stats.rx_packets += 1
        stats.rx_bytes += len(frame.data)
        if multicast:
            stats.rx_multicast += 1
        self.ready[ep] = None  # an ordered set: re-adding keeps the first position
        return True

    def _offer(self, ep: Endpoint, frame: Frame, multicast: bool, d: Disposition) -> None:
        """Offer a copy to ``ep``, recording in ``d`` whether it took it."""
        if self._deliver(ep, frame, multicast):
            d.receivers.append(ep)
        else:
            d.refused.append(ep)

    def _settle(self, d: Disposition) -> Disposition:
        """Final outcome of a frame from the lower once every copy was offered."""
        if d.receivers:
            d.outcome = Outcome.DELIVERED
        elif d.refused:
            d.outcome = Outcome.DROPPED
            if d.reason is None:
                d.reason = DropReason.RX_QUEUE_FULL
        elif d.reason is None:
            d.outcome = Outcome.NOT_OURS
            self.stats.rx_not_ours += 1
        else:
            d.outcome = Outcome.DROPPED
        return d

    def _count_lower_drop(self, reason: DropReason) -> None:
        stats = self.stats
        setattr(stats, reason.counter, getattr(stats, reason.counter) + 1)
        stats.drops[reason] = stats.drops.get(reason, 0) + 1
        if reason is DropReason.BCQUEUE_FULL:
            stats.bcqueue_dropped += 1

    def _drop_lower(self, frame: Frame, reason: DropReason) -> Disposition:
        self._count_lower_drop(reason)
        return Disposition(frame, Outcome.DROPPED, reason=reason)

    @staticmethod
    def _drop_endpoint(ep: Endpoint, frame: Frame, reason: DropReason) -> Disposition:
        stats = ep.stats
        setattr(stats, reason.counter, getattr(stats, reason.counter) + 1)
        stats.drops[reason] = stats.drops.get(reason, 0) + 1
        return Disposition(frame, Outcome.DROPPED, reason=reason)

    def _forward_source(self, frame: Frame, src: bytes, d: Disposition) -> None:
        """Copies for source-mode endpoints listing ``src`` (macvlan_forward_source)."""
        listeners = self.sources.get(src)
        if listeners:
            for ep in listeners:
                if ep.up:
                    self._offer(ep, frame, False, d)

    # -- frames from the wire (macvlan_handle_frame) ------------------------------

    def from_lower(self, frame: Frame) -> Disposition:
        data = frame.data
        stats = self.stats
        stats.rx_packets += 1
        stats.rx_bytes += len(data)
        if len(data) < ETH_HLEN:
            return self._drop_lower(frame, DropReason.RUNT_FROM_LOWER)
        # Most frames are plainly within the MTU; only the rest pay for the
        # exact segment size (GSO metadata, VLAN tags).
        if len(data) - ETH_HLEN > self.mtu and frame.segment_size() > self.mtu:
            return self._drop_lower(frame, DropReason.OVERSIZE_FROM_LOWER)
        if may_be_dhcp_reply(data):
            self.addressing.dhcp_reply(data, self.macs)
        if self.addressing.active:
            # Frames for the lower's MAC that a macnat endpoint owns, before the lookup.
            claimed = self._macnat_claim(frame)
            if claimed is not None:
                return claimed
        return self._receive(frame)

    def _macnat_claim(self, frame: Frame) -> Disposition | None:
        found = self.addressing.claim(frame.data)
        ep = None if found is None else self.endpoints.get(found.endpoint)
        if found is None or ep is None or not ep.up:
            return None
        d = Disposition(frame, Outcome.QUEUED)
        self._offer(ep, Frame(found.data, frame.vnet), False, d)
        return self._settle(d)

    def forward_from_lower(self, frame: Frame) -> None:
        """:meth:`from_lower` for the data path: the same decision, no Disposition.

        The common case is unrolled: a unicast frame within the MTU (a
        super-frame's segments within it) for an UP endpoint whose queue has
        room, with no source-mode listener to copy.  It is counted as the
        general code counts it; any other frame goes to :meth:`from_lower` whole.
        """
        data = frame.data
        size = len(data)
        # A passthru endpoint needs no exception: the general code gives it every
        # unicast frame, and the one found here is that endpoint, by its own MAC.
        if (
            size >= ETH_HLEN
            and not data[0] & 1
            and not self.sources
            and not may_be_dhcp_reply(data)
        ):
            ep = self.by_mac.get(data[0:6])
            if ep is not None and ep.mode is not _SOURCE:
                queue = ep.rx_queue
                if len(queue) < ep.rx_queue_len and (
                    size - ETH_HLEN <= self.mtu or frame.segment_size() <= self.mtu
                ):
                    lower_stats = self.stats
                    lower_stats.rx_packets += 1
                    lower_stats.rx_bytes += size
                    queue.append(frame)
                    ep_stats = ep.stats
                    ep_stats.rx_packets += 1
                    ep_stats.rx_bytes += size
                    self.ready[ep] = None
                    return
        self.from_lower(frame)

    def _receive(self, frame: Frame) -> Disposition:
        """The receive path proper; bridge-mode local unicast re-enters here too."""
        data = frame.data
        dst = data[0:6]
        src_mac = data[6:12]
        d = Disposition(frame, Outcome.QUEUED)
        self._forward_source(frame, src_mac, d)

        if data[0] & 1:  # multicast or broadcast destination
            src = self.by_mac.get(src_mac)
            if src is None and src_mac == self.mac and self.addressing.active:
                # A macnat endpoint's group frame echoed back carries the lower's MAC.
                src = self.endpoints.get(self.addressing.echoed_sender(data) or "")
            if src is not None and src.mode & REFLECT_TO_SENDER_ONLY:
                # Our own private/passthru/source endpoint's group frame came back
                # from the switch: it goes to the sender alone, never to siblings.
                self._offer(src, frame, False, d)
                return self._settle(d)
            if not self.endpoints or not self.accepts_group(dst):
                # No endpoint at all: the kernel has no macvlan port on this lower
                # any more, so the frame is simply the host's.
                return self._settle(d)
            if len(self.bc_queue) >= self.bcqueuelen:
                self._count_lower_drop(DropReason.BCQUEUE_FULL)
                d.reason = DropReason.BCQUEUE_FULL
                return self._settle(d)
            # Flooding is deferred like the kernel's bc_work; copies already made
            # for source endpoints travel in ``d`` so the frame settles once.
            self.bc_queue.append((d, src))
            return d

        if self.passthru is not None:
            ep = self.passthru
            if not ep.up:
                # The kernel consumes (frees) unicast for a down passthru endpoint.
                if not d.receivers and not d.refused:
                    self._count_lower_drop(DropReason.PASSTHRU_DOWN)
                    d.reason = DropReason.PASSTHRU_DOWN
                return self._settle(d)
        else:
            found = self.by_mac.get(dst)
            if found is None or found.mode is Mode.SOURCE:
                return self._settle(d)
            ep = found
        self._offer(ep, frame, False, d)
        return self._settle(d)

    # -- flooding (macvlan_broadcast, macvlan_multicast_rx) ----------------------

    def flood(self, frame: Frame, src: Endpoint | None, mask: Mode, d: Disposition) -> None:
        """Copy a group frame to every UP endpoint in ``mask`` whose filter takes it."""
        data = frame.data
        if ((data[12] << 8) | data[13]) == ETH_P_PAUSE:
            return
        dst = data[0:6]
        for ep in self.by_mac.values():
            if ep is not src and ep.mode & mask and ep.accepts_group(dst):
                self._offer(ep, frame, True, d)

    def process_broadcasts(self, budget: int) -> list[Disposition]:
        """Drain up to ``budget`` frames of the broadcast queue, in order."""
        settled = []
        queue = self.bc_queue
        while queue and budget > 0:
            budget -= 1
            d, src = queue.popleft()
            if src is None:
                mask = FLOOD_FROM_OUTSIDE
            elif src.mode is Mode.VEPA:
                mask = FLOOD_FROM_VEPA
            else:
                mask = FLOOD_FROM_BRIDGE
            self.flood(d.frame, src, mask, d)
            settled.append(self._settle(d))
        return settled

    # -- frames an endpoint sends (macvlan_queue_xmit) --------------------------

    def from_endpoint(self, ep: Endpoint, frame: Frame) -> Disposition:
        data = frame.data
        if len(data) < ETH_HLEN:
            return self._drop_endpoint(ep, frame, DropReason.RUNT_FROM_ENDPOINT)
        if len(data) - ETH_HLEN > ep.mtu and frame.segment_size() > ep.mtu:
            return self._drop_endpoint(ep, frame, DropReason.OVERSIZE_FROM_ENDPOINT)
        if not ep.up:
            return self._drop_endpoint(ep, frame, DropReason.ENDPOINT_DOWN)
        if ep.spoofchk and data[6:12] != ep.mac:
            return self._drop_endpoint(ep, frame, DropReason.SPOOFED)
        if not ep.macnat and shows_addresses(data):
            self.addressing.sent(ep.name, ep.mac, data)

        d = Disposition(frame, Outcome.DELIVERED)
        if ep.mode is Mode.BRIDGE:
            if data[0] & 1:
                # Bridge peers get their copy now; the wire gets the frame too.
                self.flood(frame, ep, Mode.BRIDGE, d)
            else:
                dest = self.by_mac.get(data[0:6])
                if dest is not None and dest.mode is Mode.BRIDGE:
                    # Looped through the lower's receive path, as dev_forward_skb
                    # does: source-mode listeners see it too; the wire does not.
                    self._count_tx(ep, frame)
                    return self._receive(frame)

        wire = frame if not ep.macnat else self._macnat_out(ep, frame)
        if isinstance(wire, DropReason):
            reason = wire
        elif not self.up:
            reason = DropReason.LOWER_DOWN
        elif len(self.tx_queue) >= self.tx_queue_len:
            reason = DropReason.WIRE_QUEUE_FULL
        else:
            self.tx_queue.append(wire)
            self.stats.tx_packets += 1
            self.stats.tx_bytes += len(data)
            self._count_tx(ep, frame)
            d.wire = True
            return d
        self._drop_endpoint(ep, frame, reason)
        d.reason = reason
        if not d.receivers:
            # Bridge peers may have been offered a copy and refused it (their
            # queues were full): ``d`` keeps them, so their rx_dropped is accounted.
            d.outcome = Outcome.DROPPED
        # Otherwise local bridge copies went out; only the wire copy is lost, and
        # the kernel counts that as a failed transmit (tx_dropped).
        return d

    def _macnat_out(self, ep: Endpoint, frame: Frame) -> Frame | DropReason:
        """The wire copy of a macnat endpoint's frame: the lower's MAC in it (SPEC 9)."""
        vnet = frame.vnet
        partial = vnet is not None and vnet.needs_csum
        out = self.addressing.translate_out(ep.name, frame.data, partial)
        if isinstance(out, MacNatDrop):
            return _MACNAT_DROPS[out]
        return Frame(out, vnet)

    def forward_from_endpoint(self, ep: Endpoint, frame: Frame) -> None:
        """:meth:`from_endpoint` for the data path: the same decision, no Disposition.

        The common cases are unrolled: a unicast frame within the MTU (a
        super-frame's segments within it) from an UP endpoint, not spoofed,
        either for a bridge peer (no source-mode listener to copy) or for the
        wire while it is up and its queue not full.  They are counted as the
        general code counts them; any other frame goes to :meth:`from_endpoint`
        whole.
        """
        data = frame.data
        size = len(data)
        if (
            size >= ETH_HLEN
            and not data[0] & 1
            and ep.up
            and not ep.macnat
            and (size - ETH_HLEN <= ep.mtu or frame.segment_size() <= ep.mtu)
            and (not ep.spoofchk or data[6:12] == ep.mac)
            and not shows_addresses(data)
        ):
            ep_stats = ep.stats
            if ep.mode is _BRIDGE:
                dest = self.by_mac.get(data[0:6])
                if dest is not None and dest.mode is _BRIDGE:
                    # A bridge peer's frame never reaches the wire.  Source-mode
                    # listeners want a copy: the general code makes it.
                    if self.sources:
                        self.from_endpoint(ep, frame)
                        return
                    ep_stats.tx_packets += 1
                    ep_stats.tx_bytes += size
                    self._deliver(dest, frame, False)  # a full queue counts its drop
                    return
            # Every other frame goes to the wire (in VEPA, all of them).
            queue = self.tx_queue
            if self.up and len(queue) < self.tx_queue_len:
                queue.append(frame)
                lower_stats = self.stats
                lower_stats.tx_packets += 1
                lower_stats.tx_bytes += size
                ep_stats.tx_packets += 1
                ep_stats.tx_bytes += size
                return
        self.from_endpoint(ep, frame)

    @staticmethod
    def _count_tx(ep: Endpoint, frame: Frame) -> None:
        ep.stats.tx_packets += 1
        ep.stats.tx_bytes += len(frame.data)


class Endpoint:
    """Forwarding state of one endpoint; the frontend reads ``rx_queue``.

    Configuration changes go through :class:`pymacvtap.core.engine.Engine`,
    which keeps the lower's lookup tables in step; forwarding reads the
    attributes directly.
    """

    __slots__ = (
        "allmulti",
        "bcqueuelen",
        "mac",
        "macnat",
        "mc_groups",
        "mode",
        "mtu",
        "name",
        "port",
        "rx_queue",
        "rx_queue_len",
        "source_macs",
        "spoofchk",
        "stats",
        "up",
    )

    def __init__(
        self,
        name: str,
        port: Port,
        mode: Mode,
        mac: bytes,
        mtu: int,
        *,
        spoofchk: bool = False,
        bcqueuelen: int = DEFAULT_BCQUEUELEN,
        rx_queue_len: int = DEFAULT_RX_QUEUE_LEN,
    ) -> None:
        self.name = name
        self.port: Port | None = port
        self.mode = mode
        self.mac = mac
        self.mtu = mtu
        self.up = False
        self.spoofchk = spoofchk
        self.bcqueuelen = bcqueuelen
        # Exact multicast filter (SPEC 2.3): joined groups; broadcast always passes.
        self.mc_groups: set[bytes] = set()
        self.allmulti = False
        self.source_macs: set[bytes] = set()
        # Frames to the wire carry the lower's MAC (SPEC 9); set through the Engine.
        self.macnat = False
        self.rx_queue_len = rx_queue_len
        self.rx_queue: deque[Frame] = deque()
        self.stats = EndpointStats()

    def accepts_group(self, dst: bytes) -> bool:
        """The endpoint's own multicast filter (macvlan's per-vlan mc_filter)."""
        return self.allmulti or dst == BROADCAST or dst in self.mc_groups

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"Endpoint({self.name!r}, {self.mode.label}, {self.mac.hex(':')}, {state})"
