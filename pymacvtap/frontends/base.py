"""What the daemon needs from any frontend: fds to read, a queue to write out, close."""

from __future__ import annotations

from collections import deque
from typing import Protocol

from pymacvtap.core.frame import Frame


class Frontend(Protocol):
    """One endpoint's connection to its user (a netdev, a VM).

    The daemon polls ``readable_fds()``, calls ``read(fd, budget)`` when one is
    ready and hands the frames to the engine; it calls ``write(queue)`` with the
    endpoint's receive queue after each batch.  ``write`` pops what it could
    send and returns the fd to wait on for writability when the peer is full
    (backpressure instead of spinning), or None when the queue is drained.

    A frontend whose fds stay readable while frames are left unread may say
    so with a class attribute ``level_triggered = True``; the daemon then reads
    a lone frame without the extra read that would find the fd empty.  (Not
    for a frontend whose wake-up is consumed by reading, like a vhost-user
    kick eventfd: a frame left behind would wait for the next kick.)

    Frames the engine delivered that the frontend then could not hand over
    (no VM connected, device down, a broken offload header) are counted in
    ``dropped``; malformed input from the user (bad framing) in ``errors``.
    The daemon adds them to the endpoint's rx_dropped and tx_errors.
    """

    @property
    def dropped(self) -> int: ...

    @property
    def errors(self) -> int: ...

    def readable_fds(self) -> list[int]: ...

    def read(self, fd: int, budget: int) -> list[Frame]: ...

    def write(self, queue: deque[Frame]) -> int | None: ...

    def close(self, *, delete: bool) -> None: ...
