"""The daemon's records of what is in use: a lower, an endpoint (config, engine state, frontend).

An endpoint is modelled once.  Its :class:`EndpointConfig` says how it was asked
for; from creation on, the engine's :class:`Endpoint` holds its forwarding
attributes (mode, address, mtu, spoofchk, bcqueuelen, source MACs, up), and
:meth:`EndpointRuntime.config` derives the configuration to save from the two.
So a change is made once, in the engine, and nothing is kept in step by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from pymacvtap.core.engine import Engine
from pymacvtap.core.frame import Frame
from pymacvtap.core.mac import format_mac, parse_mac
from pymacvtap.core.modes import Mode
from pymacvtap.core.port import Endpoint, Port
from pymacvtap.daemon.config import EndpointConfig
from pymacvtap.frontends.base import Frontend
from pymacvtap.io.afpacket import DeviceSocket

Capture = Callable[[str, Frame], None]


class LowerRuntime:
    """A lower in use: its AF_PACKET socket, its engine port and who uses it."""

    __slots__ = ("blocked", "port", "sock")

    def __init__(self, port: Port, sock: DeviceSocket) -> None:
        self.port = port
        self.sock = sock
        self.blocked = False  # waiting for the socket to become writable


class EndpointRuntime:
    """An endpoint in use: as asked for (``cfg``), in the engine (``ep``), its frontend."""

    __slots__ = ("blocked", "captures", "cfg", "datapath", "ep", "fds", "frontend")

    def __init__(self, cfg: EndpointConfig, ep: Endpoint, frontend: Frontend) -> None:
        # The attributes ep holds are read from ep; cfg keeps them as first asked for.
        self.cfg = cfg
        self.ep = ep
        self.frontend = frontend
        self.blocked: int | None = None  # the fd we wait on for writability, if any
        self.fds: set[int] = set()  # fds registered as readers for this endpoint
        # `pymacvtap capture` sessions; None (not []) when there are none, so the
        # data path pays one attribute test per batch and nothing per frame.
        self.captures: list[Capture] | None = None
        # Which data path forwards its unicast: "ebpf" once the kernel's programs
        # serve its device (daemon/ebpf.py), else "python" (link show's datapath).
        self.datapath = "python"

    def config(self) -> EndpointConfig:
        """The endpoint's configuration as it is now, to save: the request, the engine's values."""
        ep = self.ep
        return dataclasses.replace(
            self.cfg,
            mode=ep.mode.label,
            address=format_mac(ep.mac),
            mtu=ep.mtu,
            spoofchk=ep.spoofchk,
            macnat=ep.macnat,
            bcqueuelen=ep.bcqueuelen,
            up=ep.up,
            macaddrs=sorted(format_mac(m) for m in ep.source_macs)
            if ep.mode is Mode.SOURCE
            else [],
        )


def add_to_engine(engine: Engine, cfg: EndpointConfig) -> Endpoint:
    """The engine endpoint the configuration asks for (raises EngineError, adding nothing)."""
    ep = engine.add_endpoint(
        cfg.name,
        cfg.link,
        Mode.parse(cfg.mode),
        parse_mac(cfg.address) if cfg.address else None,
        cfg.mtu,
        spoofchk=cfg.spoofchk,
        bcqueuelen=cfg.bcqueuelen,
        macnat=cfg.macnat,
    )
    if cfg.macaddrs:
        try:
            engine.macaddr(cfg.name, "set", [parse_mac(m) for m in cfg.macaddrs])
        except BaseException:
            engine.remove_endpoint(cfg.name)
            raise
    return ep
