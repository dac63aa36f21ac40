"""The address and IP-multicast watcher: parsing, and the kernel's messages in a namespace."""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterator

import pytest

from lab.netns import create_netns, delete_netns, ip, socket_in, sysctl, unique_prefix
from pymacvtap.io.addrwatch import (
    IFA_F_TENTATIVE,
    IFA_LOCAL,
    IFA_MULTICAST,
    RTM_DELADDR,
    RTM_NEWADDR,
    RTM_NEWMULTICAST,
    AddressEvent,
    AddressWatcher,
    current_addresses,
    parse,
)


def message(kind: int, family: int, ifindex: int, attrs: dict[int, bytes], flags: int = 0) -> bytes:
    body = struct.pack("=BBBBI", family, 24, flags, 0, ifindex)
    for rta_type, value in attrs.items():
        rta = struct.pack("=HH", 4 + len(value), rta_type) + value
        body += rta + bytes(-len(rta) % 4)
    return struct.pack("=IHHII", 16 + len(body), kind, 0, 0, 0) + body


V4 = bytes([10, 1, 2, 3])
V6 = bytes.fromhex("fd000000000000000000000000000011")
GROUP = bytes([239, 1, 2, 3])


@pytest.mark.parametrize(
    ("data", "events"),
    [
        (message(RTM_NEWADDR, socket.AF_INET, 3, {IFA_LOCAL: V4}), [AddressEvent(3, V4, True)]),
        (message(RTM_DELADDR, socket.AF_INET6, 4, {1: V6}), [AddressEvent(4, V6, False)]),
        # Still in duplicate address detection: not the netdev's yet.
        (message(RTM_NEWADDR, socket.AF_INET6, 4, {1: V6}, IFA_F_TENTATIVE), []),
        (
            message(RTM_NEWMULTICAST, socket.AF_INET, 3, {IFA_MULTICAST: GROUP}),
            [AddressEvent(3, GROUP, True, multicast=True)],
        ),
        (message(RTM_NEWADDR, socket.AF_INET, 3, {IFA_LOCAL: V6}), []),  # wrong length
        (message(16, socket.AF_INET, 3, {}), []),  # a link message
        (message(RTM_NEWADDR, socket.AF_INET, 3, {IFA_LOCAL: V4})[:20], []),  # cut short
        (
            message(RTM_NEWADDR, socket.AF_INET, 3, {IFA_LOCAL: V4})
            + message(RTM_DELADDR, socket.AF_INET, 3, {IFA_LOCAL: V4}),
            [AddressEvent(3, V4, True), AddressEvent(3, V4, False)],
        ),
    ],
)
def test_parse(data: bytes, events: list[AddressEvent]) -> None:
    assert parse(data) == events


@pytest.fixture
def netns() -> Iterator[str]:
    name = unique_prefix() + "aw"
    create_netns(name)
    try:
        yield name
    finally:
        delete_netns(name)


def _events(watcher: AddressWatcher, want: int) -> list[AddressEvent]:
    got: list[AddressEvent] = []
    for _ in range(20):
        select.select([watcher.fileno()], [], [], 0.2)
        got += watcher.read_events()
        if len(got) >= want:
            break
    return got


def test_addresses_and_ip_joins_in_a_namespace(netns: str) -> None:
    ip(netns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    ip(netns, "link", "set", "d0", "up")
    index = int(ip(netns, "-o", "link", "show", "d0").split(":")[0])
    watcher = AddressWatcher(netns)
    try:
        ip(netns, "addr", "add", "10.1.2.3/24", "dev", "d0")
        assert AddressEvent(index, V4, True) in _events(watcher, 1)
        ip(netns, "addr", "del", "10.1.2.3/24", "dev", "d0")
        assert AddressEvent(index, V4, False) in _events(watcher, 1)
        sysctl(netns, "net.ipv6.conf.d0.disable_ipv6", "0")  # (the lab keeps IPv6 off)
        with socket_in(netns, socket.AF_INET, socket.SOCK_DGRAM) as member:
            mreq = GROUP + bytes(4) + struct.pack("i", index)
            member.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            if watcher.multicast:  # Linux 6.13 and on
                assert AddressEvent(index, GROUP, True, multicast=True) in _events(watcher, 1)
        watcher.request_dump()
        ip(netns, "addr", "add", "10.1.2.3/24", "dev", "d0")
        assert AddressEvent(index, V4, True) in _events(watcher, 2)
    finally:
        watcher.close()


def test_current_addresses_reads_the_whole_dump(netns: str) -> None:
    ip(netns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    index = int(ip(netns, "-o", "link", "show", "d0").split(":")[0])
    for n in range(1, 41):  # more than one datagram's worth
        ip(netns, "addr", "add", f"10.1.{n}.3/24", "dev", "d0")
    found = {ev.address for ev in current_addresses(netns) if ev.ifindex == index}
    assert found == {bytes([10, 1, n, 3]) for n in range(1, 41)}
