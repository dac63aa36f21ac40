"""Fixtures for the operations tests (the lab and daemon come from tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator

import pytest

from lab.daemon import wait_until


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
