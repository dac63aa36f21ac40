"""Fixtures every suite shares: the namespace lab of SPEC 8 with a real daemon on its lower.

A suite that needs something stricter overrides a fixture in its own conftest
(the reliability tests require the daemon to survive every test).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from lab.daemon import DaemonProcess
from lab.fixtures import LOWER_MAC, SUBNET, Containers, lab_with_lower, running_daemon


@pytest.fixture
def lab() -> Iterator[Lab]:
    with lab_with_lower(SUBNET, LOWER_MAC) as lab:
        yield lab


@pytest.fixture
def daemon_must_survive() -> bool:
    return False


@pytest.fixture
def datapath() -> str | None:
    """The daemon's ``--datapath``; None: its default (auto). A suite parametrizes it."""
    return None


@pytest.fixture
def daemon(
    lab: Lab, tmp_path: Path, daemon_must_survive: bool, datapath: str | None
) -> Iterator[DaemonProcess]:
    with running_daemon(lab, tmp_path, must_survive=daemon_must_survive, datapath=datapath) as proc:
        yield proc


@pytest.fixture
def containers(lab: Lab, daemon: DaemonProcess) -> Containers:
    return Containers(lab, daemon)
