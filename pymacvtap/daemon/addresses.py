"""What the daemon says and hears for its endpoints' addresses (SPEC 9).

* :class:`Announcements`: gratuitous ARP / unsolicited NA (a RARP where no address is
  known) from an endpoint's MAC when it comes up, when the daemon restarts, when a VM
  attaches, on ``link set NAME announce``; rounds timed by the sans-I/O
  :class:`~pymacvtap.core.announce.Announcer`, driven by one loop timer.  The frames go
  through the engine as if the endpoint had sent them, so its rules apply (a macnat
  endpoint's announcement carries the lower's MAC on the wire; bridge peers hear it).
* :class:`AddressFollower`: a container netdev's own addresses (RTM_NEWADDR/DELADDR in
  its namespace) into the lower's address book, and IP multicast joins
  (RTM_NEWMULTICAST) turned into an immediate read of the netdev's groups; the lowers'
  own addresses too, which MAC translation must leave to the host.
* The clock for the engine's address tables: one tick a second (ages, transactions).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from pymacvtap.core.announce import ROUNDS, Announcer, announcement
from pymacvtap.core.engine import Engine
from pymacvtap.core.frame import Frame
from pymacvtap.daemon.runtime import EndpointRuntime
from pymacvtap.io import netlink
from pymacvtap.io.addrwatch import AddressEvent, AddressWatcher, current_addresses
from pymacvtap.io.loop import Loop, Timer

log = logging.getLogger("pymacvtap")

TICK_SECONDS = 1.0


class Announcements:
    """Running announcements of every endpoint, on one timer of the loop."""

    def __init__(
        self, loop: Loop, engine: Engine, flush: Callable[[], object], rounds: int = ROUNDS
    ) -> None:
        self.loop = loop
        self.engine = engine
        self.flush = flush  # writes what the engine queued (the data path's breath)
        self.announcer = Announcer(rounds=rounds)
        self.sent = 0  # frames, for the metrics and tests
        self._timer: Timer | None = None
        engine.tick(loop.time())  # the engine's clock starts now, not at 0
        self._ticker = loop.call_later(TICK_SECONDS, self._tick)

    def start(self, name: str) -> None:
        """Announce ``name`` from the first round (again, if one is running)."""
        self.announcer.start(name, self.loop.time())
        self._fire()

    def cancel(self, name: str) -> None:
        self.announcer.cancel(name)

    def _fire(self) -> None:
        now = self.loop.time()
        self.engine.tick(now)
        sent = 0
        for name in self.announcer.due(now):
            sent += self._send(name, now)
        if sent:
            self.flush()
        self._arm(now)

    def _send(self, name: str, now: float) -> int:
        ep = self.engine.endpoints.get(name)
        port = None if ep is None else ep.port
        if ep is None or port is None or not ep.up:
            return 0
        known = [e.address for e in port.addressing.book.entries(name, now)]
        frames = announcement(
            ep.mac, [a for a in known if len(a) == 4], [a for a in known if len(a) == 16]
        )
        for data in frames:
            port.from_endpoint(ep, Frame(data))
        self.sent += len(frames)
        return len(frames)

    def _arm(self, now: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.announcer.next_event(now)
        if when is not None:
            self._timer = self.loop.call_later(max(0.0, when - now), self._fire)

    def _tick(self) -> None:
        self.engine.tick(self.loop.time())
        self._ticker = self.loop.call_later(TICK_SECONDS, self._tick)

    def close(self) -> None:
        self._ticker.cancel()
        if self._timer is not None:
            self._timer.cancel()


class AddressFollower:
    """Container netdevs' addresses and IP multicast joins, per namespace, as they change."""

    def __init__(
        self,
        loop: Loop,
        engine: Engine,
        endpoints: Mapping[str, EndpointRuntime],
        on_new_address: Callable[[EndpointRuntime], None],
        on_groups_changed: Callable[[EndpointRuntime], None],
    ) -> None:
        self.loop = loop
        self.engine = engine
        self.endpoints = endpoints
        self.on_new_address = on_new_address
        self.on_groups_changed = on_groups_changed
        self._watchers: dict[str | None, AddressWatcher] = {}
        # (netns, ifindex) -> endpoint name
        self._by_index: dict[tuple[str | None, int], str] = {}
        # ifindex (in the daemon's namespace) -> lower name
        self._lowers: dict[int, str] = {}

    def track(self, rt: EndpointRuntime) -> Callable[[], None]:
        """Follow a container netdev's addresses (others have none of the endpoint's)."""
        cfg = rt.cfg
        self._track_lower(cfg.link)
        if not cfg.kind.netdev_is_endpoint:
            return lambda: None
        try:
            ifindex = netlink.link_info(cfg.netdev_name, cfg.netns).ifindex
            self._watcher(cfg.netns)
            # What it has already (a restored endpoint), read after subscribing: no
            # change falls in between.  Known before it comes up, so that its first
            # announcement names them rather than being a RARP.
            present = [ev for ev in current_addresses(cfg.netns) if ev.ifindex == ifindex]
        except OSError as exc:
            log.warning("%s: cannot follow its addresses: %s", cfg.name, exc)
            return lambda: None
        self._by_index[(cfg.netns, ifindex)] = cfg.name
        for ev in present:
            self._address(rt, ev)
        return lambda: self.untrack(rt)

    def _track_lower(self, lower: str) -> None:
        """The host's addresses on the lower: frames for them are never an endpoint's."""
        if lower in self._lowers.values():
            return
        port = self.engine.ports.get(lower)
        try:
            ifindex = netlink.link_info(lower, None).ifindex
            self._watcher(None)
            present = [ev for ev in current_addresses(None) if ev.ifindex == ifindex]
        except OSError as exc:
            log.warning("lower %s: cannot follow its addresses: %s", lower, exc)
            return
        self._lowers[ifindex] = lower
        if port is not None:
            for ev in present:
                port.addressing.set_host_address(ev.address, True)

    def untrack(self, rt: EndpointRuntime) -> None:
        name = rt.cfg.name
        for key in [k for k, v in self._by_index.items() if v == name]:
            del self._by_index[key]
        in_use = {e.cfg.link for e in self.endpoints.values() if e is not rt}
        for ifindex in [i for i, low in self._lowers.items() if low not in in_use]:
            del self._lowers[ifindex]
        used = {ns for ns, _ in self._by_index}
        if self._lowers:
            used.add(None)
        for netns in [ns for ns in self._watchers if ns not in used]:
            watcher = self._watchers.pop(netns)
            self.loop.forget(watcher.fileno())
            watcher.close()

    def _watcher(self, netns: str | None) -> AddressWatcher:
        watcher = self._watchers.get(netns)
        if watcher is None:
            watcher = AddressWatcher(netns)
            self._watchers[netns] = watcher
            self.loop.add_reader(watcher.fileno(), lambda: self._on_events(netns))
        return watcher

    def _on_events(self, netns: str | None) -> None:
        watcher = self._watchers.get(netns)
        if watcher is None:
            return
        try:
            events = watcher.read_events()
        except OSError as exc:
            log.warning("address events of netns %s: %s", netns, exc)
            return
        regroup: dict[str, EndpointRuntime] = {}
        announce: dict[str, EndpointRuntime] = {}
        for ev in events:
            lower = self._lowers.get(ev.ifindex) if netns is None else None
            port = None if lower is None else self.engine.ports.get(lower)
            if port is not None and not ev.multicast:
                port.addressing.set_host_address(ev.address, ev.added)
                continue
            name = self._by_index.get((netns, ev.ifindex))
            rt = None if name is None else self.endpoints.get(name)
            if rt is None:
                continue
            if ev.multicast:
                regroup[rt.cfg.name] = rt
            elif self._address(rt, ev):
                announce[rt.cfg.name] = rt
        for rt in regroup.values():
            self.on_groups_changed(rt)
        for rt in announce.values():
            self.on_new_address(rt)

    def _address(self, rt: EndpointRuntime, ev: AddressEvent) -> bool:
        """Record the change; True when the endpoint has an address it did not have."""
        port = rt.ep.port
        if port is None:
            return False
        if ev.added:
            return port.addressing.learn_netdev(rt.cfg.name, ev.address)
        port.addressing.forget_netdev(rt.cfg.name, ev.address)
        return False

    def close(self) -> None:
        for watcher in self._watchers.values():
            self.loop.forget(watcher.fileno())
            watcher.close()
        self._watchers.clear()
