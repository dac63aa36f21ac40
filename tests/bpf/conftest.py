"""The fast path's object, built if missing and loaded once per test session."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pymacvtap.io.bpf import BpfError, FastPath, object_path

ROOT = Path(__file__).resolve().parents[2]
SCALE = max(1, int(os.environ.get("PYMACVTAP_FUZZ_SCALE", "1")))


@pytest.fixture(scope="session")
def compiled() -> Path:
    path = object_path()
    if not path.exists():
        subprocess.run(["make", "-C", str(ROOT), "-s", "bpf"], check=True)
    return path


@pytest.fixture
def fastpath(compiled: Path) -> Iterator[FastPath]:
    try:
        loaded = FastPath(compiled)
    except BpfError as exc:
        pytest.fail(f"the fast path does not load on this machine: {exc}")
    with loaded:
        yield loaded
