"""The control verbs (the control socket's :class:`Service`), each undone when a step fails.

``link add`` and the other verbs change the engine, the real devices and the
saved state together; a step that fails undoes the steps before it (the undo
stack in :meth:`EndpointService.link_add`).  The service owns the endpoints
table and puts the daemon's parts together: the lowers, the data path and the
follower of the kernel, which hands its changes back through the same methods.
"""

from __future__ import annotations

import base64
import errno
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from pymacvtap.control.protocol import WithFds
from pymacvtap.core.announce import ROUNDS
from pymacvtap.core.engine import Engine
from pymacvtap.core.errors import EngineError
from pymacvtap.core.frame import Frame
from pymacvtap.core.mac import format_mac, parse_mac
from pymacvtap.core.modes import Mode
from pymacvtap.daemon import events
from pymacvtap.daemon.addresses import AddressFollower, Announcements
from pymacvtap.daemon.config import ConfigError, EndpointConfig
from pymacvtap.daemon.datapath import DataPath
from pymacvtap.daemon.dhcp import DhcpKeeper
from pymacvtap.daemon.ebpf import EbpfPath, choose
from pymacvtap.daemon.follow import KernelFollower
from pymacvtap.daemon.kinds import open_frontend
from pymacvtap.daemon.lowers import Lowers
from pymacvtap.daemon.marks import Marks
from pymacvtap.daemon.runtime import EndpointRuntime, add_to_engine
from pymacvtap.daemon.state import StateError, StateStore
from pymacvtap.daemon.view import show, show_lower
from pymacvtap.daemon.waiting import (
    WAITING_RETRY_SECONDS,
    Waiting,
    gone_for_good,
    missing,
    reason_of,
    show_waiting,
)
from pymacvtap.io import netlink
from pymacvtap.io.loop import Loop
from pymacvtap.io.netns import netns_exists

log = logging.getLogger("pymacvtap")

Subscriber = Callable[[dict[str, Any]], None]


