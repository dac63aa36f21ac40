"""One daemon per state dir: an flock on ``STATE_DIR/lock``, held for the daemon's life.

Two daemons on one state dir each save their own idea of the endpoints, and the
second one's restore, failing on the first one's netdevs, used to save a snapshot
with none (issue 16).  So the lock is taken before the daemon touches anything
(state, socket, netdevs); the holder writes its PID and control socket into the
file, so a second daemon can say whom it is refused by.  The kernel drops an
flock when its holder dies, even by SIGKILL: a stale lock file is never in the way.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

LOCK_FILE = "lock"


class StateDirBusy(Exception):
    """Another daemon holds the state dir; the message names it."""


class StateDirLock:
    """The held lock; :meth:`release` (or process exit) lets the next daemon in."""

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def acquire(cls, state_dir: str, socket_path: str) -> StateDirLock:
        """Take the state dir's lock, or raise :class:`StateDirBusy` at once (no waiting)."""
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        path = os.path.join(state_dir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise StateDirBusy(
                f"state dir {state_dir} is in use by another daemon ({holder}); "
                "one daemon per state dir (give this one its own --state-dir)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # Who holds it, for the message of the next one; a full disk must not keep the
        # daemon from starting (the lock is held all the same).
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket_path}\n".encode(), 0)
        return cls(fd, path)

    def release(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing the last fd of the file drops the flock
            self.fd = -1


def _read_holder(fd: int) -> str:
    """``pid N, socket PATH`` as the holder wrote it; its words if the file is odd."""
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    pid, _, socket_path = text.partition(" ")
    if not pid.isdigit():
        return "PID unknown: it has not written the lock file yet"
    return f"pid {pid}, socket {socket_path or 'unknown'}"
