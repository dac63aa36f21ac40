"""A namespace's IP addresses and IP multicast memberships, as rtnetlink announces them.

One raw NETLINK_ROUTE socket per namespace, opened inside it, subscribed to:

* RTMGRP_IPV4_IFADDR / RTMGRP_IPV6_IFADDR: RTM_NEWADDR / RTM_DELADDR, a netdev's own
  addresses (SPEC 9: the daemon knows them before any traffic);
* RTNLGRP_IPV4_MCADDR (37) / RTNLGRP_IPV6_MCADDR (38): RTM_NEWMULTICAST /
  RTM_DELMULTICAST (56/57), sent when a socket joins or leaves an IP group (Linux 6.13
  on; measured on this machine's 6.18: ``IP_ADD_MEMBERSHIP`` produces one, ``ip maddr
  add`` produces none, so the group poll stays for link-layer joins).  Older kernels
  refuse the membership: the watcher then follows addresses only.

The messages are parsed here with ``struct``: pyroute2 knows no type 56, and the
parsing is a dozen lines.  The socket is non-blocking for the daemon's epoll.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass

from pymacvtap.io.netns import entered

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
RTNLGRP_IPV4_MCADDR = 37
RTNLGRP_IPV6_MCADDR = 38
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWMULTICAST, RTM_DELMULTICAST = 56, 57
IFA_ADDRESS, IFA_LOCAL, IFA_MULTICAST, IFA_FLAGS = 1, 2, 7, 8
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
IFA_F_TENTATIVE = 0x40

_NLMSG = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTA = struct.Struct("=HH")


@dataclass(frozen=True)
class AddressEvent:
    """One address (``multicast``: an IP group joined) added to or removed from a netdev."""

    ifindex: int
    address: bytes  # 4 or 16 bytes
    added: bool
    multicast: bool = False


class AddressWatcher:
    """Address and IP-multicast notifications of one namespace (None: the daemon's own)."""

    def __init__(self, ns: str | None = None) -> None:
        self.ns = ns
        with entered(ns):
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        try:
            sock.bind((0, RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
            self.multicast = True
            for group in (RTNLGRP_IPV4_MCADDR, RTNLGRP_IPV6_MCADDR):
                try:
                    sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self.multicast = False  # a kernel before 6.13
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self.overruns = 0

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()

    def request_dump(self) -> None:
        """Ask for every address now; they come back through :meth:`read_events`."""
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        header = _NLMSG.pack(_NLMSG.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        self._sock.send(header + body)

    def read_events(self, max_messages: int = 256) -> list[AddressEvent]:
        events: list[AddressEvent] = []
        for _ in range(max_messages):
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1  # fell behind: a fresh dump tells the truth again
                self.request_dump()
                continue
            events.extend(parse(data))
        return events


def current_addresses(ns: str | None = None, timeout: float = 2.0) -> list[AddressEvent]:
    """Every address of the namespace now (an RTM_GETADDR dump, read to its end)."""
    with entered(ns):
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
    with sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        body = _IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        header = _NLMSG.pack(_NLMSG.size + len(body), RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
        sock.send(header + body)
        events: list[AddressEvent] = []
        while True:
            data = sock.recv(1 << 16)
            events.extend(parse(data))
            if _ends_dump(data):
                return events


def _ends_dump(data: bytes) -> bool:
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return True
        if length < _NLMSG.size:
            return True
        offset += (length + 3) & ~3
    return False


def parse(data: bytes) -> list[AddressEvent]:
    """The address events in one netlink datagram (others skipped)."""
    events = []
    offset = 0
    while offset + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > len(data):
            break
        event = _event(kind, data[offset + _NLMSG.size : offset + length])
        if event is not None:
            events.append(event)
        offset += (length + 3) & ~3
    return events


def _event(kind: int, body: bytes) -> AddressEvent | None:
    if kind not in (RTM_NEWADDR, RTM_DELADDR, RTM_NEWMULTICAST, RTM_DELMULTICAST):
        return None
    if len(body) < _IFADDRMSG.size:
        return None
    family, _prefix, ifa_flags, _scope, ifindex = _IFADDRMSG.unpack_from(body)
    size = 4 if family == socket.AF_INET else 16 if family == socket.AF_INET6 else 0
    if not size:
        return None
    attrs: dict[int, bytes] = {}
    at = _IFADDRMSG.size
    while at + _RTA.size <= len(body):
        rta_len, rta_type = _RTA.unpack_from(body, at)
        if rta_len < _RTA.size or at + rta_len > len(body):
            break
        attrs[rta_type & 0x3FFF] = body[at + _RTA.size : at + rta_len]
        at += (rta_len + 3) & ~3
    multicast = kind in (RTM_NEWMULTICAST, RTM_DELMULTICAST)
    added = kind in (RTM_NEWADDR, RTM_NEWMULTICAST)
    flags = int.from_bytes(attrs.get(IFA_FLAGS, b""), "little") | ifa_flags
    if added and not multicast and flags & IFA_F_TENTATIVE:
        # Still in duplicate address detection: not the netdev's until it passes (the
        # kernel then sends the address again without the flag).
        return None
    if multicast:
        address = attrs.get(IFA_MULTICAST)
    else:
        # IPv4 point-to-point links put the peer in IFA_ADDRESS; ours is IFA_LOCAL.
        address = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
    if address is None or len(address) != size:
        return None
    return AddressEvent(ifindex, address, added, multicast)
