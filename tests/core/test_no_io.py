"""The no-I/O rule of pymacvtap.core, checked for real (see pymacvtap/core/__init__.py).

A fresh interpreter (``-S -I``: no site, no environment, nothing preloaded but the bare
minimum) imports every module of the package and runs an engine with a few frames; then

1. none of the I/O modules (sockets, files, clocks, selectors, processes, threads, signals,
   entropy) may have been loaded by doing so, and
2. because ``time`` and ``posix`` (what ``os`` functions come from) are already loaded by
   the interpreter itself even with ``-S``, no attribute of any module of the package may
   be such a module or an object defined in one (``from time import monotonic``,
   ``from os import urandom``).

Finally, ``pkgutil`` (imported only after the clean phase, as it loads ``os`` itself) lists
the package again so a module cannot escape the check.  A static pass also refuses an I/O
import hidden inside a function.  The checker is shown to catch each kind of violation on
temporary packages.  tests/virtio/test_no_io.py runs the same checker on ``pymacvtap.virtio``.
"""

from __future__ import annotations

import ast
import pkgutil
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import pymacvtap.core

REPO = Path(__file__).resolve().parents[2]
CORE_DIR = Path(pymacvtap.core.__file__).parent

FORBIDDEN = (
    "socket",
    "os",
    "select",
    "time",
    "asyncio",
    "mmap",
    "fcntl",
    "selectors",
    "subprocess",
    "threading",
    "signal",
    "random",
)
# Where the objects of those modules really live (os.urandom.__module__ == "posix", ...).
BACKENDS = (
    "posix",
    "posixpath",
    "genericpath",
    "_socket",
    "_asyncio",
    "_posixsubprocess",
    "_thread",
    "_signal",
    "_random",
)

CHECKER = r"""
import sys

path, package, exercise, listed, forbidden, backends = sys.argv[1:7]
forbidden = set(forbidden.split(","))
origins = forbidden | set(backends.split(","))
listed = [name for name in listed.split(",") if name]
sys.path.insert(0, path)
problems = []

# -- phase 1: a clean import of every module, and an engine at work ------------------------
before = set(sys.modules)
checked = []
for name in [package, *listed]:
    __import__(name)
    checked.append(name)
if exercise not in ("0", "1"):  # code putting another package to work
    exec(exercise, {"package": sys.modules[package]})
if exercise == "1":
    core = sys.modules[package]
    engine = core.Engine(lambda n: bytes(range(1, n + 1)))
    port = engine.add_lower("eth0", bytes.fromhex("525400000001"))
    a = engine.add_endpoint("a", "eth0", core.Mode.BRIDGE, bytes.fromhex("020000000001"), up=True)
    b = engine.add_endpoint("b", "eth0", core.Mode.BRIDGE, bytes.fromhex("020000000002"), up=True)
    engine.add_endpoint("c", "eth0", core.Mode.VEPA, up=True)  # a random address
    frame = core.Frame(b"\xff" * 6 + a.mac + b"\x08\x00" + bytes(46))
    d = engine.from_endpoint(a, frame)
    assert d.receivers == [b] and list(port.tx_queue) == [frame], d
    outside = bytes.fromhex("5254000000ee")
    d = engine.from_lower(port, core.Frame(b"\xff" * 6 + outside + b"\x08\x00" + bytes(46)))
    engine.process_broadcasts()
    assert len(b.rx_queue) == 2, d
    engine.from_lower(port, core.Frame(b"\x00" * 5))
    engine.remove_lower("eth0")
    if package + ".macnat" in sys.modules:
        # Addresses, announcements and MAC translation at work too (SPEC 9).
        addresses = sys.modules[package + ".addresses"]
        announce = sys.modules[package + ".announce"]
        macnat = sys.modules[package + ".macnat"]
        book = addresses.AddressBook()
        nat = macnat.MacNat(bytes.fromhex("525400000001"), book)
        nat.add_endpoint("a", a.mac)
        ipv4, ipv6 = bytes([10, 0, 0, 2]), bytes.fromhex("fe80" + "00" * 13 + "02")
        for sent in announce.announcement(a.mac, [ipv4], [ipv6]):
            assert isinstance(nat.translate_out("a", sent, 1.0), bytes)
        reply = announce.gratuitous_arp(outside, bytes([10, 0, 0, 9]))
        inbound = nat.classify_in(bytes.fromhex("525400000001") + reply[6:], 1.0)
        assert book.as_list("a", 1.0) and inbound is None, inbound
        schedule = announce.AnnounceSchedule(0.0)
        assert schedule.due(0.0) and schedule.next_event(0.0) == 0.05
loaded = sorted(m for m in set(sys.modules) - before if m.split(".")[0] in forbidden)
problems += [f"loads module {m}" for m in loaded]

def origin_of(value):
    if isinstance(value, type(sys)):
        return value.__name__
    for candidate in (getattr(value, "__module__", None), getattr(type(value), "__module__", None)):
        if isinstance(candidate, str) and candidate.split(".")[0] in origins:
            return candidate
    return None

ours = sorted(m for m in sys.modules if m == package or m.startswith(package + "."))
for name in ours:
    for attr, value in sorted(vars(sys.modules[name]).items()):
        try:
            where = origin_of(value)
        except Exception:
            continue
        if where is not None and where.split(".")[0] in origins:
            problems.append(f"{name}.{attr} comes from {where}")

# -- phase 2: pkgutil (which loads os itself) must find nothing that was not checked --------
import pkgutil

found = [i.name for i in pkgutil.walk_packages(sys.modules[package].__path__, package + ".")]
problems += [f"module {m} was not checked" for m in found if m not in checked]
print("\n".join(problems))
sys.exit(1 if problems else 0)
"""


