"""Where a netdev moved to: a namespace id turned back into a namespace the daemon can open.

When someone else moves an endpoint's netdev to another namespace (Docker
does, into the container's), the old namespace gets an RTM_DELLINK carrying the
new namespace's *id* - a number that means something only in the old
namespace - and the device's new ifindex.  To follow the device the daemon
needs a name or path for that namespace that it can open again later, after a
restart too.  So the candidates are asked, in the old namespace, which id they
have there (RTM_GETNSID with the namespace's fd): the daemon's own namespace
first, then bind-mounted namespaces (``/run/netns/NAME``, Docker's sandbox
files), which outlive any one process, and last ``/proc/PID/ns/net``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute

from pymacvtap.io.netns import NETNS_RUN_DIR, NetnsNotFound, entered

OWN = "/proc/thread-self/ns/net"


def namespace_of_id(nsid: int, seen_from: str | None) -> str | None:
    """The namespace ``seen_from`` knows as ``nsid``: None for the daemon's own namespace,
    else a /run/netns name or a path; raises :class:`NetnsNotFound`."""
    seen: set[tuple[int, int]] = set()
    with entered(seen_from):
        ipr = IPRoute()
    try:
        for label, path in _candidates():
            try:
                st = os.stat(path)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                if _id_of(ipr, path) == nsid:
                    return label
            except OSError:
                continue  # a process that exited, a file unmounted meanwhile
    finally:
        ipr.close()
    raise NetnsNotFound(2, f"no namespace has id {nsid} in netns {seen_from or '(own)'}")


def name_by_index(ifindex: int, ns: str | None) -> str:
    """The name of device ``ifindex`` in ``ns`` (OSError when there is none)."""
    with entered(ns):
        return socket.if_indextoname(ifindex)


def _id_of(ipr: Any, path: str) -> int | None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        reply = ipr.get_netnsid(fd=fd)
    finally:
        os.close(fd)
    return None if reply is None or reply.get("nsid") is None else int(reply["nsid"])


def _candidates() -> Iterator[tuple[str | None, str]]:
    """(what to call it, a path to open) for every namespace in sight, the stable ones first."""
    yield None, OWN
    for mountpoint in _nsfs_mounts():
        if os.path.dirname(mountpoint) == NETNS_RUN_DIR:
            yield os.path.basename(mountpoint), mountpoint
        else:
            yield mountpoint, mountpoint
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            path = f"/proc/{pid}/ns/net"
            yield path, path


def _nsfs_mounts() -> list[str]:
    """Mount points of network namespace files (``nsfs`` mounts whose root is ``net:[...]``)."""
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 5 or not fields[3].startswith("net:["):
                    continue
                # Spaces and the like are escaped as \\ooo octal in mountinfo.
                found.append(fields[4].encode().decode("unicode_escape"))
    except OSError:
        pass
    return found
