"""Links over rtnetlink (pyroute2): look up, change, delete, move, and watch netdevs.

Every function takes the namespace ``ns`` the device lives in (None: the
daemon's own).  The netlink socket is opened while the thread is inside that
namespace (:func:`pymacvtap.io.netns.entered`) - a netlink socket speaks for
the namespace it was created in.  That costs a setns pair but no process:
pyroute2's own ``netns=`` argument forks a helper for every socket, and
creates a missing namespace on the way, which is never what we want.

pyroute2 raises ``NetlinkError``, which is not an ``OSError``; this module
turns it into ``OSError`` (``LinkNotFound`` for ENODEV) so callers handle one
kind of error for netlink, sysfs and procfs alike.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from pymacvtap.io.netns import entered, resolve_netns

RTMGRP_LINK = 0x1
RTM_NEWLINK = 16
RTM_DELLINK = 17
AF_UNSPEC = 0
IFF_UP = 0x1
IFF_NOARP = 0x80
IFF_PROMISC = 0x100
IFF_ALLMULTI = 0x200


class LinkNotFound(OSError):
    """No device of that name in that namespace (ENODEV)."""

    def __init__(self, ifname: str, ns: str | None = None) -> None:
        where = f" in netns {ns}" if ns is not None else ""
        super().__init__(errno.ENODEV, f"{ifname}: no such device{where}")
        self.ifname = ifname


@dataclass(frozen=True)
class LinkInfo:
    ifindex: int
    name: str
    mac: bytes
    mtu: int
    up: bool  # administratively up (IFF_UP)
    carrier: bool
    operstate: str
    flags: int
    kind: str | None  # rtnl_link kind ("veth", "tun", ...); None for hardware NICs
    alias: str | None = None  # IFLA_IFALIAS (`ip link set DEV alias TEXT`)

    @property
    def promisc(self) -> bool:
        return bool(self.flags & IFF_PROMISC)

    @property
    def allmulti(self) -> bool:
        return bool(self.flags & IFF_ALLMULTI)


@dataclass(frozen=True)
class LinkEvent:
    """One RTM_NEWLINK/RTM_DELLINK notification.

    The fields are the device's state *after* the change (netlink sends the
    whole link, not a diff); a field is None when the message lacked it.  A
    device moved to another namespace shows up as ``deleted`` in the old one,
    with ``moved_to`` (the new namespace's id as the old one knows it) and
    ``new_ifindex``; a device really deleted has neither.
    """

    ifname: str
    ifindex: int
    deleted: bool = False
    up: bool | None = None
    carrier: bool | None = None
    mtu: int | None = None
    mac: bytes | None = None
    operstate: str | None = None
    flags: int | None = None  # IFF_* (allmulti and promisc changes come only as events)
    moved_to: int | None = None  # IFLA_NEW_NETNSID of a DELLINK made by a namespace move
    new_ifindex: int | None = None  # IFLA_NEW_IFINDEX: its index over there

    @property
    def allmulti(self) -> bool | None:
        """IFF_ALLMULTI or IFF_PROMISC: the device takes every multicast group."""
        if self.flags is None:
            return None
        return bool(self.flags & (IFF_ALLMULTI | IFF_PROMISC))


def _mac_bytes(text: str | None) -> bytes:
    return bytes.fromhex(text.replace(":", "")) if text else b""


def _netlink_error(exc: NetlinkError, what: str) -> OSError:
    code = int(exc.code) if exc.code else errno.EIO
    return OSError(code, f"{what}: {os.strerror(code)}")


@contextmanager
def rtnl(ns: str | None) -> Iterator[Any]:
    """A short-lived IPRoute speaking for namespace ``ns``."""
    with entered(ns):
        ipr = IPRoute()
    try:
        yield ipr
    finally:
        ipr.close()


def _get(ipr: Any, ifname: str, ns: str | None) -> Any:
    try:
        return ipr.link("get", ifname=ifname)[0]
    except NetlinkError as exc:
        if exc.code == errno.ENODEV:
            raise LinkNotFound(ifname, ns) from None
        raise _netlink_error(exc, f"{ifname}: get") from None


def _index(ifname: str, ns: str | None) -> int:
    """The ifindex of ``ifname`` in ``ns``; raises LinkNotFound.

    SIOCGIFINDEX looks the name up in the kernel's hash as RTM_GETLINK would,
    without a netlink round trip and pyroute2's parsing of the reply.
    """
    with entered(ns):
        return _index_here(ifname, ns)


def _index_here(ifname: str, ns: str | None) -> int:
    """:func:`_index` for a thread already in ``ns`` (named for the error only)."""
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise LinkNotFound(ifname, ns) from None


def _info(msg: Any) -> LinkInfo:
    flags = int(msg["flags"])
    return LinkInfo(
        ifindex=int(msg["index"]),
        name=str(msg.get("ifname")),
        mac=_mac_bytes(msg.get("address")),
        mtu=int(msg.get("mtu") or 0),
        up=bool(flags & IFF_UP),
        carrier=bool(msg.get("carrier")),
        operstate=str(msg.get("operstate") or "UNKNOWN"),
        flags=flags,
        kind=msg.get(("linkinfo", "kind")),
        alias=msg.get("ifalias") or None,
    )


def link_info(ifname: str, ns: str | None = None) -> LinkInfo:
    """The state of device ``ifname`` in ``ns``; raises LinkNotFound."""
    with rtnl(ns) as ipr:
        return _info(_get(ipr, ifname, ns))


def links(ns: str | None = None) -> list[LinkInfo]:
    """Every device of ``ns``, in one dump."""
    with rtnl(ns) as ipr:
        try:
            return [_info(msg) for msg in ipr.link("dump")]
        except NetlinkError as exc:
            raise _netlink_error(exc, "link dump") from None


def set_alias(ifname: str, ns: str | None, alias: str) -> None:
    """Set the device's IFLA_IFALIAS (what `ip link set DEV alias TEXT` sets)."""
    index = _index(ifname, ns)
    with rtnl(ns) as ipr:
        try:
            ipr.link("set", index=index, ifalias=alias)
        except NetlinkError as exc:
            raise _netlink_error(exc, f"{ifname}: set alias") from None


def link_exists(ifname: str, ns: str | None = None) -> bool:
    try:
        _index(ifname, ns)
    except LinkNotFound:
        return False
    return True


def set_link(
    ifname: str,
    ns: str | None = None,
    *,
    address: str | bytes | None = None,
    mtu: int | None = None,
    up: bool | None = None,
    noarp: bool | None = None,
    new_name: str | None = None,
) -> None:
    """Change what is given, in one RTM_NEWLINK request (all or nothing)."""
    kwargs: dict[str, Any] = {}
    if address is not None:
        if isinstance(address, bytes):
            address = ":".join(f"{b:02x}" for b in address)
        kwargs["address"] = address
    if mtu is not None:
        kwargs["mtu"] = mtu
    if new_name is not None:
        kwargs["ifname"] = new_name
    flags = change = 0
    if up is not None:
        change |= IFF_UP
        flags |= IFF_UP if up else 0
    if noarp is not None:
        change |= IFF_NOARP
        flags |= IFF_NOARP if noarp else 0
    if change:
        kwargs["flags"] = flags
        kwargs["change"] = change
    if not kwargs:
        return
    index = _index(ifname, ns)
    with rtnl(ns) as ipr:
        try:
            ipr.link("set", index=index, **kwargs)
        except NetlinkError as exc:
            raise _netlink_error(exc, f"{ifname}: set {', '.join(kwargs)}") from None


def delete_link(ifname: str, ns: str | None = None) -> None:
    """Delete ``ifname``; a device (or namespace) that is already gone is fine."""
    try:
        index = _index(ifname, ns)
        with rtnl(ns) as ipr:
            try:
                ipr.link("del", index=index)
            except NetlinkError as exc:
                if exc.code != errno.ENODEV:
                    raise _netlink_error(exc, f"{ifname}: delete") from None
    except (LinkNotFound, FileNotFoundError):
        return


def create_veth(
    name: str, netns: str | None, peer: str, *, address: bytes, mtu: int, peer_mtu: int
) -> None:
    """A veth pair: ``name`` (address, mtu) in ``netns``, ``peer`` here.

    One request, so the named end never exists in this namespace (where its name
    may be taken) and no half of a pair is left behind by a failure.
    """
    end: dict[str, Any] = {"ifname": name, "address": address.hex(":"), "mtu": mtu}
    fd = os.open(resolve_netns(netns), os.O_RDONLY | os.O_CLOEXEC) if netns else None
    try:
        if fd is not None:
            end["net_ns_fd"] = fd
        with rtnl(None) as ipr:
            try:
                ipr.link("add", ifname=peer, kind="veth", mtu=peer_mtu, peer=end)
            except NetlinkError as exc:
                raise _netlink_error(exc, f"{peer}: add veth peer of {name}") from None
    finally:
        if fd is not None:
            os.close(fd)


def move_link(ifname: str, to_ns: str, ns: str | None = None) -> None:
    """Move ``ifname`` from ``ns`` into namespace ``to_ns`` (keeps its name)."""
    fd = os.open(resolve_netns(to_ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        index = _index(ifname, ns)
        with rtnl(ns) as ipr:
            try:
                ipr.link("set", index=index, net_ns_fd=fd)
            except NetlinkError as exc:
                raise _netlink_error(exc, f"{ifname}: move to netns {to_ns}") from None
    finally:
        os.close(fd)


def disable_ipv6(ifname: str, ns: str | None = None) -> None:
    """Turn IPv6 off on ``ifname`` (no link-local address, no ND/MLD frames).

    /proc/sys/net resolves against the *calling thread's* namespace, so the
    write happens inside ``ns``.  Without IPv6 at all (ipv6.disable=1) there
    is nothing to turn off.
    """
    with entered(ns):
        if not os.path.isdir("/proc/sys/net/ipv6/conf"):
            return
        path = f"/proc/sys/net/ipv6/conf/{ifname}/disable_ipv6"
        try:
            with open(path, "w") as f:
                f.write("1")
        except FileNotFoundError:
            raise LinkNotFound(ifname, ns) from None


def multicast_groups(ifname: str, ns: str | None = None) -> set[bytes]:
    """The link-layer multicast addresses ``ifname`` has joined (its mc list)."""
    with entered(ns):
        _index_here(ifname, ns)  # a device that is not there is LinkNotFound, not "no groups"
        return _read_dev_mcast().get(ifname, set())


def all_multicast_groups(ns: str | None = None) -> dict[str, set[bytes]]:
    """The mc list of every device of ``ns`` that has one, by name: one read for all."""
    with entered(ns):
        return _read_dev_mcast()


def _read_dev_mcast() -> dict[str, set[bytes]]:
    # Through /proc/thread-self: /proc/self/net would show the namespace of the
    # process's main thread, not the one this thread just entered.  The file lists
    # every device of the namespace, so reading it is O(devices): read it once.
    with open("/proc/thread-self/net/dev_mcast") as f:
        lines = f.read().splitlines()
    groups: dict[str, set[bytes]] = {}
    for line in lines:
        fields = line.split()
        if len(fields) >= 5:
            groups.setdefault(fields[1], set()).add(bytes.fromhex(fields[4]))
    return groups


class LinkWatcher:
    """Link notifications (RTMGRP_LINK) of one namespace, for the event loop.

    The socket is bound with pyroute2 and then read directly: pyroute2's
    sync API would run its own asyncio loop to fetch messages, which blocks;
    here ``fileno()`` goes into our epoll and :meth:`read_events` drains what
    is queued without waiting, using pyroute2 only to parse.

    If the kernel drops notifications (ENOBUFS: we fell behind), the links are
    dumped afresh and reported as events, with a ``deleted`` event for any
    device seen before that is now gone.
    """

    def __init__(self, ns: str | None = None) -> None:
        self.ns = ns
        with entered(ns):
            self._ipr = IPRoute()
        try:
            self._ipr.bind(groups=RTMGRP_LINK)
            self._sock = self._ipr.asyncore.socket
            self._sock.setblocking(False)
            self._marshal = self._ipr.asyncore.marshal
            # Names by ifindex, so that a resync can tell which devices vanished
            # meanwhile (dumped after subscribing: no change falls in between).
            self._known: dict[int, str] = {ev.ifindex: ev.ifname for ev in self._dump()}
        except BaseException:
            self._ipr.close()
            raise
        self.overruns = 0

    def fileno(self) -> int:
        fd: int = self._sock.fileno()
        return fd

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> LinkWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read_events(self, max_messages: int = 1024) -> list[LinkEvent]:
        events: list[LinkEvent] = []
        for _ in range(max_messages):
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                events.extend(self._resync())
                continue
            for msg in self._marshal.parse(data):
                ev = self._event(msg)
                if ev is not None:
                    events.append(ev)
        return events

    def _event(self, msg: Any) -> LinkEvent | None:
        mtype = msg["header"]["type"]
        # Bridge-port notifications (family AF_BRIDGE) share the group; a
        # DELLINK of those only means "no longer a bridge port".
        if mtype not in (RTM_NEWLINK, RTM_DELLINK) or msg.get("family", 0) != AF_UNSPEC:
            return None
        index = int(msg["index"])
        name = msg.get("ifname") or self._known.get(index, "")
        if mtype == RTM_DELLINK:
            self._known.pop(index, None)
            moved_to = msg.get_attr("IFLA_NEW_NETNSID")
            new_index = msg.get_attr("IFLA_NEW_IFINDEX")
            return LinkEvent(
                ifname=name,
                ifindex=index,
                deleted=True,
                moved_to=None if moved_to is None else _host_s32(moved_to),
                new_ifindex=None if new_index is None else int(new_index),
            )
        self._known[index] = name
        return _link_event(msg)

    def _dump(self) -> list[LinkEvent]:
        with rtnl(self.ns) as ipr:
            return [_link_event(m) for m in ipr.link("dump")]

    def _resync(self) -> list[LinkEvent]:
        events = self._dump()
        current = {ev.ifindex: ev.ifname for ev in events}
        gone = [
            LinkEvent(ifname=name, ifindex=index, deleted=True)
            for index, name in self._known.items()
            if index not in current
        ]
        self._known = current
        return gone + events


def _host_s32(be32: int) -> int:
    """IFLA_NEW_NETNSID as the kernel sends it (host order); pyroute2 reads it as big-endian."""
    return int(struct.unpack("=i", struct.pack(">I", int(be32)))[0])


def _link_event(msg: Any) -> LinkEvent:
    address = msg.get("address")
    mtu = msg.get("mtu")
    carrier = msg.get("carrier")
    return LinkEvent(
        ifname=str(msg.get("ifname")),
        ifindex=int(msg["index"]),
        up=bool(int(msg["flags"]) & IFF_UP),
        carrier=None if carrier is None else bool(carrier),
        mtu=None if mtu is None else int(mtu),
        mac=None if address is None else _mac_bytes(address),
        operstate=msg.get("operstate"),
        flags=int(msg["flags"]),
    )
