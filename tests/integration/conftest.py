"""Fixtures: the namespace lab of SPEC 8 with a real daemon on its lower."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab import Lab, ip
from tests.lab.daemon import DaemonProcess
from tests.lab.fixtures import lab_with_lower, running_daemon

SUBNET = "10.98.0"
LOWER_MAC = bytes.fromhex("020000000b01")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_with_lower(SUBNET, LOWER_MAC) as lab:
        yield lab


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[DaemonProcess]:
    with running_daemon(lab, tmp_path) as proc:
        yield proc


class Containers:
    """Container endpoints: a namespace each, with the endpoint as eth0 and an address."""

    def __init__(self, lab: Lab, daemon: DaemonProcess) -> None:
        self.lab = lab
        self.daemon = daemon
        self.netns: dict[str, str] = {}
        self.address: dict[str, str] = {"ext": f"{SUBNET}.100"}
        self._next = 11

    def add(self, name: str, mode: str, *, lower: str = "low0", extra: tuple[str, ...] = ()) -> str:
        ns = self.lab.add_netns(name)
        self.daemon.cli(
            "link", "add", "link", lower, "name", name, "type", "macvlan", "mode", mode,
            "netns", ns, "ifname", "eth0", *extra,
        )  # fmt: skip
        address = f"{SUBNET}.{self._next}"
        self._next += 1
        ip(ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip(ns, "link", "set", "eth0", "up")
        self.netns[name] = ns
        self.address[name] = address
        return ns

    def ns_of(self, name: str) -> str:
        return self.lab.ext if name == "ext" else self.netns[name]

    def ping(self, src: str, dst: str, count: int = 2) -> bool:
        """True when every echo request of ``src`` to ``dst`` was answered."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns_of(src), "ping", "-c", str(count), "-i", "0.2",
             "-W", "1", self.address[dst]],
            capture_output=True,
            check=False,
        )  # fmt: skip
        return proc.returncode == 0


@pytest.fixture
def containers(lab: Lab, daemon: DaemonProcess) -> Containers:
    return Containers(lab, daemon)
