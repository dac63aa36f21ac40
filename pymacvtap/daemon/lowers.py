"""The lowers in use: opened for their first endpoint, closed after their last.

A lower is an AF_PACKET socket on a host netdev plus its port in the engine; its
unicast filter (or promiscuous mode) is set so that it hears its endpoints, as
macvlan_open does.  What the kernel then does to a lower (carrier, mtu,
deletion) is followed in :mod:`pymacvtap.daemon.follow`.
"""

from __future__ import annotations

import contextlib
import logging

from pymacvtap.core.engine import Engine
from pymacvtap.core.modes import Mode
from pymacvtap.daemon.config import ConfigError
from pymacvtap.daemon.datapath import DataPath
from pymacvtap.daemon.runtime import EndpointRuntime, LowerRuntime
from pymacvtap.io import netlink
from pymacvtap.io.afpacket import DeviceSocket

log = logging.getLogger("pymacvtap")

# Kinds of lower macvlan is commonly put on; another is used all the same, with a log line.
USUAL_KINDS = (None, "", "veth", "dummy", "bond", "team", "vlan", "macvlan")


class Lowers:
    """The table of lowers in use, by name; the data path is told of each."""

    def __init__(self, engine: Engine, datapath: DataPath) -> None:
        self.engine = engine
        self.datapath = datapath
        self.table: dict[str, LowerRuntime] = {}

    def get(self, name: str) -> LowerRuntime | None:
        return self.table.get(name)

    def use(self, name: str, where: str) -> LowerRuntime:
        """The lower ``name``, opened if no endpoint uses it yet (ConfigError if it cannot be)."""
        lower = self.table.get(name)
        if lower is not None:
            return lower
        try:
            info = netlink.link_info(name)
        except netlink.LinkNotFound:
            raise ConfigError("ENODEV", f"{where}: link {name}: no such device") from None
        if info.kind not in USUAL_KINDS:
            log.info("lower %s is of kind %s", name, info.kind)
        try:
            sock = DeviceSocket(name)
        except OSError as exc:
            raise ConfigError(
                "EIO", f"{where}: link {name}: cannot open: {exc.strerror or exc}"
            ) from None
        port = self.engine.add_lower(name, info.mac, info.mtu, up=info.carrier)
        lower = LowerRuntime(port, sock)
        self.table[name] = lower
        self.datapath.attach_lower(lower)
        return lower

    def release(self, name: str) -> None:
        """Close the lower (its last endpoint is gone, or the lower itself)."""
        lower = self.table.pop(name, None)
        if lower is None:
            return
        self.datapath.detach_lower(lower)
        lower.sock.close()
        if name in self.engine.ports:
            self.engine.remove_lower(name)

    @staticmethod
    def listen_for(lower: LowerRuntime, rt: EndpointRuntime) -> None:
        """Make the lower hear the endpoint, as macvlan_open does.

        A MAC goes into the lower's unicast filter; a passthru endpoint makes
        the lower promiscuous instead, unless ``nopromisc``.
        """
        if rt.ep.mode is Mode.PASSTHRU:
            lower.sock.set_promisc(not rt.cfg.nopromisc)
        else:
            lower.sock.add_unicast(rt.ep.mac)

    @staticmethod
    def stop_listening(lower: LowerRuntime, mode: Mode, mac: bytes) -> None:
        with contextlib.suppress(OSError):
            if mode is Mode.PASSTHRU:
                lower.sock.set_promisc(False)
            else:
                lower.sock.del_unicast(mac)

    def close(self) -> None:
        for name in list(self.table):
            self.release(name)
