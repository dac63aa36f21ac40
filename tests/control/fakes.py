"""A fake Service and a control server on a real Unix socket, its Loop in a thread."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from pymacvtap.control.protocol import WithFds
from pymacvtap.control.server import ControlServer
from pymacvtap.core.errors import EngineError
from pymacvtap.daemon.config import EndpointConfig
from pymacvtap.io.loop import Loop

T = TypeVar("T")


class FakeService:
    """Endpoints in a dict; errors and events like the daemon's."""

    def __init__(self) -> None:
        self.endpoints: dict[str, dict[str, Any]] = {}
        self.subscribers: list[Callable[[dict[str, Any]], None]] = []

    def _entry(self, cfg: EndpointConfig) -> dict[str, Any]:
        return {
            "ifname": cfg.name,
            "link": cfg.link,
            "type": cfg.type,
            "mode": cfg.mode,
            "address": cfg.address or "02:00:00:00:00:01",
            "mtu": cfg.mtu or 1500,
            "operstate": "UP" if cfg.starts_up else "DOWN",
            "frontend": cfg.frontend,
            "path": cfg.socket_path,
            "netns": cfg.netns,
            "owner": cfg.owner,
            "group": cfg.group,
            "queues": cfg.queues,
            "spoofchk": cfg.spoofchk,
        }

    def link_add(self, args: dict[str, Any]) -> Any:
        cfg = EndpointConfig.from_dict(args)
        where = f"link add {cfg.name}"
        if cfg.name in self.endpoints:
            raise EngineError("EEXIST", f"{where}: an endpoint of that name exists")
        if cfg.name == "boom":
            raise RuntimeError("kaboom")
        if cfg.name == "bare":
            raise EngineError("EBUSY", "lower busy")  # no prefix: the server adds it
        if cfg.name == "named":
            raise EngineError("EBUSY", "named: lower busy")  # name only: replaced
        if cfg.name == "oserr":
            raise FileNotFoundError(2, "No such file or directory", "/run/netns/x")
        entry = self._entry(cfg)
        self.endpoints[cfg.name] = entry
        self.emit({"event": "link.add", "ifname": cfg.name, "link": cfg.link})
        if cfg.name == "withfd":
            r, w = os.pipe()
            os.write(w, b"hello")
            os.close(w)
            return WithFds(entry, [r])
        return entry

    def link_set(self, name: str, changes: dict[str, Any]) -> dict[str, Any]:
        entry = self._get(name, f"link set {name}")
        if "up" in changes:
            entry["operstate"] = "UP" if changes["up"] else "DOWN"
        for key in ("address", "mtu", "mode", "spoofchk"):
            if key in changes:
                entry[key] = changes[key]
        self.emit({"event": "link.set", "ifname": name, "changes": sorted(changes)})
        return entry

    def link_del(self, name: str) -> None:
        self._get(name, f"link del {name}")
        del self.endpoints[name]
        self.emit({"event": "link.del", "ifname": name, "reason": "deleted by request"})

    def link_show(self, name: str | None, stats: bool) -> list[dict[str, Any]]:
        entries = [self._get(name, f"link show {name}")] if name else list(self.endpoints.values())
        if stats:
            zero = {"bytes": 0, "packets": 0, "errors": 0, "dropped": 0}
            return [
                dict(e, stats64={"rx": dict(zero, multicast=0), "tx": dict(zero)}) for e in entries
            ]
        return entries

    def endpoint_access(self, name: str) -> tuple[int | None, int | None]:
        entry = self._get(name, name)
        return entry["owner"], entry["group"]

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
        self.subscribers.append(callback)

        def unsubscribe() -> None:
            self.subscribers.remove(callback)

        return unsubscribe

    def emit(self, event: dict[str, Any]) -> None:
        for callback in list(self.subscribers):
            callback(event)

    def _get(self, name: str, where: str) -> dict[str, Any]:
        if name not in self.endpoints:
            raise EngineError("ENODEV", f"{where}: no such endpoint")
        return self.endpoints[name]


class RunningServer:
    """A ControlServer served by a Loop in a thread; ``call`` runs code in that thread."""

    def __init__(self, directory: str, admin_gid: int | None = None, **kwargs: Any) -> None:
        self.service = FakeService()
        self.path = os.path.join(directory, "run", "control.sock")
        self.loop = Loop()
        self.server = ControlServer(
            self.loop, self.path, self.service, admin_gid, logging.getLogger("test"), **kwargs
        )
        self._calls: queue.Queue[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            queue.Queue()
        )
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self.loop.add_reader(self._wake_r.fileno(), self._run_calls)
        self.thread = threading.Thread(target=self.loop.run, daemon=True)
        self.thread.start()

    def _run_calls(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)
        while True:
            try:
                fn, fut = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def call(self, fn: Callable[[], T], timeout: float = 10.0) -> T:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._calls.put((fn, fut))
        self._wake_w.send(b"x")
        return fut.result(timeout)

    def stop(self) -> None:
        if self.thread.is_alive():
            self.call(self.loop.stop)
            self.thread.join(10)
        self.server.close()
        self.loop.close()
        self._wake_r.close()
        self._wake_w.close()
