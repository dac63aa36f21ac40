"""Following the kernel: what others do to lowers, endpoint netdevs and namespaces.

Link events (netlink, one watcher per namespace in use) bring lower carrier,
mtu, address and deletion, and ``ip link set`` done directly on an endpoint's
netdev, including a rename or a move to another namespace (Docker moves the
netdev into the container and renames it; the endpoint goes with it);
multicast lists, which the kernel announces to nobody, and namespaces that go
away are polled.  Each is turned into the same change a control verb
would make, through the :class:`EndpointOwner` (the service).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from pymacvtap.core.engine import Engine
from pymacvtap.core.errors import EngineError
from pymacvtap.core.mac import format_mac
from pymacvtap.daemon import events
from pymacvtap.daemon.config import EndpointConfig
from pymacvtap.daemon.lowers import Lowers
from pymacvtap.daemon.runtime import EndpointRuntime
from pymacvtap.io import netlink
from pymacvtap.io.loop import Loop
from pymacvtap.io.netns import netns_exists, resolve_netns
from pymacvtap.io.netnsid import name_by_index, namespace_of_id

log = logging.getLogger("pymacvtap")

GROUP_POLL_SECONDS = 1.0  # how often container multicast lists are re-read
GROUP_POLL_SLICE = 32  # namespaces re-read per tick at most
NETNS_POLL_SECONDS = 2.0


class EndpointOwner(Protocol):
    """What following the kernel needs of whoever owns the endpoints."""

    @property
    def endpoints(self) -> Mapping[str, EndpointRuntime]: ...

    def remove(self, rt: EndpointRuntime, *, reason: str, delete_netdev: bool) -> None: ...

    def save(
        self, where: str, *, put: Sequence[EndpointConfig] = (), delete: Sequence[str] = ()
    ) -> None: ...

    def emit(self, event: dict[str, Any]) -> None: ...

    def set_up(self, rt: EndpointRuntime, up: bool) -> None: ...

    def lower_appeared(self, link: str) -> None:
        """A device of that name is there now: endpoints waiting for it may be created."""

    def set_address(self, rt: EndpointRuntime, mac: bytes, *, netdev_has_it: bool = False) -> None:
        """A new MAC for the endpoint (``netdev_has_it``: set on its netdev with ip already)."""


class KernelFollower:
    """Link watchers, the netdev index, and the group and namespace polls."""

    def __init__(self, loop: Loop, engine: Engine, lowers: Lowers, owner: EndpointOwner) -> None:
        self.loop = loop
        self.engine = engine
        self.lowers = lowers
        self.owner = owner
        self._watchers: dict[str | None, netlink.LinkWatcher] = {}
        # An fd of each watched namespace: a netdev moved out of a container that is
        # exiting must be found after its /proc/PID/ns/net has gone.
        self._netns_fds: dict[str, int] = {}
        # (netns, netdev name) -> endpoint: link events find their endpoint in O(1).
        self._netdevs: dict[tuple[str | None, str], EndpointRuntime] = {}
        # (netns, ifindex) -> endpoint, learnt from events: a renamed netdev's event
        # carries the new name, so only its index finds the endpoint.
        self._indexes: dict[tuple[str | None, int], EndpointRuntime] = {}
        self._index_keys: dict[str, set[tuple[str | None, int]]] = {}  # by endpoint name
        # Where the group poll goes on (round robin over the namespaces).
        self._group_cursor = 0
        self._ensure_watcher(None)
        loop.call_later(GROUP_POLL_SECONDS, self._poll_groups)
        loop.call_later(NETNS_POLL_SECONDS, self._poll_namespaces)

    # -- endpoints' netdevs --------------------------------------------------------------

    def track(self, rt: EndpointRuntime) -> Callable[[], None]:
        """Follow the endpoint's netdev, if it has one; returns the undo."""
        cfg = rt.cfg
        if not cfg.kind.netdev:
            return lambda: None
        self._ensure_watcher(cfg.netns)
        key = (cfg.netns, cfg.netdev_name)
        self._netdevs[key] = rt
        return lambda: self.untrack(rt)

    def untrack(self, rt: EndpointRuntime) -> None:
        key = (rt.cfg.netns, rt.cfg.netdev_name)
        if self._netdevs.get(key) is rt:
            del self._netdevs[key]
        for index_key in self._index_keys.pop(rt.cfg.name, ()):
            if self._indexes.get(index_key) is rt:
                del self._indexes[index_key]

    def _learn_index(self, rt: EndpointRuntime, netns: str | None, ifindex: int) -> None:
        self._indexes[netns, ifindex] = rt
        self._index_keys.setdefault(rt.cfg.name, set()).add((netns, ifindex))

    def catch_up(self) -> None:
        """Handle the link events queued so far, in every namespace.

        A control verb may arrive before the events that came first: Docker moves
        the netdev back out of the container and then asks to delete the endpoint,
        which must find the netdev where it is now.
        """
        for netns in list(self._watchers):
            self._on_link_events(netns)

    def follow_netdev(self, rt: EndpointRuntime, *, initial: bool, restoring: bool) -> None:
        """Bring the engine in line with the endpoint (admin state, multicast groups).

        A container's netdev *is* the endpoint: its admin state is the truth,
        whoever set it.  A VM port's up/down is the daemon's own setting (a VM
        cannot raise its port); its tap stays up so frames can reach the VM.
        """
        cfg = rt.cfg
        if cfg.kind.netdev_is_endpoint:
            if initial and not restoring:
                want_up = cfg.starts_up
                if want_up:
                    netlink.set_link(cfg.netdev_name, cfg.netns, up=True)
                self.owner.set_up(rt, want_up)
            else:
                info = netlink.link_info(cfg.netdev_name, cfg.netns)
                self.owner.set_up(rt, info.up)
        elif initial:
            self.owner.set_up(rt, cfg.starts_up)
        if rt.ep.up:
            # A down endpoint receives nothing, and the netdev's groups change as it
            # comes up: they are read then (its up event, or the group poll).  The
            # read is a pass over every netdev of the namespace (dev_mcast), which
            # made each link add cost more than the one before.
            self.sync_groups(rt)

    def sync_groups(self, rt: EndpointRuntime) -> None:
        """The exact multicast filter: the groups joined on the endpoint's netdev.

        Socket frontends have no netdev and so no joined groups: like a kernel
        macvtap whose guest cannot change its filter, they get broadcast only.
        """
        cfg = rt.cfg
        if not cfg.kind.netdev:
            return
        try:
            info = netlink.link_info(cfg.netdev_name, cfg.netns)
            groups = netlink.multicast_groups(cfg.netdev_name, cfg.netns)
        except (OSError, netlink.LinkNotFound):
            return
        self.engine.set_groups(cfg.name, groups)
        # macvlan_compute_filter: a promiscuous or allmulti device takes every group.
        self.engine.set_allmulti(cfg.name, info.allmulti or info.promisc)

    # -- link events ---------------------------------------------------------------------

    def _ensure_watcher(self, netns: str | None) -> None:
        if netns in self._watchers:
            return
        watcher = netlink.LinkWatcher(netns)
        self._watchers[netns] = watcher
        if netns is not None:
            self._netns_fds[netns] = os.open(resolve_netns(netns), os.O_RDONLY | os.O_CLOEXEC)
        self.loop.add_reader(watcher.fileno(), lambda: self._on_link_events(netns))

    def _on_link_events(self, netns: str | None) -> None:
        watcher = self._watchers.get(netns)
        if watcher is None:
            return
        events = watcher.read_events()
        # An event carries a device's whole state after one change, so of an endpoint
        # netdev's events in a batch only the last one is news.  The earlier ones are
        # stale: a new tap's own random MAC, from before the daemon set the endpoint's,
        # would flip the endpoint's address back and forth on every link add.
        last = {ev.ifindex: i for i, ev in enumerate(events)}
        for i, ev in enumerate(events):
            if netns is None:
                self._lower_event(ev)
            rt = self._netdevs.get((netns, ev.ifname))
            if rt is not None:
                # Learnt from every event, stale ones too: a batch may end with the
                # netdev under another name (renamed, then moved away by Docker).
                self._learn_index(rt, netns, ev.ifindex)
            if last[ev.ifindex] != i:
                continue
            if rt is None:
                rt = self._indexes.get((netns, ev.ifindex))
            if rt is not None and rt.cfg.name in self.owner.endpoints:
                self._netdev_event(rt, ev)

    def _lower_event(self, ev: netlink.LinkEvent) -> None:
        lower = self.lowers.get(ev.ifname)
        if lower is None:
            if not ev.deleted:
                self.owner.lower_appeared(ev.ifname)
            return
        owner = self.owner
        on_lower = [rt for rt in owner.endpoints.values() if rt.cfg.link == ev.ifname]
        if ev.deleted:
            for rt in on_lower:
                owner.remove(rt, reason=f"lower {ev.ifname} was removed", delete_netdev=True)
            self.lowers.release(ev.ifname)
            owner.emit({"event": "lower.del", "link": ev.ifname})
            owner.save(f"lower {ev.ifname} removed", delete=[rt.cfg.name for rt in on_lower])
            return
        if ev.carrier is not None and ev.carrier != lower.port.up:
            self.engine.set_lower_carrier(ev.ifname, ev.carrier)
            for rt in on_lower:
                try:
                    rt.frontend.set_carrier(ev.carrier)
                except OSError as exc:
                    log.warning("%s: cannot set carrier: %s", rt.cfg.name, exc)
            owner.emit({"event": "lower.carrier", "link": ev.ifname, "carrier": ev.carrier})
        if ev.mtu is not None and ev.mtu != lower.port.mtu:
            clamped = []
            before = {rt.cfg.name: events.values(rt.ep) for rt in on_lower}
            for ep in self.engine.set_lower_mtu(ev.ifname, ev.mtu):
                rt = owner.endpoints[ep.name]
                clamped.append(rt.config())
                event = events.link_set(
                    ep.name, before[ep.name], events.values(ep), events.BY_KERNEL
                )
                if event is not None:
                    owner.emit(event)
                try:
                    netlink.set_link(rt.cfg.netdev_name, rt.cfg.netns, mtu=ep.mtu)
                except OSError as exc:
                    log.warning("%s: cannot clamp mtu: %s", ep.name, exc)
            owner.save(f"lower {ev.ifname} mtu", put=clamped)
            self.lowers.datapath.changed()
        if ev.mac is not None and ev.mac != lower.port.mac:
            before = {rt.cfg.name: events.values(rt.ep) for rt in on_lower}
            self.engine.set_lower_mac(ev.ifname, ev.mac)
            for rt in on_lower:  # a passthru endpoint's address is the lower's
                event = events.link_set(
                    rt.cfg.name, before[rt.cfg.name], events.values(rt.ep), events.BY_KERNEL
                )
                if event is not None:
                    owner.emit(event)

    def _netdev_event(self, rt: EndpointRuntime, ev: netlink.LinkEvent) -> None:
        """Follow `ip link set` done directly on the endpoint's netdev."""
        cfg, owner = rt.cfg, self.owner
        if ev.deleted and ev.moved_to is not None and ev.new_ifindex is not None:
            self._netdev_moved(rt, ev.moved_to, ev.new_ifindex)
            return
        if ev.deleted:
            owner.remove(rt, reason=f"netdev {cfg.netdev_name} was deleted", delete_netdev=False)
            owner.save(f"netdev {cfg.netdev_name} deleted", delete=[cfg.name])
            return
        if ev.ifname and ev.ifname != cfg.netdev_name:
            self._relocate(rt, cfg.netns, ev.ifname, ev.ifindex)
        changed = False
        before = events.values(rt.ep)
        if ev.allmulti is not None and ev.allmulti != rt.ep.allmulti:
            self.engine.set_allmulti(cfg.name, ev.allmulti)
        if cfg.kind.netdev_is_endpoint and ev.up is not None and ev.up != rt.ep.up:
            owner.set_up(rt, ev.up)
            self.sync_groups(rt)
            changed = True
        if ev.mtu is not None and ev.mtu != rt.ep.mtu:
            try:
                self.engine.set_mtu(cfg.name, ev.mtu)
                changed = True
            except EngineError as exc:
                log.warning("%s: %s; restoring mtu %d", cfg.name, exc.message, rt.ep.mtu)
                netlink.set_link(cfg.netdev_name, cfg.netns, mtu=rt.ep.mtu)
        if ev.mac is not None and ev.mac != rt.ep.mac:
            try:
                owner.set_address(rt, ev.mac, netdev_has_it=True)
                changed = True
            except (EngineError, OSError) as exc:
                log.warning("%s: %s; restoring the address", cfg.name, exc)
                netlink.set_link(cfg.netdev_name, cfg.netns, address=format_mac(rt.ep.mac))
        if changed:
            owner.save(f"netdev {cfg.netdev_name} changed", put=[rt.config()])
            event = events.link_set(cfg.name, before, events.values(rt.ep), events.BY_NETDEV)
            if event is not None:
                owner.emit(event)

    def _netdev_moved(self, rt: EndpointRuntime, nsid: int, ifindex: int) -> None:
        """The netdev went to another namespace: the endpoint follows it there."""
        cfg = rt.cfg
        try:
            fd = self._netns_fds.get(cfg.netns) if cfg.netns is not None else None
            netns = namespace_of_id(nsid, cfg.netns if fd is None else f"/proc/self/fd/{fd}")
            ifname = name_by_index(ifindex, netns)
        except OSError as exc:
            log.warning("%s: netdev %s moved where it cannot be followed: %s", cfg.name,
                        cfg.netdev_name, exc)  # fmt: skip
            self.owner.remove(rt, reason=f"netdev {cfg.netdev_name} moved away",
                              delete_netdev=False)  # fmt: skip
            self.owner.save(f"netdev {cfg.netdev_name} moved", delete=[cfg.name])
            return
        self._relocate(rt, netns, ifname, ifindex)
        # Changes made before the new namespace's watcher existed (Docker renames the
        # netdev and sets it up at once) came as no event: read them now that it does.
        try:
            renamed = name_by_index(ifindex, netns)
            if renamed != ifname:
                self._relocate(rt, netns, renamed, ifindex)
            self.follow_netdev(rt, initial=False, restoring=False)
        except OSError as exc:
            log.info("%s: reading the moved netdev: %s (its events will tell)", cfg.name, exc)

    def _relocate(self, rt: EndpointRuntime, netns: str | None, ifname: str, ifindex: int) -> None:
        """The endpoint's netdev is now ``ifname`` in ``netns`` (renamed, moved, or both)."""
        before = f"{rt.cfg.netdev_name} in netns {rt.cfg.netns or '(own)'}"
        self.untrack(rt)
        rt.cfg = dataclasses.replace(
            rt.cfg, netns=netns, ifname=None if ifname == rt.cfg.name else ifname
        )
        rt.frontend.moved(ifname, netns)
        self.track(rt)
        self._learn_index(rt, netns, ifindex)
        log.info("%s: netdev %s is now %s in netns %s", rt.cfg.name, before, ifname,
                 netns or "(own)")  # fmt: skip
        self.owner.save(f"netdev {ifname} moved", put=[rt.config()])
        self.owner.emit({"event": "link.move", "ifname": rt.cfg.name, "netns": netns,
                         "netdev": ifname})  # fmt: skip

    # -- polls ---------------------------------------------------------------------------

    def _poll_groups(self) -> None:
        """Re-read joined multicast groups, a slice of the namespaces per tick.

        The kernel tells nobody when a tap's multicast list changes, so the
        lists are polled; allmulti/promisc changes do come as link events, so
        the poll reads only the lists: one read of a namespace's dev_mcast
        serves all its endpoints (the file lists every device anyway).  A slice
        per tick keeps the cost per tick flat: each namespace is visited about
        every GROUP_POLL_SECONDS, at most GROUP_POLL_SLICE at a time.
        """
        by_netns: dict[str | None, list[EndpointRuntime]] = {}
        for rt in self.owner.endpoints.values():
            if rt.cfg.kind.netdev and rt.ep.up:
                by_netns.setdefault(rt.cfg.netns, []).append(rt)
        spaces = list(by_netns)
        ticks = max(1, -(-len(spaces) // GROUP_POLL_SLICE))
        count = min(len(spaces), GROUP_POLL_SLICE)
        start = self._group_cursor % len(spaces) if spaces else 0
        for i in range(count):
            netns = spaces[(start + i) % len(spaces)]
            try:
                lists = netlink.all_multicast_groups(netns)
            except OSError:
                continue  # the namespace is going away: _poll_namespaces handles that
            for rt in by_netns[netns]:
                groups = lists.get(rt.cfg.netdev_name, set())
                if groups != rt.ep.mc_groups:
                    self.engine.set_groups(rt.cfg.name, groups)
        self._group_cursor = start + count
        self.loop.call_later(GROUP_POLL_SECONDS / ticks, self._poll_groups)

    def _poll_namespaces(self) -> None:
        owner = self.owner
        # A netdev moved out of a namespace just before it went is followed, not lost.
        self.catch_up()
        gone = [
            rt
            for rt in owner.endpoints.values()
            if rt.cfg.netns is not None and not netns_exists(rt.cfg.netns)
        ]
        for rt in gone:
            owner.remove(rt, reason=f"netns {rt.cfg.netns} is gone", delete_netdev=False)
        if gone:
            owner.save("netns removed", delete=[rt.cfg.name for rt in gone])
        used = {rt.cfg.netns for rt in owner.endpoints.values()}
        for netns in [ns for ns in self._watchers if ns is not None and ns not in used]:
            watcher = self._watchers.pop(netns)
            self.loop.forget(watcher.fileno())
            watcher.close()
            os.close(self._netns_fds.pop(netns))
        self.loop.call_later(NETNS_POLL_SECONDS, self._poll_namespaces)

    def close(self) -> None:
        for watcher in self._watchers.values():
            watcher.close()
        for fd in self._netns_fds.values():
            os.close(fd)
        self._netns_fds.clear()
