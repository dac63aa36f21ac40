"""Which netdevs are the daemon's: each one it creates carries ``pymacvtap:ENDPOINT STATE_DIR``.

Container netdevs outlive the daemon on purpose (SPEC 5), so a netdev found at
start may be one to adopt (its endpoint is configured), a leftover (its endpoint
was deleted meanwhile, or its state lost) or someone else's.  The mark (the
IFLA_IFALIAS, as ``ip link set DEV alias`` sets it) tells them apart, on any kind
of netdev: a tap today, a veth's peer tomorrow.  The state dir in the mark keeps
two daemons (each with its own state dir, SPEC 5) off each other's netdevs where
they share a namespace.  Everything that reads or writes the mark is here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable

from pymacvtap.daemon.config import EndpointConfig
from pymacvtap.io import netlink
from pymacvtap.io.netns import netns_exists

log = logging.getLogger("pymacvtap")

MARK_PREFIX = "pymacvtap:"
# Netdevs from before the marks: a tap where an endpoint's netdev is expected was
# made by an earlier pymacvtap (a tap's name is never shared with a lower), so it
# is adopted when its endpoint is restored, and marked then.
UNMARKED_ADOPTABLE_KINDS = ("tun",)


class NotOurs(FileExistsError):
    """A netdev of the endpoint's name exists and may not be taken or removed."""


def read_mark(alias: str | None) -> tuple[str, str] | None:
    """(endpoint, state dir) of a marked netdev's alias; None for an unmarked one."""
    if alias is None or not alias.startswith(MARK_PREFIX):
        return None
    endpoint, _, state_dir = alias[len(MARK_PREFIX) :].partition(" ")
    return (endpoint, state_dir) if endpoint else None


class Marks:
    """The marks of the daemon keeping its state in ``state_dir``."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = os.path.realpath(state_dir)

    def mark(self, ifname: str, netns: str | None, endpoint: str) -> None:
        """Mark ``ifname`` (in ``netns``) as the netdev of ``endpoint``."""
        netlink.set_alias(ifname, netns, f"{MARK_PREFIX}{endpoint} {self.state_dir}")

    def endpoint_of(self, alias: str | None) -> str | None:
        """The endpoint of ours a netdev's alias names; None if not ours."""
        found = read_mark(alias)
        return found[0] if found is not None and found[1] == self.state_dir else None

    def make_way(
        self, cfg: EndpointConfig, configured: Callable[[str], bool], *, restoring: bool
    ) -> None:
        """Clear the name of the endpoint's netdev before it is created or taken over.

        Ours and this endpoint's, when restoring: left for the frontend to take over.
        Ours but of no ``configured`` endpoint: a leftover, removed.  Anything else
        raises :class:`NotOurs` with the reason.
        """
        if not cfg.kind.netdev:
            return
        name, netns = cfg.netdev_name, cfg.netns
        if not netlink.link_exists(name, netns):  # the usual case, without a netlink round trip
            return
        try:
            info = netlink.link_info(name, netns)
        except netlink.LinkNotFound:
            return
        where = f" in netns {netns}" if netns is not None else ""
        found = read_mark(info.alias)
        if found is None:
            if restoring and info.kind in UNMARKED_ADOPTABLE_KINDS:
                return
            raise NotOurs(f"a device named {name} exists already{where} and is not pymacvtap's")
        owner, state_dir = found
        if state_dir != self.state_dir:
            raise NotOurs(
                f"a device named {name} exists already{where}: endpoint {owner}'s netdev "
                f"of the pymacvtap daemon with state dir {state_dir or '(unknown)'}"
            )
        if owner == cfg.name and restoring:
            return
        if owner != cfg.name and configured(owner):
            raise NotOurs(f"a device named {name} exists already{where}: endpoint {owner}'s netdev")
        log.info(
            "%s: removing netdev %s%s, a leftover of endpoint %s", cfg.name, name, where, owner
        )
        netlink.delete_link(name, netns)

    def remove_if_ours(self, cfg: EndpointConfig) -> None:
        """Delete the endpoint's netdev if there is one and it carries the endpoint's mark."""
        if not cfg.kind.netdev:
            return
        try:
            info = netlink.link_info(cfg.netdev_name, cfg.netns)
        except (netlink.LinkNotFound, FileNotFoundError):
            return
        if self.endpoint_of(info.alias) == cfg.name:
            netlink.delete_link(cfg.netdev_name, cfg.netns)

    def sweep(self, configs: Iterable[EndpointConfig]) -> list[str]:
        """Remove the marked netdevs whose endpoint is not configured (at start).

        Looked for in the daemon's namespace and in those of the configured
        endpoints, not in every namespace of the host (a dump each, at every start);
        a leftover elsewhere is replaced when ``link add`` wants its name
        (:meth:`make_way`).  Returns what was removed.
        """
        expected: dict[tuple[str | None, str], str] = {}
        spaces: dict[str | None, None] = {None: None}
        for cfg in configs:
            if cfg.kind.netdev:
                expected[cfg.netns, cfg.netdev_name] = cfg.name
            spaces[cfg.netns] = None
        removed = []
        for netns in spaces:
            if netns is not None and not netns_exists(netns):
                continue
            try:
                found = netlink.links(netns)
            except OSError as exc:
                log.warning("looking for leftover netdevs in netns %s: %s", netns, exc)
                continue
            for info in found:
                owner = self.endpoint_of(info.alias)
                if owner is None or expected.get((netns, info.name)) == owner:
                    continue
                where = f" in netns {netns}" if netns is not None else ""
                log.info("removing netdev %s%s, a leftover of endpoint %s", info.name, where, owner)
                netlink.delete_link(info.name, netns)
                removed.append(f"{netns or ''}/{info.name}")
        return removed
