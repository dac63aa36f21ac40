"""The no-I/O rule of pymacvtap.virtio, and its place among the layers.

The same checker as the engine's (tests/core/test_no_io.py): a fresh interpreter imports every
module of the package and puts a device to work — negotiation, guest memory, rings set up,
frames both ways, a super-frame made plain — then no I/O module may have been loaded and no
attribute of the package may come from one; a static pass refuses I/O imports anywhere.

Layers: virtio takes nothing from core but the frame type (``core.frame``), and core never
imports virtio (the engine does not need it; frontends do).
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import pymacvtap.core
import pymacvtap.virtio
from tests.core.test_no_io import REPO, io_imports, run_checker, submodules

VIRTIO_DIR = Path(pymacvtap.virtio.__file__).parent
CORE_DIR = Path(pymacvtap.core.__file__).parent

# Run inside the checker (``package`` is pymacvtap.virtio): a session as QEMU drives it.
DEVICE_AT_WORK = r"""
from collections import deque

from pymacvtap.core.frame import VIRTIO_NET_HDR_GSO_TCPV4, Frame, VnetHeader
from pymacvtap.virtio import features as vf
from pymacvtap.virtio.actions import Notify
from pymacvtap.virtio.device import Device
from tests.virtio.guest import Driver

device = Device(queues=2)
driver = Driver(device)
driver.negotiate(pairs=2, features=vf.bits(vf.VIRTIO_F_VERSION_1, vf.VIRTIO_NET_F_MRG_RXBUF))
driver.rings[1].send(bytes(12) + b"\x02" * 60)
frames = device.rings.kicked(1, 64)
assert len(frames) == 1, frames
driver.rings[0].post_rx(8, 2048)
driver.rings[2].post_rx(8, 2048)
tcp = bytearray(14 + 20 + 20 + 3000)
tcp[12:14] = b"\x08\x00"
tcp[14] = 0x45
tcp[23] = 6
tcp[46] = 0x50
queue = deque([Frame(bytes(tcp), VnetHeader(0, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1000))])
assert device.rings.write(queue, 256) is False and not queue
assert any(isinstance(a, Notify) for a in device.take_actions())
device.reset()
"""


def test_virtio_modules_are_all_found() -> None:
    modules = submodules(VIRTIO_DIR, "pymacvtap.virtio")
    for expected in ("offload", "virtqueue", "messages", "features", "memory", "rings", "device"):
        assert f"pymacvtap.virtio.{expected}" in modules


def test_virtio_does_no_io() -> None:
    modules = submodules(VIRTIO_DIR, "pymacvtap.virtio")
    result = run_checker(REPO, "pymacvtap.virtio", modules, DEVICE_AT_WORK)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_virtio_has_no_io_import_even_inside_functions() -> None:
    problems = []
    for path in sorted(VIRTIO_DIR.rglob("*.py")):
        problems += io_imports(path.read_text(), str(path.relative_to(REPO)))
    assert problems == []


def package_imports(path: Path, package: str) -> list[str]:
    """The pymacvtap modules a file imports, anywhere in it (relative ones resolved)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return [name for name in found if name.startswith("pymacvtap")]


def test_virtio_takes_only_the_frame_type_from_core() -> None:
    outside = {
        name
        for path in VIRTIO_DIR.rglob("*.py")
        for name in package_imports(path, "pymacvtap.virtio")
        if not name.startswith("pymacvtap.virtio")
    }
    assert outside <= {"pymacvtap.core.frame"} | {
        f"pymacvtap.core.frame.{name}" for name in dir(pymacvtap.core.frame)
    }, outside


def test_core_never_imports_virtio() -> None:
    wrong = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in sorted(CORE_DIR.rglob("*.py"))
        for name in package_imports(path, "pymacvtap.core")
        if name.startswith("pymacvtap.virtio") or name == "pymacvtap.virtio"
    ]
    assert wrong == []


@pytest.mark.parametrize(
    ("line", "reported"),
    [
        ("import os", "loads module os"),
        ("from time import monotonic", "pymacvtap.virtio.device.monotonic comes from time"),
        # dataclasses loads os (through inspect): why virtio's records are plain classes
        ("from dataclasses import dataclass", "loads module os"),
    ],
)
def test_checker_catches_io_added_to_the_real_device(
    tmp_path: Path, line: str, reported: str
) -> None:
    shutil.copytree(
        REPO / "pymacvtap", tmp_path / "pymacvtap", ignore=shutil.ignore_patterns("__pycache__")
    )
    (tmp_path / "tests" / "virtio").mkdir(parents=True)
    for name in ("__init__.py", "guest.py"):
        shutil.copy(REPO / "tests" / "virtio" / name, tmp_path / "tests" / "virtio" / name)
    device_py = tmp_path / "pymacvtap" / "virtio" / "device.py"
    device_py.write_text(device_py.read_text() + f"\n{line}\n")
    modules = submodules(tmp_path / "pymacvtap" / "virtio", "pymacvtap.virtio")
    result = run_checker(tmp_path, "pymacvtap.virtio", modules, DEVICE_AT_WORK)
    assert result.returncode == 1, result.stdout + result.stderr
    assert reported in result.stdout
