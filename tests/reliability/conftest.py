"""Reliability and security tests: fuzzing, faults, load, isolation (see SECURITY.md).

``PYMACVTAP_FUZZ_SCALE`` (default 1) multiplies every fuzz count and soak
duration: ``make soak`` runs them with 10.  The figures each test reaches are
collected in ``helpers.FIGURES`` (one module, whatever name pytest gives
this conftest) and printed at the end of the run, for SECURITY.md.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import SUBNET, Containers
from tests.lab import Lab
from tests.lab.daemon import DaemonProcess, wait_until
from tests.lab.fixtures import lab_with_lower, running_daemon
from tests.reliability.helpers import FIGURES, record

__all__ = ["FIGURES", "SCALE", "record", "rss_kib", "wait_until"]

SCALE = max(1, int(os.environ.get("PYMACVTAP_FUZZ_SCALE", "1")))
LOWER_MAC = bytes.fromhex("020000000c01")


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB (from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def proc_status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {key} for pid {pid}")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_with_lower(SUBNET, LOWER_MAC) as lab:
        yield lab


@pytest.fixture
def daemon(lab: Lab, tmp_path: Path) -> Iterator[DaemonProcess]:
    with running_daemon(lab, tmp_path, must_survive=True) as proc:
        yield proc


@pytest.fixture
def containers(lab: Lab, daemon: DaemonProcess) -> Containers:
    return Containers(lab, daemon)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section(f"reliability figures (PYMACVTAP_FUZZ_SCALE={SCALE})")
        for name, count in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{name}: {count:,}")
