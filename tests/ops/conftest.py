"""Fixtures for the operations tests: a lab with a hairpin lower and a real daemon."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.lab import Lab
from tests.lab.daemon import DaemonProcess, wait_until
from tests.lab.fixtures import lab_with_lower, running_daemon

REPO = Path(__file__).resolve().parents[2]
SUBNET = "10.97.0"
EXT_IP = f"{SUBNET}.100"
LOWER_MAC = bytes.fromhex("020000000c01")


class OpsDaemon(DaemonProcess):
    """A DaemonProcess taking extra daemon options (``--metrics``)."""

    def __init__(self, netns: str, workdir: Path, extra: tuple[str, ...] = ()) -> None:
        super().__init__(netns, workdir, extra_args=extra)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_with_lower(SUBNET, LOWER_MAC) as lab:
        yield lab


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[DaemonProcess]:
    with running_daemon(lab, tmp_path) as proc:
        yield proc


@pytest.fixture
def sleeper_netns() -> Iterator[Callable[[], str]]:
    """Namespaces as a runtime without `ip netns` makes them: an unshare'd process's.

    The process keeps no capabilities, like a container's sandbox process: the
    daemon (which drops most of its own) may open /proc/PID/ns/net only of a
    process whose capabilities are a subset of its own (ptrace access rules).
    """
    procs: list[subprocess.Popen[bytes]] = []

    def make() -> str:
        argv = ["unshare", "--net", "setpriv", "--bounding-set=-all", "--inh-caps=-all"]
        proc = subprocess.Popen([*argv, "sleep", "600"])
        procs.append(proc)
        path = f"/proc/{proc.pid}/ns/net"
        assert wait_until(lambda: os.readlink(path) != os.readlink("/proc/self/ns/net"))
        return path

    yield make
    for proc in procs:
        proc.kill()
        proc.wait()