def submodules(directory: Path, package: str) -> list[str]:
    """Every module under ``directory``, as pkgutil sees it (subpackages too)."""
    return sorted(i.name for i in pkgutil.walk_packages([str(directory)], package + "."))


def run_checker(
    path: Path, package: str, modules: list[str], exercise: bool | str
) -> subprocess.CompletedProcess[str]:
    """Check ``modules`` of ``package`` after an engine at work (True) or ``exercise`` code."""
    if isinstance(exercise, bool):
        exercise = "1" if exercise else "0"
    return subprocess.run(
        [
            sys.executable,
            "-S",
            "-I",
            "-c",
            CHECKER,
            str(path),
            package,
            exercise,
            ",".join(modules),
            ",".join(FORBIDDEN),
            ",".join(BACKENDS),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def io_imports(source: str, filename: str) -> list[str]:
    """Imports of forbidden modules anywhere in a module, ``if TYPE_CHECKING:`` blocks aside."""
    tree = ast.parse(source, filename)
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [
            f"{filename}:{node.lineno} imports {n}"
            for n in names
            if n.split(".")[0] in FORBIDDEN + BACKENDS
        ]
    return found


def make_package(root: Path, name: str, files: dict[str, str]) -> Path:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for filename, text in files.items():
        (pkg / filename).write_text(textwrap.dedent(text))
    return root


# -- the real package ---------------------------------------------------------------------


def test_core_modules_are_all_found() -> None:
    modules = submodules(CORE_DIR, "pymacvtap.core")
    for expected in (
        "engine",
        "port",
        "frame",
        "stats",
        "mac",
        "modes",
        "headers",
        "addresses",
        "announce",
        "macnat",
    ):
        assert f"pymacvtap.core.{expected}" in modules


def test_core_does_no_io() -> None:
    result = run_checker(REPO, "pymacvtap.core", submodules(CORE_DIR, "pymacvtap.core"), True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_core_has_no_io_import_even_inside_functions() -> None:
    problems = []
    for path in sorted(CORE_DIR.rglob("*.py")):
        problems += io_imports(path.read_text(), str(path.relative_to(REPO)))
    assert problems == []


# -- the checker catches what it must -------------------------------------------------------


def check_fake(tmp_path: Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    root = make_package(tmp_path, "fakecore", files)
    return run_checker(root, "fakecore", submodules(root / "fakecore", "fakecore"), False)


def test_checker_passes_a_clean_package(tmp_path: Path) -> None:
    result = check_fake(
        tmp_path,
        {
            "clean.py": """
                from __future__ import annotations
                import struct
                from collections import deque
                TYPE_CHECKING = False
                if TYPE_CHECKING:
                    import mmap
                QUEUE = deque()
                HEADER = struct.Struct("<H")
            """
        },
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("source", "reported"),
    [
        ("import os\n", ["loads module os", "fakecore.bad.os comes from os"]),
        ("from os import urandom\n", ["loads module os", "fakecore.bad.urandom comes from posix"]),
        # time is preloaded by the interpreter: only the attribute check can see this one.
        ("from time import monotonic\n", ["fakecore.bad.monotonic comes from time"]),
        ("import time\n", ["fakecore.bad.time comes from time"]),
        ("import socket\n", ["loads module socket", "fakecore.bad.socket comes from socket"]),
        ("import selectors\n", ["loads module selectors"]),
        ("from random import Random\nR = Random()\n", ["loads module random", "fakecore.bad.R"]),
        ("import threading\nLOCK = threading.Lock()\n", ["loads module threading"]),
    ],
)
def test_checker_catches_io_imports(tmp_path: Path, source: str, reported: list[str]) -> None:
    result = check_fake(tmp_path, {"bad.py": source})
    assert result.returncode == 1, result.stdout + result.stderr
    for text in reported:
        assert text in result.stdout, result.stdout


@pytest.mark.parametrize(
    ("line", "reported"),
    [
        ("import os", "loads module os"),
        ("from time import monotonic", "pymacvtap.core.engine.monotonic comes from time"),
    ],
)
def test_checker_catches_io_added_to_the_real_engine(
    tmp_path: Path, line: str, reported: str
) -> None:
    # A copy of the real package with one I/O import added to engine.py must fail.
    shutil.copytree(
        REPO / "pymacvtap", tmp_path / "pymacvtap", ignore=shutil.ignore_patterns("__pycache__")
    )
    engine_py = tmp_path / "pymacvtap" / "core" / "engine.py"
    engine_py.write_text(engine_py.read_text() + f"\n{line}\n")
    modules = submodules(tmp_path / "pymacvtap" / "core", "pymacvtap.core")
    result = run_checker(tmp_path, "pymacvtap.core", modules, True)
    assert result.returncode == 1, result.stdout + result.stderr
    assert reported in result.stdout
    assert io_imports(engine_py.read_text(), "engine.py") != []


def test_checker_catches_a_module_left_out_of_the_list(tmp_path: Path) -> None:
    root = make_package(tmp_path, "fakecore", {"a.py": "X = 1\n", "hidden.py": "import os\n"})
    result = run_checker(root, "fakecore", ["fakecore.a"], False)
    assert result.returncode == 1
    assert "module fakecore.hidden was not checked" in result.stdout


def test_static_pass_catches_an_import_inside_a_function() -> None:
    source = textwrap.dedent(
        """
        TYPE_CHECKING = False
        if TYPE_CHECKING:
            import mmap
        def now():
            from time import monotonic
            return monotonic()
        def lazy():
            import os.path
        """
    )
    assert io_imports(source, "m.py") == ["m.py:6 imports time", "m.py:9 imports os.path"]
