"""An endpoint's IPv4 address and default route on its netdev, set over rtnetlink in its namespace.

What DHCP kept by the daemon puts on a container's netdev: ``replace`` rather
than ``add`` everywhere, so applying the same lease again (after a renewal, a
daemon restart, a move that flushed the netdev's addresses) is harmless.
"""

from __future__ import annotations

import errno
from ipaddress import IPv4Interface
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from pymacvtap.io.netlink import LinkNotFound, rtnl


def _index(ipr: Any, ifname: str, ns: str | None) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LinkNotFound(ifname, ns)
    return int(found[0])


def put_address(ifname: str, ns: str | None, interface: str, gateway: str | None) -> None:
    """``interface`` (``a.b.c.d/len``) on the netdev and, if given, the default route."""
    iface = IPv4Interface(interface)
    with rtnl(ns) as ipr:
        index = _index(ipr, ifname, ns)
        try:
            ipr.addr(
                "replace",
                index=index,
                address=str(iface.ip),
                prefixlen=iface.network.prefixlen,
                broadcast=str(iface.network.broadcast_address),
            )
            if gateway is not None:
                ipr.route("replace", dst="0.0.0.0/0", gateway=gateway, oif=index)
        except NetlinkError as exc:
            raise OSError(exc.code or errno.EIO, f"{ifname}: {interface}: {exc}") from None


def take_address(ifname: str, ns: str | None, interface: str) -> None:
    """Take ``interface`` off the netdev (its routes go with it); gone already is fine."""
    iface = IPv4Interface(interface)
    try:
        with rtnl(ns) as ipr:
            index = _index(ipr, ifname, ns)
            ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    except (NetlinkError, LinkNotFound, FileNotFoundError):
        return