class EndpointService:
    """The Service behind the control socket; owner of the endpoints."""

    def __init__(
        self,
        loop: Loop,
        state: StateStore,
        datapath: str = "python",
        *,
        announce_rounds: int = ROUNDS,
    ) -> None:
        """``datapath``: ``--datapath`` (auto, ebpf, python); BpfError if ebpf cannot be had."""
        self.loop = loop
        self.state = state
        self.engine = Engine(os.urandom)
        self.endpoints: dict[str, EndpointRuntime] = {}
        self._subscribers: list[Subscriber] = []
        software = choose(datapath, loop, self.engine)
        self.datapath: DataPath = software
        if isinstance(software, EbpfPath):
            # The maps follow every change before the change is answered.
            self.subscribe(software.on_event)
        self.lowers = Lowers(self.engine, self.datapath)
        self.follower = KernelFollower(loop, self.engine, self.lowers, self)
        software.catch_up = self.follower.catch_up
        # Configured endpoints not created (yet): restore never forgets one.
        self.waiting: dict[str, Waiting] = {}
        self.marks = Marks(state.directory)
        loop.call_later(WAITING_RETRY_SECONDS, self._retry_waiting)
        self.dhcp = DhcpKeeper(loop, self.lowers, self)
        self.announcements = Announcements(loop, self.engine, software.breathe, announce_rounds)
        self.addresses = AddressFollower(
            loop, self.engine, self.endpoints, self._announce_if_up, self.follower.sync_groups
        )

    # -- the control verbs ---------------------------------------------------------------

    def link_add(self, args: dict[str, Any]) -> dict[str, Any]:
        """``link add``: the request's arguments are the EndpointConfig attributes."""
        cfg = EndpointConfig.from_dict(args)
        waiting = self.waiting.get(cfg.name)
        if waiting is not None:
            raise EngineError(
                "EEXIST",
                f"link add {cfg.name}: an endpoint of that name exists, waiting ({waiting.reason})",
            )
        return self.add(cfg)

    def add(self, cfg: EndpointConfig, *, restoring: bool = False) -> dict[str, Any]:
        where = f"link add {cfg.name}"
        if cfg.name in self.endpoints:
            raise EngineError("EEXIST", f"{where}: an endpoint of that name exists")
        if cfg.netns is not None and not netns_exists(cfg.netns):
            raise ConfigError("ENOENT", f"{where}: netns {cfg.netns}: no such network namespace")
        kind = cfg.kind
        undo: list[Callable[[], object]] = []
        try:
            lower = self.lowers.use(cfg.link, where)
            if not lower.port.endpoints:
                undo.append(lambda: self.lowers.release(cfg.link))
            try:
                ep = add_to_engine(self.engine, cfg)
            except EngineError as exc:
                raise EngineError(
                    exc.code, f"{where}: {_strip_name(exc.message, cfg.name)}"
                ) from None
            undo.append(lambda: self.engine.remove_endpoint(cfg.name))
            try:
                # Our leftover of that name goes; a device not ours is refused.
                self.marks.make_way(cfg, self._configured, restoring=restoring)
                frontend = open_frontend(cfg, ep, restoring, lambda: self._fds_changed(cfg.name))
            except FileExistsError as exc:
                raise ConfigError("EEXIST", f"{where}: {exc}") from None
            except OSError as exc:
                what = cfg.socket_path or f"netdev {cfg.netdev_name}"
                raise ConfigError(
                    errno.errorcode.get(exc.errno or 0, "EIO"),
                    f"{where}: cannot create {what}: {exc.strerror or exc}",
                ) from None
            # A restarting daemon leaves netdevs for the next one; sockets are its own.
            undo.append(lambda: frontend.close(delete=not restoring or not kind.netdev))
            if kind.netdev:
                self.marks.mark(cfg.netdev_name, cfg.netns, cfg.name)
            rt = EndpointRuntime(cfg, ep, frontend)
            self.endpoints[cfg.name] = rt
            undo.append(lambda: self.endpoints.pop(cfg.name, None))
            if not lower.port.up:
                frontend.set_carrier(False)  # born on a lower without carrier
            undo.append(self.follower.track(rt))
            self.lowers.listen_for(lower, rt)
            undo.append(lambda: self.lowers.stop_listening(lower, ep.mode, ep.mac))
            undo.append(self.addresses.track(rt))
            self.follower.follow_netdev(rt, initial=True, restoring=restoring)
            if not restoring:
                self.save(where, put=[rt.config()])
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:  # pragma: no cover - best effort rollback
                    log.exception("%s: rollback step failed", where)
            raise
        self.datapath.attach_endpoint(rt)
        if cfg.dhcp:
            self.dhcp.keep(rt)
        self.emit({"event": "link.add", "ifname": cfg.name, "link": cfg.link})
        return show(rt, stats=False)

    def link_set(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        where = f"link set {name}"
        rt = self._endpoint(name, where)
        cfg = rt.cfg
        before = events.values(rt.ep)
        try:
            if "mode" in changes:
                self.engine.set_mode(name, Mode.parse(str(changes["mode"])))
            if "address" in changes:
                self.set_address(rt, parse_mac(str(changes["address"])))
            if "mtu" in changes:
                mtu = int(changes["mtu"])
                self.engine.set_mtu(name, mtu)
                if cfg.kind.netdev:
                    netlink.set_link(cfg.netdev_name, cfg.netns, mtu=mtu)
            if "spoofchk" in changes:
                self.engine.set_spoofchk(name, bool(changes["spoofchk"]))
            if "macnat" in changes:
                self.engine.set_macnat(name, bool(changes["macnat"]))
            if "macaddr" in changes:
                spec = changes["macaddr"]
                macs = [parse_mac(m) for m in spec.get("addresses", [])]
                self.engine.macaddr(name, str(spec.get("op")), macs)
            if "up" in changes:
                up = bool(changes["up"])
                if cfg.kind.netdev_is_endpoint:
                    # The container's netdev is the endpoint; a VM port's tap stays
                    # up so the daemon can reach it, only forwarding stops.
                    netlink.set_link(cfg.netdev_name, cfg.netns, up=up)
                self.set_up(rt, up)
            if changes.get("announce"):
                if not rt.ep.up:
                    raise EngineError("ENETDOWN", "announce: the endpoint is down")
                self.announcements.start(name)
        except EngineError as exc:
            raise EngineError(exc.code, f"{where}: {_strip_name(exc.message, name)}") from None
        except ValueError as exc:
            raise ConfigError("EINVAL", f"{where}: {exc}") from None
        self.save(where, put=[rt.config()])
        event = events.link_set(name, before, events.values(rt.ep), events.BY_REQUEST, changes)
        if event is not None:
            self.emit(event)
        return show(rt, stats=False)

    def link_del(self, name: str) -> None:
        if name in self.waiting:
            self._forget_waiting(name)
            return
        self.follower.catch_up()  # its netdev may have moved meanwhile
        rt = self._endpoint(name, f"link del {name}")
        self.dhcp.stop(rt, release=True)
        self.remove(rt, reason="deleted by request", delete_netdev=True)
        self.save(f"link del {name}", delete=[name])

    def link_show(self, name: str | None, stats: bool) -> list[dict[str, Any]]:
        if stats:
            self.datapath.harvest()
        if name is not None:
            if name in self.waiting:
                return [show_waiting(self.waiting[name])]
            return [show(self._endpoint(name, f"link show {name}"), stats)]
        return [show(rt, stats) for rt in self.endpoints.values()] + [
            show_waiting(w) for w in self.waiting.values()
        ]

    def lower_show(self, name: str | None, stats: bool) -> list[dict[str, Any]]:
        """``lower show``: the lowers in use (an endpoint on them), with their own counters."""
        if stats:
            self.datapath.harvest()
        if name is None:
            return [show_lower(lower.port, stats) for lower in self.lowers.table.values()]
        lower = self.lowers.get(name)
        if lower is None:
            raise EngineError("ENODEV", f"lower show {name}: no endpoint uses a lower of that name")
        return [show_lower(lower.port, stats)]

    def endpoint_access(self, name: str) -> tuple[int | None, int | None]:
        if name in self.waiting:
            cfg = self.waiting[name].cfg
            return cfg.owner, cfg.group
        rt = self._endpoint(name, name)
        return rt.cfg.owner, rt.cfg.group

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def attach(self, name: str, queues: int | None) -> WithFds:
        """Fresh queue fds of a macvtap endpoint's tap, for its VM (helper, exec)."""
        where = f"attach {name}"
        rt = self._endpoint(name, where)
        cfg = rt.cfg
        if not cfg.kind.hands_out_queues:
            raise ConfigError(
                "EOPNOTSUPP",
                f"{where}: only macvtap endpoints with frontend tap have queues to hand out "
                f"(this one is {cfg.type}, frontend {cfg.frontend})",
            )
        count = cfg.queues if queues is None else queues
        if count > cfg.queues:
            raise ConfigError(
                "EINVAL",
                f"{where}: queues {count}: the endpoint was created with queues {cfg.queues}",
            )
        try:
            fds = rt.frontend.open_queue_fds(count, cfg.owner, cfg.group)
        except OSError as exc:
            hint = " (is a VM attached already?)" if exc.errno == errno.EBUSY else ""
            raise ConfigError(
                errno.errorcode.get(exc.errno or 0, "EIO"),
                f"{where}: tap {cfg.netdev_name}: {exc.strerror}{hint}",
            ) from None
        self.announcements.start(name)  # a VM attached: tell the network where it is
        self.emit({"event": "attach", "ifname": name, "queues": count})
        return WithFds({"name": name, "queues": count}, fds)

    def capture(self, name: str, callback: Subscriber) -> Callable[[], None]:
        """Stream the endpoint's frames, both directions, as events until unsubscribed.

        ``rx`` frames are those handed to the frontend (what the endpoint's user
        receives), ``tx`` those read from it (what it sent), as the user sees them.
        """
        rt = self._endpoint(name, f"capture {name}")

        def on_frame(direction: str, frame: Frame) -> None:
            callback(
                {
                    "capture": {
                        "time": time.time(),
                        "dir": direction,
                        "len": len(frame.data),
                        "data": base64.b64encode(frame.data).decode(),
                    }
                }
            )

        rt.captures = [*(rt.captures or []), on_frame]
        self.datapath.changed()  # a captured endpoint's frames all cross the daemon

        def unsubscribe() -> None:
            if rt.captures is not None and on_frame in rt.captures:
                rest = [c for c in rt.captures if c is not on_frame]
                rt.captures = rest or None
                self.datapath.changed()

        return unsubscribe

    # -- restore -------------------------------------------------------------------------

    def restore(self) -> None:
        """Recreate the saved endpoints; those that cannot be created yet wait (never dropped)."""
        configs = self.state.load()
        self.waiting = {cfg.name: Waiting(cfg) for cfg in configs}
        try:
            self.marks.sweep(configs)
        except OSError as exc:
            log.warning("restore: looking for leftover netdevs: %s", exc)
        for cfg in configs:
            self._try_waiting(cfg.name, restoring=True)
        self._save_all("restore")
        waiting = f"; {len(self.waiting)} waiting" if self.waiting else ""
        log.info("restored %d of %d endpoint(s)%s", len(self.endpoints), len(configs), waiting)

    def lower_appeared(self, link: str) -> None:
        """A device named ``link`` appeared (or changed): create the endpoints waiting for it."""
        for name in [n for n, w in self.waiting.items() if w.cfg.link == link]:
            self._try_waiting(name)

    def _retry_waiting(self) -> None:
        """Try the waiting endpoints again (namespaces and names set free come as no event)."""
        try:
            for name in list(self.waiting):
                self._try_waiting(name)
        finally:
            self.loop.call_later(WAITING_RETRY_SECONDS, self._retry_waiting)

    def _try_waiting(self, name: str, *, restoring: bool = False) -> None:
        """Create the waiting endpoint ``name`` if it can be; else say why, once per reason."""
        waiting = self.waiting.get(name)
        if waiting is None or waiting.for_good:
            return
        cfg = waiting.cfg
        waiting.for_good = gone_for_good(cfg)
        reason = missing(cfg)
        if reason is None:
            try:
                self.add(cfg, restoring=True)
            except (ConfigError, EngineError, OSError) as exc:
                reason = reason_of(cfg, exc)
            else:
                del self.waiting[name]
                if not restoring:
                    log.info("%s: created (it was waiting: %s)", name, waiting.reason)
                    self.save(f"link add {name}", put=[self.endpoints[name].config()])
                return
        if reason != waiting.reason:
            waiting.reason = reason
            log.warning("%s: waiting: %s", name, reason)
            self.emit({"event": "link.wait", "ifname": name, "reason": reason})

    def _forget_waiting(self, name: str) -> None:
        """``link del`` of a waiting endpoint: forgotten, with its netdev if one of ours is left."""
        waiting = self.waiting.pop(name)
        try:
            self.marks.remove_if_ours(waiting.cfg)
        except OSError as exc:
            log.warning("link del %s: removing its netdev: %s", name, exc)
        self.save(f"link del {name}", delete=[name])
        log.info("%s: removed: deleted by request (it was waiting: %s)", name, waiting.reason)
        self.emit({"event": "link.del", "ifname": name, "reason": "deleted by request"})

    # -- changes shared with following the kernel (follow.EndpointOwner) -----------------

    def remove(self, rt: EndpointRuntime, *, reason: str, delete_netdev: bool) -> None:
        cfg = rt.cfg
        self.dhcp.stop(rt, release=False)
        self.datapath.detach_endpoint(rt)
        try:
            rt.frontend.close(delete=delete_netdev or not cfg.kind.netdev)
        except OSError as exc:
            log.warning("%s: closing the frontend: %s", cfg.name, exc)
        lower = self.lowers.get(cfg.link)
        mac, mode = rt.ep.mac, rt.ep.mode
        self.engine.remove_endpoint(cfg.name)
        del self.endpoints[cfg.name]
        self.follower.untrack(rt)
        self.addresses.untrack(rt)
        self.announcements.cancel(cfg.name)
        if lower is not None:
            self.lowers.stop_listening(lower, mode, mac)
            if not lower.port.endpoints:
                self.lowers.release(cfg.link)
        log.info("%s: removed: %s", cfg.name, reason)
        self.emit({"event": "link.del", "ifname": cfg.name, "reason": reason})

    def set_up(self, rt: EndpointRuntime, up: bool) -> None:
        if rt.ep.up == up:
            return
        self.engine.set_up(rt.cfg.name, up)
        # Not every caller emits an event (a netdev found up after a move does not): the
        # fast path's maps must not lag behind what the engine forwards by.
        self.datapath.changed()
        if up:
            self.announcements.start(rt.cfg.name)
        else:
            self.announcements.cancel(rt.cfg.name)
            rt.ep.rx_queue.clear()

    def set_address(self, rt: EndpointRuntime, mac: bytes, *, netdev_has_it: bool = False) -> None:
        """A new MAC for the endpoint (``netdev_has_it``: set on its netdev with ip already)."""
        cfg = rt.cfg
        old = rt.ep.mac
        self.engine.set_mac(cfg.name, mac)
        lower = self.lowers.table[cfg.link]
        try:
            if rt.ep.mode is Mode.PASSTHRU:
                # As in the kernel, a passthru endpoint's address is the lower's.
                netlink.set_link(cfg.link, None, address=format_mac(mac))
            if cfg.kind.netdev and not netdev_has_it:
                netlink.set_link(cfg.netdev_name, cfg.netns, address=format_mac(mac))
        except OSError:
            self.engine.set_mac(cfg.name, old)
            raise
        if rt.ep.mode is not Mode.PASSTHRU:
            lower.sock.add_unicast(mac)
            lower.sock.del_unicast(old)
        self.datapath.changed()

    def save(
        self, where: str, *, put: Sequence[EndpointConfig] = (), delete: Sequence[str] = ()
    ) -> None:
        """Save what changed: the endpoints in ``put`` (new or changed), the names deleted."""
        try:
            self.state.update(put=put, delete=delete)
        except StateError as exc:
            self._save_failed(where, exc)

    def emit(self, event: dict[str, Any]) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("monitor subscriber failed")

    # -- helpers -------------------------------------------------------------------------

    def _endpoint(self, name: str, where: str) -> EndpointRuntime:
        rt = self.endpoints.get(name)
        if rt is None:
            waiting = self.waiting.get(name)
            if waiting is not None:
                raise EngineError(
                    "EAGAIN",
                    f"{where}: the endpoint is waiting ({waiting.reason}); "
                    "only link show and link del apply until it is created",
                )
            raise EngineError("ENODEV", f"{where}: no such endpoint")
        return rt

    def _configured(self, name: str) -> bool:
        """Whether ``name`` is a configured endpoint, created or waiting."""
        return name in self.endpoints or name in self.waiting

    def _fds_changed(self, name: str) -> None:
        rt = self.endpoints.get(name)
        if rt is not None:
            self.datapath.attach_endpoint(rt)
            self._announce_if_up(rt)  # a VM (dis)connected: say where its MAC is now

    def _announce_if_up(self, rt: EndpointRuntime) -> None:
        if rt.ep.up and rt.cfg.name in self.endpoints:
            self.announcements.start(rt.cfg.name)

    def _save_all(self, where: str) -> None:
        """Save every endpoint as a new snapshot (after restore)."""
        try:
            self.state.save_all(
                [rt.config() for rt in self.endpoints.values()]
                + [w.cfg for w in self.waiting.values()]
            )
        except StateError as exc:
            self._save_failed(where, exc)

    def _save_failed(self, where: str, exc: StateError) -> None:
        # The change is live but would not survive a restart: say so loudly.
        log.error("%s: %s", where, exc)
        self.emit({"event": "state.error", "message": str(exc)})

    def close(self) -> None:
        """Stop without deleting anything: persistent netdevs stay for the next start."""
        # A fresh snapshot: the state file and its last good copy (the previous
        # snapshot and its journal) then both hold the endpoints as they are now.
        try:
            self.state.compact()
        except StateError as exc:
            self._save_failed("shutdown", exc)
        for rt in list(self.endpoints.values()):
            self.datapath.detach_endpoint(rt)
            rt.frontend.close(delete=False)
        self.lowers.close()
        self.datapath.close()
        self.follower.close()
        self.addresses.close()
        self.announcements.close()


def _strip_name(message: str, name: str) -> str:
    """Engine messages start with the endpoint name; the verb prefix already has it."""
    prefix = f"{name}: "
    return message[len(prefix) :] if message.startswith(prefix) else message
