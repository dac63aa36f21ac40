"""The daemon: one event loop joining lowers, endpoints' frontends and the engine.

Data path, per loop iteration ("breath"):

1. every readable lower / frontend fd is drained in a batch into the engine
   (``Port.from_lower`` / ``Port.from_endpoint``);
2. the after-poll hook settles deferred floods (the broadcast queue), writes
   each ready endpoint's queue to its frontend and each lower's queue to the
   wire.  A frontend or lower that is full is polled for writability
   instead of spun on; frames beyond its bounded queue are counted drops.

Control path: the control server calls the :class:`Daemon` methods below
(``link_add`` ...), each of which changes the engine, the real devices and the
saved state together, undoing what it did when a step fails.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import grp
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from pymacvtap import __version__
from pymacvtap.config import ConfigError, EndpointConfig
from pymacvtap.control.protocol import WithFds
from pymacvtap.core.engine import Engine
from pymacvtap.core.errors import EngineError
from pymacvtap.core.frame import Frame
from pymacvtap.core.mac import format_mac, parse_mac
from pymacvtap.core.modes import Mode
from pymacvtap.core.port import Endpoint, Port
from pymacvtap.frontends.base import Frontend
from pymacvtap.frontends.dgram import DgramFrontend
from pymacvtap.frontends.netdev import NetdevFrontend
from pymacvtap.frontends.stream import StreamFrontend
from pymacvtap.frontends.unix import SOCKET_MODE
from pymacvtap.frontends.vhost_user import VhostUserFrontend
from pymacvtap.frontends.vmtap import VmTapFrontend
from pymacvtap.io import netlink
from pymacvtap.io.afpacket import PacketLower
from pymacvtap.io.allocator import keep_freed_frames_mapped
from pymacvtap.io.caps import DAEMON_CAPABILITIES, drop_capabilities
from pymacvtap.io.loop import Loop
from pymacvtap.io.netns import netns_exists
from pymacvtap.state import StateError, StateStore

log = logging.getLogger("pymacvtap")

DEFAULT_SOCKET = "/run/pymacvtap/control.sock"
DEFAULT_STATE_DIR = "/var/lib/pymacvtap"
RX_BATCH = 64  # frames read from one fd per wake-up before serving the others
BROADCAST_BUDGET = 256  # flood copies settled per breath, so unicast is not starved
GROUP_POLL_SECONDS = 1.0  # how often container multicast lists are re-read
GROUP_POLL_SLICE = 32  # endpoints re-read per tick at most
NETNS_POLL_SECONDS = 2.0
# After traffic, keep polling without sleeping this long (µs): a wake-up costs
# more than the frames of a conversation are apart (bench/README.md, the round trip).
BUSY_POLL_US = "0"


class LowerRuntime:
    """A lower in use: its AF_PACKET socket, its engine port and who uses it."""

    __slots__ = ("blocked", "port", "sock")

    def __init__(self, port: Port, sock: PacketLower) -> None:
        self.port = port
        self.sock = sock
        self.blocked = False  # waiting for the socket to become writable


class EndpointRuntime:
    __slots__ = ("blocked", "captures", "cfg", "ep", "fds", "frontend")

    def __init__(self, cfg: EndpointConfig, ep: Endpoint, frontend: Frontend) -> None:
        self.cfg = cfg
        self.ep = ep
        self.frontend = frontend
        self.blocked: int | None = None  # the fd we wait on for writability, if any
        self.fds: set[int] = set()  # fds registered as readers for this endpoint
        # `pymacvtap capture` sessions; None (not []) when there are none, so the
        # data path pays one attribute test per batch and nothing per frame.
        self.captures: list[Callable[[str, Frame], None]] | None = None


class Daemon:
    """The Service behind the control socket, and the owner of the data path."""

    def __init__(self, loop: Loop, state: StateStore) -> None:
        self.loop = loop
        self.state = state
        self.engine = Engine(os.urandom)
        self.lowers: dict[str, LowerRuntime] = {}
        self.endpoints: dict[str, EndpointRuntime] = {}
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []
        self._watchers: dict[str | None, netlink.LinkWatcher] = {}
        # (netns, netdev name) -> endpoint: link events find their endpoint in O(1).
        self._netdevs: dict[tuple[str | None, str], EndpointRuntime] = {}
        # Endpoints whose multicast lists are re-read, a slice per tick (round robin).
        self._group_cursor = 0
        loop.after_poll(self._breathe)
        self._ensure_watcher(None)
        loop.call_later(GROUP_POLL_SECONDS, self._poll_groups)
        loop.call_later(NETNS_POLL_SECONDS, self._poll_namespaces)

    # -- Service: the control verbs ------------------------------------------------

    def link_add(self, cfg: EndpointConfig, *, restoring: bool = False) -> dict[str, Any]:
        where = f"link add {cfg.name}"
        if cfg.name in self.endpoints:
            raise EngineError("EEXIST", f"{where}: an endpoint of that name exists")
        if cfg.netns is not None and not netns_exists(cfg.netns):
            raise ConfigError(f"{where}: netns {cfg.netns}: no such network namespace", "ENOENT")
        undo: list[Callable[[], object]] = []
        try:
            lower = self._use_lower(cfg.link, where)
            if not lower.port.endpoints:
                undo.append(lambda: self._release_lower(cfg.link))
            try:
                ep = self.engine.add_endpoint(
                    cfg.name,
                    cfg.link,
                    Mode.parse(cfg.mode),
                    parse_mac(cfg.address) if cfg.address else None,
                    cfg.mtu,
                    spoofchk=cfg.spoofchk,
                    bcqueuelen=cfg.bcqueuelen,
                )
            except EngineError as exc:
                raise EngineError(
                    exc.code, f"{where}: {_strip_name(exc.message, cfg.name)}"
                ) from None
            undo.append(lambda: self.engine.remove_endpoint(cfg.name))
            cfg.address = format_mac(ep.mac)
            cfg.mtu = ep.mtu
            if cfg.macaddrs:
                self.engine.macaddr(cfg.name, "set", [parse_mac(m) for m in cfg.macaddrs])
            try:
                frontend = self._make_frontend(cfg, ep, restoring)
            except FileExistsError as exc:
                raise ConfigError(f"{where}: {exc}", "EEXIST") from None
            except OSError as exc:
                what = cfg.socket_path or f"netdev {cfg.netdev_name}"
                raise ConfigError(
                    f"{where}: cannot create {what}: {exc.strerror or exc}",
                    errno.errorcode.get(exc.errno or 0, "EIO"),
                ) from None
            undo.append(lambda: frontend.close(delete=not restoring or cfg.frontend != "tap"))
            if cfg.frontend == "tap":
                self._ensure_watcher(cfg.netns)
            rt = EndpointRuntime(cfg, ep, frontend)
            self.endpoints[cfg.name] = rt
            undo.append(lambda: self.endpoints.pop(cfg.name, None))
            if isinstance(frontend, NetdevFrontend) and not lower.port.up:
                frontend.set_carrier(False)  # born on a lower without carrier
            if cfg.frontend == "tap":
                key = (cfg.netns, cfg.netdev_name)
                self._netdevs[key] = rt
                undo.append(lambda: self._netdevs.pop(key, None))
            self._listen_for(lower, rt)
            undo.append(lambda: self._stop_listening(lower, ep.mode, ep.mac))
            self._follow_netdev(rt, initial=True, restoring=restoring)
            if not restoring:
                self._save(where, put=[cfg])
        except BaseException:
            for step in reversed(undo):
                try:
                    step()
                except Exception:  # pragma: no cover - best effort rollback
                    log.exception("%s: rollback step failed", where)
            raise
        self._sync_fds(rt)
        self._emit({"event": "link.add", "ifname": cfg.name, "link": cfg.link})
        return self._show(rt, stats=False)

    def link_set(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        where = f"link set {name}"
        rt = self._endpoint(name, where)
        cfg, ep = rt.cfg, rt.ep
        try:
            if "mode" in changes:
                self.engine.set_mode(name, Mode.parse(str(changes["mode"])))
                cfg.mode = ep.mode.label
                if ep.mode is not Mode.SOURCE:
                    cfg.macaddrs = []
            if "address" in changes:
                self._set_address(rt, parse_mac(str(changes["address"])))
            if "mtu" in changes:
                mtu = int(changes["mtu"])
                self.engine.set_mtu(name, mtu)
                if cfg.frontend == "tap":
                    netlink.set_link(cfg.netdev_name, cfg.netns, mtu=mtu)
                cfg.mtu = mtu
            if "spoofchk" in changes:
                self.engine.set_spoofchk(name, bool(changes["spoofchk"]))
                cfg.spoofchk = bool(changes["spoofchk"])
            if "macaddr" in changes:
                spec = changes["macaddr"]
                macs = [parse_mac(m) for m in spec.get("addresses", [])]
                self.engine.macaddr(name, str(spec.get("op")), macs)
                cfg.macaddrs = sorted(format_mac(m) for m in ep.source_macs)
            if "up" in changes:
                up = bool(changes["up"])
                if cfg.type == "macvlan":
                    # The container's netdev is the endpoint; a VM port's tap stays
                    # up so the daemon can reach it, only forwarding stops.
                    netlink.set_link(cfg.netdev_name, cfg.netns, up=up)
                self._set_up(rt, up)
        except EngineError as exc:
            raise EngineError(exc.code, f"{where}: {_strip_name(exc.message, name)}") from None
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        self._save(where, put=[cfg])
        self._emit({"event": "link.set", "ifname": name, "changes": sorted(changes)})
        return self._show(rt, stats=False)

    def link_del(self, name: str) -> None:
        rt = self._endpoint(name, f"link del {name}")
        self._remove(rt, reason="deleted by request", delete_netdev=True)
        self._save(f"link del {name}", delete=[name])

    def link_show(self, name: str | None, stats: bool) -> list[dict[str, Any]]:
        if name is not None:
            return [self._show(self._endpoint(name, f"link show {name}"), stats)]
        return [self._show(rt, stats) for rt in self.endpoints.values()]

    def endpoint_access(self, name: str) -> tuple[int | None, int | None]:
        rt = self._endpoint(name, name)
        return rt.cfg.owner, rt.cfg.group

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
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
        frontend = rt.frontend
        if not isinstance(frontend, VmTapFrontend):
            raise ConfigError(
                f"{where}: only macvtap endpoints with frontend tap have queues to hand out "
                f"(this one is {cfg.type}, frontend {cfg.frontend})",
                "EOPNOTSUPP",
            )
        count = cfg.queues if queues is None else queues
        if count > cfg.queues:
            raise ConfigError(
                f"{where}: queues {count}: the endpoint was created with queues {cfg.queues}"
            )
        try:
            fds = frontend.open_queue_fds(count, cfg.owner, cfg.group)
        except OSError as exc:
            hint = " (is a VM attached already?)" if exc.errno == errno.EBUSY else ""
            raise ConfigError(
                f"{where}: tap {cfg.netdev_name}: {exc.strerror}{hint}",
                errno.errorcode.get(exc.errno or 0, "EIO"),
            ) from None
        self._emit({"event": "attach", "ifname": name, "queues": count})
        return WithFds({"name": name, "queues": count}, fds)

    def capture(self, name: str, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
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

        def unsubscribe() -> None:
            if rt.captures is not None and on_frame in rt.captures:
                rest = [c for c in rt.captures if c is not on_frame]
                rt.captures = rest or None

        return unsubscribe

    @staticmethod
    def _captured(rt: EndpointRuntime, direction: str, frames: list[Frame]) -> None:
        for capture in rt.captures or ():
            for frame in frames:
                capture(direction, frame)

    # -- restore ---------------------------------------------------------------------

    def restore(self) -> None:
        """Recreate the saved endpoints; drop (with a log line) those that cannot be."""
        configs = self.state.load()
        for cfg in configs:
            if cfg.netns is not None and not netns_exists(cfg.netns):
                log.warning("restore %s: netns %s is gone; endpoint removed", cfg.name, cfg.netns)
                continue
            try:
                self.link_add(cfg, restoring=True)
            except (ConfigError, EngineError, OSError) as exc:
                log.warning("restore %s: %s; endpoint removed", cfg.name, exc)
        self._save_all("restore")
        log.info("restored %d of %d endpoint(s)", len(self.endpoints), len(configs))

    # -- frontends ---------------------------------------------------------------------

    def _make_frontend(self, cfg: EndpointConfig, ep: Endpoint, restoring: bool) -> Frontend:
        if cfg.type == "macvlan":
            return NetdevFrontend.create(
                cfg.netdev_name, cfg.netns, ep.mac, ep.mtu, reattach=restoring
            )
        if cfg.frontend == "tap":
            return VmTapFrontend.create(
                cfg.netdev_name,
                cfg.netns,
                ep.mac,
                ep.mtu,
                queues=cfg.queues,
                owner=cfg.owner,
                group=cfg.group,
                reattach=restoring,
            )
        path = cfg.socket_path
        assert path is not None
        if not restoring and os.path.exists(path):
            raise FileExistsError(f"{path} exists already")
        name = cfg.name
        if cfg.frontend == "stream":
            return StreamFrontend(path, cfg.owner, cfg.group, lambda: self._fds_changed(name))
        if cfg.frontend == "dgram":
            return DgramFrontend(path, cfg.owner, cfg.group, cfg.peer)
        os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
        vhost = VhostUserFrontend.create(path, cfg.queues)
        try:
            os.chown(path, cfg.owner or 0, cfg.group or 0)
            os.chmod(path, SOCKET_MODE)
        except OSError:
            vhost.close(delete=True)
            raise
        vhost.on_fds_changed = lambda: self._fds_changed(name)
        return vhost

    def _fds_changed(self, name: str) -> None:
        rt = self.endpoints.get(name)
        if rt is not None:
            self._sync_fds(rt)

    def _sync_fds(self, rt: EndpointRuntime) -> None:
        """Register the frontend's current fds with the loop (they change as VMs come and go)."""
        wanted = set(rt.frontend.readable_fds())
        for fd in rt.fds - wanted:
            self.loop.remove_reader(fd)
        if rt.blocked is not None and rt.blocked not in wanted:
            # The peer we waited on to drain is gone (a VM disconnected while
            # full): stop waiting, or the endpoint would never be written again.
            self.loop.remove_writer(rt.blocked)
            rt.blocked = None
        for fd in wanted - rt.fds:
            self.loop.add_reader(fd, self._reader(rt, fd))
        rt.fds = wanted

    # -- the data path ---------------------------------------------------------------

    def _reader(self, rt: EndpointRuntime, fd: int) -> Callable[[], None]:
        frontend = rt.frontend
        ep = rt.ep
        loop = self.loop
        # Reading until the fd is empty costs one more read that fails (EAGAIN) per
        # wake-up, which is most of a lone frame's reading cost.  Where the fd is
        # level-triggered, a fd that was not ready on the previous poll gets one
        # frame read: if more wait, the next poll says so at once and the reader
        # batches from then on.
        single_first = getattr(frontend, "level_triggered", False)
        last = -2

        def on_readable() -> None:
            nonlocal last
            port = ep.port
            if port is None:
                return
            from_endpoint = port.forward_from_endpoint
            now = loop.iteration
            budget = 1 if single_first and now != last + 1 else RX_BATCH
            last = now
            frames = frontend.read(fd, budget)
            if rt.captures is not None:
                self._captured(rt, "tx", frames)
            for frame in frames:
                from_endpoint(ep, frame)

        return on_readable

    def _lower_reader(self, lower: LowerRuntime) -> Callable[[], None]:
        sock = lower.sock
        from_lower = lower.port.forward_from_lower

        def on_readable() -> None:
            for frame in sock.recv_batch(RX_BATCH):
                from_lower(frame)

        return on_readable

    def _breathe(self) -> bool:
        """Settle floods, then flush every queue the readers filled.  True: work left."""
        more = False
        for lower in self.lowers.values():
            port = lower.port
            if port.bc_queue:
                port.process_broadcasts(BROADCAST_BUDGET)
                if port.bc_queue:
                    more = True
            if port.ready:
                ready = list(port.ready)
                port.ready.clear()
                for ep in ready:
                    rt = self.endpoints.get(ep.name)
                    if rt is None or rt.blocked is not None:
                        continue
                    if rt.captures is not None:
                        pending = list(ep.rx_queue)
                        fd = rt.frontend.write(ep.rx_queue)
                        self._captured(rt, "rx", pending[: len(pending) - len(ep.rx_queue)])
                    else:
                        fd = rt.frontend.write(ep.rx_queue)
                    if fd is not None:
                        rt.blocked = fd
                        self.loop.add_writer(fd, self._unblock_endpoint(rt, fd))
                    elif ep.rx_queue:
                        port.ready[ep] = None
                        more = True
            if port.tx_queue and not lower.blocked:
                self._flush_lower(lower)
        return more

    def _flush_lower(self, lower: LowerRuntime) -> None:
        queue = lower.port.tx_queue
        _sent, rejected = lower.sock.send_batch(queue)
        if rejected:
            # The lower refused these frames (down, too big for it): count them.
            lower.port.stats.tx_errors += rejected
        if queue:
            # Socket full: the rest waits until it is writable.
            lower.blocked = True
            self.loop.add_writer(lower.sock.fileno(), lambda: self._unblock_lower(lower))

    def _unblock_lower(self, lower: LowerRuntime) -> None:
        self.loop.remove_writer(lower.sock.fileno())
        lower.blocked = False
        self._flush_lower(lower)

    def _unblock_endpoint(self, rt: EndpointRuntime, fd: int) -> Callable[[], None]:
        def writable() -> None:
            self.loop.remove_writer(fd)
            rt.blocked = None
            port = rt.ep.port
            if port is not None and rt.ep.rx_queue:
                port.ready[rt.ep] = None

        return writable

    # -- lowers ------------------------------------------------------------------------

    def _use_lower(self, name: str, where: str) -> LowerRuntime:
        lower = self.lowers.get(name)
        if lower is not None:
            return lower
        try:
            info = netlink.link_info(name)
        except netlink.LinkNotFound:
            raise ConfigError(f"{where}: link {name}: no such device", "ENODEV") from None
        if info.kind not in (None, "", "veth", "dummy", "bond", "team", "vlan", "macvlan"):
            log.info("lower %s is of kind %s", name, info.kind)
        try:
            sock = PacketLower(name)
        except OSError as exc:
            raise ConfigError(
                f"{where}: link {name}: cannot open: {exc.strerror or exc}", "EIO"
            ) from None
        port = self.engine.add_lower(name, info.mac, info.mtu, up=info.carrier)
        lower = LowerRuntime(port, sock)
        self.lowers[name] = lower
        self.loop.add_reader(sock.fileno(), self._lower_reader(lower))
        return lower

    def _release_lower(self, name: str) -> None:
        lower = self.lowers.pop(name, None)
        if lower is None:
            return
        self.loop.forget(lower.sock.fileno())
        lower.sock.close()
        if name in self.engine.ports:
            self.engine.remove_lower(name)

    @staticmethod
    def _listen_for(lower: LowerRuntime, rt: EndpointRuntime) -> None:
        """Make the lower hear the endpoint, as macvlan_open does.

        A MAC goes into the lower's unicast filter; a passthru endpoint makes
        the lower promiscuous instead, unless ``nopromisc``.
        """
        if rt.ep.mode is Mode.PASSTHRU:
            lower.sock.set_promisc(not rt.cfg.nopromisc)
        else:
            lower.sock.add_unicast(rt.ep.mac)

    @staticmethod
    def _stop_listening(lower: LowerRuntime, mode: Mode, mac: bytes) -> None:
        with contextlib.suppress(OSError):
            if mode is Mode.PASSTHRU:
                lower.sock.set_promisc(False)
            else:
                lower.sock.del_unicast(mac)

    def _lower_event(self, ev: netlink.LinkEvent) -> None:
        lower = self.lowers.get(ev.ifname)
        if lower is None:
            return
        if ev.deleted:
            victims = [rt for rt in self.endpoints.values() if rt.cfg.link == ev.ifname]
            for rt in victims:
                self._remove(rt, reason=f"lower {ev.ifname} was removed", delete_netdev=True)
            self._release_lower(ev.ifname)
            self._emit({"event": "lower.del", "link": ev.ifname})
            self._save(f"lower {ev.ifname} removed", delete=[rt.cfg.name for rt in victims])
            return
        if ev.carrier is not None and ev.carrier != lower.port.up:
            self.engine.set_lower_carrier(ev.ifname, ev.carrier)
            for rt in self.endpoints.values():
                if rt.cfg.link == ev.ifname and isinstance(rt.frontend, NetdevFrontend):
                    try:
                        rt.frontend.set_carrier(ev.carrier)
                    except OSError as exc:
                        log.warning("%s: cannot set carrier: %s", rt.cfg.name, exc)
            self._emit({"event": "lower.carrier", "link": ev.ifname, "carrier": ev.carrier})
        if ev.mtu is not None and ev.mtu != lower.port.mtu:
            clamped = []
            for ep in self.engine.set_lower_mtu(ev.ifname, ev.mtu):
                rt = self.endpoints[ep.name]
                rt.cfg.mtu = ep.mtu
                clamped.append(rt.cfg)
                try:
                    netlink.set_link(rt.cfg.netdev_name, rt.cfg.netns, mtu=ep.mtu)
                except OSError as exc:
                    log.warning("%s: cannot clamp mtu: %s", ep.name, exc)
            self._save(f"lower {ev.ifname} mtu", put=clamped)
        if ev.mac is not None and ev.mac != lower.port.mac:
            self.engine.set_lower_mac(ev.ifname, ev.mac)

    # -- endpoints --------------------------------------------------------------------

    def _endpoint(self, name: str, where: str) -> EndpointRuntime:
        rt = self.endpoints.get(name)
        if rt is None:
            raise EngineError("ENODEV", f"{where}: no such endpoint")
        return rt

    def _set_up(self, rt: EndpointRuntime, up: bool) -> None:
        if rt.ep.up == up:
            return
        self.engine.set_up(rt.cfg.name, up)
        rt.cfg.up = up
        if not up:
            rt.ep.rx_queue.clear()

    def _set_address(self, rt: EndpointRuntime, mac: bytes, *, netdev_has_it: bool = False) -> None:
        """A new MAC for the endpoint (``netdev_has_it``: set on its netdev with ip already)."""
        cfg = rt.cfg
        old = rt.ep.mac
        self.engine.set_mac(cfg.name, mac)
        lower = self.lowers[cfg.link]
        try:
            if rt.ep.mode is Mode.PASSTHRU:
                # As in the kernel, a passthru endpoint's address is the lower's.
                netlink.set_link(cfg.link, None, address=format_mac(mac))
            if cfg.frontend == "tap" and not netdev_has_it:
                netlink.set_link(cfg.netdev_name, cfg.netns, address=format_mac(mac))
        except OSError:
            self.engine.set_mac(cfg.name, old)
            raise
        if rt.ep.mode is not Mode.PASSTHRU:
            lower.sock.add_unicast(mac)
            lower.sock.del_unicast(old)
        cfg.address = format_mac(mac)

    def _follow_netdev(self, rt: EndpointRuntime, *, initial: bool, restoring: bool) -> None:
        """Bring the engine in line with the endpoint (admin state, multicast groups).

        A container's netdev *is* the endpoint: its admin state is the truth,
        whoever set it.  A VM port's up/down is the daemon's own setting (a VM
        cannot raise its port); its tap stays up so frames can reach the VM.
        """
        cfg = rt.cfg
        if cfg.type == "macvlan":
            if initial and not restoring:
                want_up = cfg.starts_up
                if want_up:
                    netlink.set_link(cfg.netdev_name, cfg.netns, up=True)
                self._set_up(rt, want_up)
            else:
                info = netlink.link_info(cfg.netdev_name, cfg.netns)
                self._set_up(rt, info.up)
        elif initial:
            self._set_up(rt, cfg.starts_up)
        if rt.ep.up:
            # A down endpoint receives nothing, and the netdev's groups change as it
            # comes up: they are read then (its up event, or the group poll).  The
            # read is a pass over every netdev of the namespace (dev_mcast), which
            # made each link add cost more than the one before.
            self._sync_groups(rt)

    def _sync_groups(self, rt: EndpointRuntime) -> None:
        """The exact multicast filter: the groups joined on the endpoint's netdev.

        Socket frontends have no netdev and so no joined groups: like a kernel
        macvtap whose guest cannot change its filter, they get broadcast only.
        """
        if rt.cfg.frontend != "tap":
            return
        try:
            info = netlink.link_info(rt.cfg.netdev_name, rt.cfg.netns)
            groups = netlink.multicast_groups(rt.cfg.netdev_name, rt.cfg.netns)
        except (OSError, netlink.LinkNotFound):
            return
        self.engine.set_groups(rt.cfg.name, groups)
        # macvlan_compute_filter: a promiscuous or allmulti device takes every group.
        self.engine.set_allmulti(rt.cfg.name, info.allmulti or info.promisc)

    def _netdev_event(self, rt: EndpointRuntime, ev: netlink.LinkEvent) -> None:
        """Follow `ip link set` done directly on the endpoint's netdev."""
        cfg = rt.cfg
        if ev.deleted:
            self._remove(rt, reason=f"netdev {cfg.netdev_name} was deleted", delete_netdev=False)
            self._save(f"netdev {cfg.netdev_name} deleted", delete=[cfg.name])
            return
        changed = False
        if ev.allmulti is not None and ev.allmulti != rt.ep.allmulti:
            self.engine.set_allmulti(cfg.name, ev.allmulti)
        if cfg.type == "macvlan" and ev.up is not None and ev.up != rt.ep.up:
            self._set_up(rt, ev.up)
            self._sync_groups(rt)
            changed = True
        if ev.mtu is not None and ev.mtu != rt.ep.mtu:
            try:
                self.engine.set_mtu(cfg.name, ev.mtu)
                cfg.mtu = ev.mtu
                changed = True
            except EngineError as exc:
                log.warning("%s: %s; restoring mtu %d", cfg.name, exc.message, rt.ep.mtu)
                netlink.set_link(cfg.netdev_name, cfg.netns, mtu=rt.ep.mtu)
        if ev.mac is not None and ev.mac != rt.ep.mac:
            try:
                self._set_address(rt, ev.mac, netdev_has_it=True)
                changed = True
            except (EngineError, OSError) as exc:
                log.warning("%s: %s; restoring the address", cfg.name, exc)
                netlink.set_link(cfg.netdev_name, cfg.netns, address=format_mac(rt.ep.mac))
        if changed:
            self._save(f"netdev {cfg.netdev_name} changed", put=[cfg])
            self._emit({"event": "link.set", "ifname": cfg.name, "source": "netdev"})

    def _remove(self, rt: EndpointRuntime, *, reason: str, delete_netdev: bool) -> None:
        cfg = rt.cfg
        self._forget_fds(rt)
        try:
            rt.frontend.close(delete=delete_netdev or cfg.frontend != "tap")
        except OSError as exc:
            log.warning("%s: closing the frontend: %s", cfg.name, exc)
        lower = self.lowers.get(cfg.link)
        mac, mode = rt.ep.mac, rt.ep.mode
        self.engine.remove_endpoint(cfg.name)
        del self.endpoints[cfg.name]
        if self._netdevs.get((cfg.netns, cfg.netdev_name)) is rt:
            del self._netdevs[(cfg.netns, cfg.netdev_name)]
        if lower is not None:
            self._stop_listening(lower, mode, mac)
            if not lower.port.endpoints:
                self._release_lower(cfg.link)
        log.info("%s: removed: %s", cfg.name, reason)
        self._emit({"event": "link.del", "ifname": cfg.name, "reason": reason})

    def _forget_fds(self, rt: EndpointRuntime) -> None:
        for fd in rt.fds:
            self.loop.forget(fd)
        rt.fds = set()
        if rt.blocked is not None:
            self.loop.forget(rt.blocked)
            rt.blocked = None

    # -- netlink watching and polling ---------------------------------------------

    def _ensure_watcher(self, netns: str | None) -> None:
        if netns in self._watchers:
            return
        watcher = netlink.LinkWatcher(netns)
        self._watchers[netns] = watcher
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
            if last[ev.ifindex] != i:
                continue
            rt = self._netdevs.get((netns, ev.ifname))
            if rt is not None and rt.cfg.name in self.endpoints:
                self._netdev_event(rt, ev)

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
        for rt in self.endpoints.values():
            if rt.cfg.frontend == "tap" and rt.ep.up:
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
        gone = [
            rt
            for rt in self.endpoints.values()
            if rt.cfg.netns is not None and not netns_exists(rt.cfg.netns)
        ]
        for rt in gone:
            self._remove(rt, reason=f"netns {rt.cfg.netns} is gone", delete_netdev=False)
        if gone:
            self._save("netns removed", delete=[rt.cfg.name for rt in gone])
        used = {rt.cfg.netns for rt in self.endpoints.values()}
        for netns in [ns for ns in self._watchers if ns is not None and ns not in used]:
            watcher = self._watchers.pop(netns)
            self.loop.forget(watcher.fileno())
            watcher.close()
        self.loop.call_later(NETNS_POLL_SECONDS, self._poll_namespaces)

    # -- helpers -------------------------------------------------------------------------

    def _show(self, rt: EndpointRuntime, stats: bool) -> dict[str, Any]:
        cfg, ep = rt.cfg, rt.ep
        port = ep.port
        if not ep.up:
            operstate = "DOWN"
        elif port is not None and not port.up:
            operstate = "LOWERLAYERDOWN"
        else:
            operstate = "UP"
        entry: dict[str, Any] = {
            "ifname": cfg.name,
            "link": cfg.link,
            "type": cfg.type,
            "mode": ep.mode.label,
            "address": format_mac(ep.mac),
            "mtu": ep.mtu,
            "operstate": operstate,
            "frontend": cfg.frontend,
            "path": cfg.socket_path,
            "netns": cfg.netns,
            "netdev": cfg.netdev_name if cfg.frontend == "tap" else None,
            "owner": cfg.owner,
            "group": cfg.group,
            "queues": cfg.queues,
            "spoofchk": ep.spoofchk,
            "bcqueuelen": cfg.bcqueuelen,
        }
        if ep.mode is Mode.SOURCE:
            entry["macaddrs"] = sorted(format_mac(m) for m in ep.source_macs)
        if stats:
            counters = ep.stats.as_dict()
            counters["rx"]["dropped"] += rt.frontend.dropped
            counters["tx"]["errors"] += rt.frontend.errors
            entry["stats64"] = counters
            # Which counter went up and why, by reason (the detail ip -s -s gives for errors).
            drops = {reason.value[2]: n for reason, n in ep.stats.drops.items() if n}
            if rt.frontend.dropped:
                drops["frontend_refused"] = rt.frontend.dropped
            if rt.frontend.errors:
                drops["frontend_bad_input"] = rt.frontend.errors
            entry["drops"] = dict(sorted(drops.items()))
            if port is not None:  # SPEC 2.2: the lower's counters, broadcast-queue drops included
                entry["lower_stats"] = port.stats.as_dict()
            queue_stats = getattr(rt.frontend, "queue_stats", None)
            if queue_stats is not None:
                entry["queue_stats"] = queue_stats()
        return entry

    def _save(
        self, where: str, *, put: Sequence[EndpointConfig] = (), delete: Sequence[str] = ()
    ) -> None:
        """Save what changed: the endpoints in ``put`` (new or changed), the names deleted."""
        try:
            self.state.update(put=put, delete=delete)
        except StateError as exc:
            self._save_failed(where, exc)

    def _save_all(self, where: str) -> None:
        """Save every endpoint as a new snapshot (after restore)."""
        try:
            self.state.save_all([rt.cfg for rt in self.endpoints.values()])
        except StateError as exc:
            self._save_failed(where, exc)

    def _save_failed(self, where: str, exc: StateError) -> None:
        # The change is live but would not survive a restart: say so loudly.
        log.error("%s: %s", where, exc)
        self._emit({"event": "state.error", "message": str(exc)})

    def _emit(self, event: dict[str, Any]) -> None:
        for callback in list(self._subscribers):
            try:
                callback(event)
            except Exception:
                log.exception("monitor subscriber failed")

    def close(self) -> None:
        """Stop without deleting anything: persistent netdevs stay for the next start."""
        # A fresh snapshot: the state file and its last good copy (the previous
        # snapshot and its journal) then both hold the endpoints as they are now.
        try:
            self.state.compact()
        except StateError as exc:
            self._save_failed("shutdown", exc)
        for rt in list(self.endpoints.values()):
            self._forget_fds(rt)
            rt.frontend.close(delete=False)
        for name in list(self.lowers):
            self._release_lower(name)
        for watcher in self._watchers.values():
            watcher.close()


