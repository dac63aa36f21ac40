"""The contract between the daemon and a frontend: everything the daemon asks of one."""

from __future__ import annotations

import errno
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Protocol

from pymacvtap.core.frame import Frame

# How many frames one write() call may push before yielding to the loop.
WRITE_BUDGET = 256

QueueStats = Sequence[Mapping[str, int | str]]


class Frontend(Protocol):
    """One endpoint's connection to its user (a netdev, a VM).

    The daemon polls ``readable_fds()``, calls ``read(fd, budget)`` when one is
    ready and hands the frames to the engine; it calls ``write(queue)`` with the
    endpoint's receive queue after each batch.  ``write`` pops what it could
    send and returns the fd to wait on for writability when the peer is full
    (backpressure instead of spinning), or None when the queue is drained.

    ``level_triggered``: the fds stay readable while frames are left unread, so
    the daemon may read a lone frame without the extra read that would find the
    fd empty.  (False for a frontend whose wake-up is consumed by reading, like a
    vhost-user kick eventfd: a frame left behind would wait for the next kick.)

    Frames the engine delivered that the frontend then could not hand over
    (no VM connected, device down, a broken offload header) are counted in
    ``dropped``; malformed input from the user (bad framing) in ``errors``.
    The daemon adds them to the endpoint's rx_dropped and tx_errors.  Frames the
    user sent that were lost before the daemon could read them (a full socket
    buffer) are ``missed``, added to tx_dropped.

    The rest have defaults in :class:`FrontendDefaults` for the frontends they
    do not concern: ``set_carrier`` (a netdev shows its lower's carrier),
    ``open_queue_fds`` (a VM's tap hands out queue fds), ``queue_stats``
    (per-queue counters, for ``link show -s``).
    """

    @property
    def level_triggered(self) -> bool: ...

    @property
    def dropped(self) -> int: ...

    @property
    def errors(self) -> int: ...

    @property
    def missed(self) -> int: ...

    def readable_fds(self) -> list[int]: ...

    def read(self, fd: int, budget: int) -> list[Frame]: ...

    def write(self, queue: deque[Frame]) -> int | None: ...

    def set_carrier(self, on: bool) -> None: ...

    def open_queue_fds(self, count: int, owner: int | None, group: int | None) -> list[int]: ...

    def queue_stats(self) -> QueueStats | None: ...

    def moved(self, ifname: str, netns: str | None) -> None: ...

    def close(self, *, delete: bool) -> None: ...


class FrontendDefaults:
    """What a frontend that has no carrier, no queue fds and no queue counters answers."""

    level_triggered = False

    @property
    def missed(self) -> int:
        """Nothing is lost unseen: the user's writes wait or fail where it can see them."""
        return 0

    def set_carrier(self, on: bool) -> None:
        """No carrier to show: only a netdev has one (a VM's port shows none)."""

    def open_queue_fds(self, count: int, owner: int | None, group: int | None) -> list[int]:
        raise OSError(errno.EOPNOTSUPP, "this frontend has no queue fds to hand out")

    def queue_stats(self) -> QueueStats | None:
        return None

    def moved(self, ifname: str, netns: str | None) -> None:
        """Its netdev was renamed or moved by someone else (a socket frontend has none)."""
