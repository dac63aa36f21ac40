"""Fixtures: a temporary socket directory and control servers served in a thread."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .fakes import RunningServer


@pytest.fixture
def sockdir() -> Iterator[str]:
    # Not pytest's tmp_path: that is 0700 under /tmp/pytest-of-root, and some tests
    # connect as another user.
    path = tempfile.mkdtemp(prefix="pymacvtap-ctl-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    for root, dirs, files in os.walk(path, topdown=False):
        for f in files:
            os.unlink(os.path.join(root, f))
        for d in dirs:
            os.rmdir(os.path.join(root, d))
    os.rmdir(path)


@pytest.fixture
def running(sockdir: str) -> Iterator[RunningServer]:
    srv = RunningServer(sockdir)
    yield srv
    srv.stop()


@pytest.fixture
def make_server(sockdir: str) -> Iterator[Callable[..., RunningServer]]:
    made: list[RunningServer] = []

    def make(**kwargs: Any) -> RunningServer:
        srv = RunningServer(sockdir, **kwargs)
        made.append(srv)
        return srv

    yield make
    for srv in made:
        srv.stop()
