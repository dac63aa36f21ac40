"""Run a real ``pymacvtap daemon`` in a lab namespace and drive it with the real CLI.

Used by the integration tests, the benchmark and the demo: the daemon is a
separate process (so SIGKILL/SIGSTOP tests are real), started with
``ip netns exec`` in the namespace of its lowers, with its socket and state
in a private directory.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "pymacvtap"
# Debian's interpreter: readable by every user, unlike a venv inside the checkout.
SYSTEM_PYTHON = "/usr/bin/python3"


@functools.cache
def public_package_copy() -> Path:
    """A world-readable copy of the package, for commands run as another user.

    The checkout may sit where an unprivileged user cannot read (SPEC 8), and
    the client side of pymacvtap (CLI, helper) needs only the standard library,
    so a copy of the package next to Debian's python3 is all such a user needs.
    """
    root = Path(tempfile.mkdtemp(prefix="pymacvtap-public-"))
    atexit.register(shutil.rmtree, root, True)
    shutil.copytree(PACKAGE_DIR, root / "pymacvtap", ignore=shutil.ignore_patterns("__pycache__"))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def as_user_argv(uid: int, gid: int, argv: list[str]) -> list[str]:
    """``argv`` run as ``uid``:``gid`` with no supplementary groups."""
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", *argv]


def wait_until(predicate: Callable[[], object], timeout: float = 5.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


class CliError(RuntimeError):
    def __init__(self, argv: list[str], returncode: int, stderr: str) -> None:
        super().__init__(f"pymacvtap {' '.join(argv)}: exit {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class DaemonProcess:
    """One daemon; ``cli()`` runs the CLI against its socket."""

    def __init__(
        self,
        netns: str,
        workdir: Path,
        *,
        admin_group: str | None = None,
        extra_args: Sequence[str] = (),
        interpreter: Sequence[str] = (),
        announce_rounds: int | None = 0,
        datapath: str | None = None,
    ) -> None:
        """``extra_args`` go to ``pymacvtap daemon`` (``--metrics ...``); ``interpreter``
        options go to Python before ``-m pymacvtap`` (``-m cProfile -o FILE``).

        ``announce_rounds``: the lab's daemon announces nothing unless a test asks (None:
        the daemon's default), as a container's kernel with arp_notify 0 is silent: the
        tests that count frames or compare with kernel macvlan rely on it."""
        self.netns = netns
        self.announce_rounds = announce_rounds
        self.extra_args = list(extra_args)
        # --datapath (auto, ebpf, python); None: $PYMACVTAP_TEST_DATAPATH, else the
        # daemon's default (auto), so a whole suite can be run on either data path.
        self.datapath = datapath or os.environ.get("PYMACVTAP_TEST_DATAPATH")
        self.interpreter = list(interpreter)
        self.workdir = workdir
        # The socket lives in a directory every user may traverse (the test's
        # own tmp dir is 0700) so that refusals come from the daemon, by
        # SO_PEERCRED, and not from the file system.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="pymacvtap-ctl-"))
        self.socket_dir.chmod(0o755)
        self.socket = self.socket_dir / "control.sock"
        self.state_dir = workdir / "state"
        self.log_path = workdir / "daemon.log"
        self.admin_group = admin_group
        self.proc: subprocess.Popen[bytes] | None = None

    # -- life cycle ------------------------------------------------------------------

    def start(self, timeout: float = 15.0) -> None:
        argv = [
            "ip", "netns", "exec", self.netns,
            sys.executable, *self.interpreter, "-m", "pymacvtap", "daemon",
            "--socket", str(self.socket), "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        if self.admin_group:
            argv += ["--admin-group", self.admin_group]
        if self.announce_rounds is not None:
            argv += ["--announce-rounds", str(self.announce_rounds)]
        if self.datapath:
            argv += ["--datapath", self.datapath]
        argv += self.extra_args
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists() and self._answers():
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"daemon not ready after {timeout}s:\n{self.log()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        proc = subprocess.run(
            [sys.executable, "-m", "pymacvtap", "--socket", str(self.socket), "link", "show"],
            capture_output=True,
            check=False,
        )
        return proc.returncode == 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM and wait; returns the exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: nothing is cleaned up by the daemon."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def signal(self, signum: int) -> None:
        """Signal the daemon itself (not the ``ip netns exec`` wrapper, which execs it)."""
        os.kill(self.pid, signum)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # -- the CLI ---------------------------------------------------------------------

    def run_cli(
        self, *args: str, user: tuple[int, int] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The CLI as root, or as ``user`` = (uid, gid) from a world-readable copy."""
        tail = ["-m", "pymacvtap", "--socket", str(self.socket), *args]
        if user is None:
            return subprocess.run(
                [sys.executable, *tail], capture_output=True, text=True, check=False, timeout=30
            )
        env = dict(os.environ, PYTHONPATH=str(public_package_copy()))
        return subprocess.run(
            as_user_argv(user[0], user[1], [SYSTEM_PYTHON, *tail]),
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            env=env,
            cwd="/",
        )

    def cli(self, *args: str) -> str:
        proc = self.run_cli(*args)
        if proc.returncode != 0:
            raise CliError(list(args), proc.returncode, proc.stderr)
        return proc.stdout

    def show(self, name: str | None = None, *, stats: bool = False) -> Any:
        args = ["-j", *(["-s"] if stats else []), "link", "show", *([name] if name else [])]
        data = json.loads(self.cli(*args))
        return data[0] if name else data

    def cleanup(self) -> None:
        """Stop the daemon and remove its socket directory."""
        self.stop()
        shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> DaemonProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
