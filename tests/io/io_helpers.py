"""Helpers for the I/O tests: namespaces and veth pairs removed in teardown even on
failure, raw capture sockets, waiting for fds.  (Named io_helpers, not conftest or a
package: a package called ``io`` would shadow the standard library.)

Test code may drive ``ip`` through subprocess; the library under test may not.
"""

from __future__ import annotations

import secrets
import select
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from pymacvtap.io.netns import entered

PREFIX = "pmvt-io-"
ETH_P_ALL = 0x0003
ETH_P_EXPERIMENTAL = 0x88B5  # IEEE local experimental ethertype: nothing else sends it


def sh(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def in_ns(ns: str, *argv: str) -> str:
    return sh("ip", "netns", "exec", ns, *argv)


def unique(prefix: str = "") -> str:
    return prefix + secrets.token_hex(3)


MakeNetns = Callable[..., str]


@pytest.fixture
def make_netns() -> Iterator[MakeNetns]:
    """Factory of fresh namespaces (IPv6 off unless asked: no stray ND/MLD frames)."""
    created: list[str] = []

    def make(*, ipv6: bool = False) -> str:
        name = PREFIX + secrets.token_hex(4)
        sh("ip", "netns", "add", name)
        created.append(name)
        if not ipv6:
            in_ns(
                name,
                "sh",
                "-c",
                "echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6;"
                " echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6",
            )
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in created:
        subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


@dataclass
class Veth:
    ns_a: str
    a: str
    ns_b: str
    b: str


@pytest.fixture
def veth(make_netns: MakeNetns) -> Veth:
    """A veth pair, end ``va`` in one namespace and ``vb`` in another, both up."""
    ns_a, ns_b = make_netns(), make_netns()
    sh("ip", "link", "add", "va", "netns", ns_a, "type", "veth", "peer", "name", "vb",
       "netns", ns_b)  # fmt: skip
    sh("ip", "-n", ns_a, "link", "set", "va", "up")
    sh("ip", "-n", ns_b, "link", "set", "vb", "up")
    return Veth(ns_a, "va", ns_b, "vb")


class RawSocket:
    """A plain AF_PACKET socket (no vnet header): the test's injector and capture."""

    def __init__(self, ns: str | None, ifname: str) -> None:
        with entered(ns):
            self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
            self.sock.bind((ifname, ETH_P_ALL))
        self.sock.setblocking(False)

    def send(self, data: bytes) -> None:
        self.sock.send(data)

    def recv_all(
        self, want: Callable[[bytes], bool], count: int = 1, timeout: float = 2.0
    ) -> list[bytes]:
        """Frames matching ``want`` (incoming and outgoing), until ``count`` or timeout."""
        got: list[bytes] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            select.select([self.sock], [], [], left)
            while True:
                try:
                    data = self.sock.recv(1 << 17)
                except BlockingIOError:
                    break
                if want(data):
                    got.append(data)
        return got

    def close(self) -> None:
        self.sock.close()


def wait_readable(fd: int, timeout: float = 2.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def collect(
    read: Callable[[], list[object]], fd: int, count: int, timeout: float = 2.0
) -> list[object]:
    """Call a batch reader whenever ``fd`` is readable until ``count`` items or timeout."""
    got: list[object] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if wait_readable(fd, left):
            got.extend(read())
    return got


def sysfs(ns: str, ifname: str, attr: str) -> str:
    """/sys/class/net/IF/ATTR as seen inside ``ns`` (ip netns exec mounts its sysfs)."""
    return in_ns(ns, "cat", f"/sys/class/net/{ifname}/{attr}").strip()


def eth_frame(dst: bytes, src: bytes, payload: bytes, ethertype: int = ETH_P_EXPERIMENTAL) -> bytes:
    return dst + src + ethertype.to_bytes(2, "big") + payload
