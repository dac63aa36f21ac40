"""Which frontend each kind of endpoint gets, and how it is opened: one table.

The kinds themselves (what a type and frontend mean) are
:data:`pymacvtap.daemon.config.KINDS`; here each is given its opener.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pymacvtap.core.port import Endpoint
from pymacvtap.daemon.config import KINDS, EndpointConfig, Kind
from pymacvtap.frontends.base import Frontend
from pymacvtap.frontends.dgram import DgramFrontend
from pymacvtap.frontends.stream import StreamFrontend
from pymacvtap.frontends.unix import SOCKET_MODE
from pymacvtap.frontends.veth import VethFrontend
from pymacvtap.frontends.vhost_user import VhostUserFrontend
from pymacvtap.frontends.vmtap import VmTapFrontend

FdsChanged = Callable[[], None]
# (the configuration, its engine endpoint, restoring?, called when the frontend's fds change)
Opener = Callable[[EndpointConfig, Endpoint, bool, FdsChanged], Frontend]


def _netdev(cfg: EndpointConfig, ep: Endpoint, restoring: bool, _: FdsChanged) -> Frontend:
    return VethFrontend.create(
        cfg.name, cfg.netdev_name, cfg.netns, ep.mac, ep.mtu, reattach=restoring
    )


def _vm_tap(cfg: EndpointConfig, ep: Endpoint, restoring: bool, _: FdsChanged) -> Frontend:
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


def _socket_path(cfg: EndpointConfig, restoring: bool) -> str:
    """Where a socket frontend listens; a file there is refused unless it is ours (restore)."""
    path = cfg.socket_path
    assert path is not None
    if not restoring and os.path.exists(path):
        raise FileExistsError(f"{path} exists already")
    return path


def _stream(cfg: EndpointConfig, ep: Endpoint, restoring: bool, changed: FdsChanged) -> Frontend:
    return StreamFrontend(_socket_path(cfg, restoring), cfg.owner, cfg.group, changed)


def _dgram(cfg: EndpointConfig, ep: Endpoint, restoring: bool, _: FdsChanged) -> Frontend:
    return DgramFrontend(_socket_path(cfg, restoring), cfg.owner, cfg.group, cfg.peer)


def _vhost_user(
    cfg: EndpointConfig, ep: Endpoint, restoring: bool, changed: FdsChanged
) -> Frontend:
    path = _socket_path(cfg, restoring)
    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    vhost = VhostUserFrontend.create(path, cfg.queues)
    try:
        os.chown(path, cfg.owner or 0, cfg.group or 0)
        os.chmod(path, SOCKET_MODE)
    except OSError:
        vhost.close(delete=True)
        raise
    vhost.on_fds_changed = changed
    return vhost


OPENERS: dict[Kind, Opener] = {
    KINDS["macvlan", "tap"]: _netdev,
    KINDS["macvtap", "tap"]: _vm_tap,
    KINDS["macvtap", "stream"]: _stream,
    KINDS["macvtap", "dgram"]: _dgram,
    KINDS["macvtap", "vhost-user"]: _vhost_user,
}
assert set(OPENERS) == set(KINDS.values()), "every kind of endpoint needs an opener"


def open_frontend(
    cfg: EndpointConfig, ep: Endpoint, restoring: bool, on_fds_changed: FdsChanged
) -> Frontend:
    """The endpoint's frontend, created (or, when ``restoring``, taken over)."""
    return OPENERS[cfg.kind](cfg, ep, restoring, on_fds_changed)