def _strip_name(message: str, name: str) -> str:
    """Engine messages start with the endpoint name; the verb prefix already has it."""
    prefix = f"{name}: "
    return message[len(prefix) :] if message.startswith(prefix) else message


def _sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) we are ready; a no-op outside systemd."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    import socket

    if path.startswith("@"):
        path = "\0" + path[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.connect(path)
        sock.sendall(message.encode())


def main(args: argparse.Namespace) -> int:
    """``pymacvtap daemon``: run until SIGTERM/SIGINT."""
    from pymacvtap.control.server import ControlServer

    logging.basicConfig(
        level=logging.INFO, format="pymacvtap[%(process)d]: %(message)s", stream=sys.stderr
    )
    socket_path = args.socket or os.environ.get("PYMACVTAP_SOCKET") or DEFAULT_SOCKET
    admin_gid: int | None = None
    if args.admin_group:
        try:
            admin_gid = (
                int(args.admin_group)
                if str(args.admin_group).isdigit()
                else grp.getgrnam(args.admin_group).gr_gid
            )
        except KeyError:
            print(f"pymacvtap: daemon: group {args.admin_group}: no such group", file=sys.stderr)
            return 1
    keep_freed_frames_mapped()
    loop = Loop()
    loop.spin = float(os.environ.get("PYMACVTAP_BUSY_POLL_US", BUSY_POLL_US)) / 1e6
    daemon = Daemon(loop, StateStore(args.state_dir or DEFAULT_STATE_DIR, log.warning))
    try:
        server = ControlServer(loop, socket_path, daemon, admin_gid, log)
    except OSError as exc:
        print(f"pymacvtap: daemon: {socket_path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    metrics = None
    if args.metrics:
        from pymacvtap.metrics import bind_metrics, parse_address

        # Bound while the daemon may still bind any port (below 1024 too)...
        try:
            metrics = bind_metrics(*parse_address(args.metrics), daemon)
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"pymacvtap: daemon: --metrics {args.metrics}: {reason}", file=sys.stderr)
            server.close()
            daemon.close()
            loop.close()
            return 1
    daemon.restore()
    drop_capabilities(DAEMON_CAPABILITIES)  # SPEC 6; the list is argued in SECURITY.md
    if metrics is not None:
        # ...and served from a thread started after drop_capabilities: capabilities
        # are per thread, and the HTTP thread must start with the reduced set.
        metrics.start()
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    loop.add_signal_handler(signal.SIGINT, loop.stop)
    log.info("pymacvtap %s ready on %s", __version__, socket_path)
    _sd_notify("READY=1")
    try:
        loop.run()
    except Exception:
        traceback.print_exc()
        return 1
    finally:
        if metrics is not None:
            metrics.close()
        server.close()
        daemon.close()
        loop.close()
    return 0
