"""The daemon's one event loop: epoll over raw fds, plus timers.

Not asyncio: the data path wants "wake up, drain every ready fd in batches,
push the batch through the engine, flush" (Snabb's breath), and per-callback
Task/Future machinery would cost more than the forwarding itself.  The loop
owns the clock; nothing below it reads one.
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import select
import signal
import socket
import time
from collections.abc import Callable

log = logging.getLogger("pymacvtap.loop")

Callback = Callable[[], None]
# An after-poll hook returns True while it has work left (the next poll won't sleep).
Hook = Callable[[], bool]


class Timer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """Readers/writers on fds, timers, signals and idle hooks, in one thread."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._after_poll: list[Hook] = []
        self._running = False
        self._signal_handlers: dict[int, Callback] = {}
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._registered: set[int] = set()
        # Seconds to keep polling without sleeping after activity (0: never spin).
        self.spin = 0.0
        # Polls so far: lets a reader tell a steady stream (ready on consecutive
        # polls) from a lone frame, without reading the clock.
        self.iteration = 0

    # -- fds -------------------------------------------------------------------

    def _update(self, fd: int) -> None:
        mask = (select.EPOLLIN if fd in self._readers else 0) | (
            select.EPOLLOUT if fd in self._writers else 0
        )
        registered = self._registered
        if mask:
            if fd in registered:
                self._epoll.modify(fd, mask)
            else:
                self._epoll.register(fd, mask)
                registered.add(fd)
        elif fd in registered:
            registered.discard(fd)
            try:
                self._epoll.unregister(fd)
            except OSError as exc:
                # Closed already: the kernel dropped it from the epoll set itself.
                if exc.errno not in (errno.EBADF, errno.ENOENT):
                    raise

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._readers[fd] = callback
        self._update(fd)

    def remove_reader(self, fd: int) -> None:
        if self._readers.pop(fd, None) is not None:
            self._update(fd)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._writers[fd] = callback
        self._update(fd)

    def remove_writer(self, fd: int) -> None:
        if self._writers.pop(fd, None) is not None:
            self._update(fd)

    def forget(self, fd: int) -> None:
        """Drop every interest in ``fd`` (call before closing it)."""
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)
        self._update(fd)

    # -- time ------------------------------------------------------------------

    @staticmethod
    def time() -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callback) -> Timer:
        timer = Timer(self.time() + delay, callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def after_poll(self, callback: Hook) -> None:
        """Run ``callback`` once per loop iteration, after the ready fds were served.

        This is where batched work (flushing queues built up by the readers)
        belongs: one flush per wake-up instead of one per frame.  A hook that
        returns True has work left over and keeps the next poll from sleeping.
        """
        self._after_poll.append(callback)

    # -- signals -----------------------------------------------------------------

    def add_signal_handler(self, signum: int, callback: Callback) -> None:
        """Run ``callback`` in the loop (not in the signal handler) when ``signum`` arrives."""
        if self._wake_r is None:
            self._wake_r, self._wake_w = socket.socketpair()
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            signal.set_wakeup_fd(self._wake_w.fileno(), warn_on_full_buffer=False)
            self.add_reader(self._wake_r.fileno(), self._read_signals)
        self._signal_handlers[signum] = callback
        signal.signal(signum, lambda _s, _f: None)

    def _read_signals(self) -> None:
        assert self._wake_r is not None
        try:
            data = self._wake_r.recv(512)
        except BlockingIOError:
            return
        for signum in data:
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                handler()

    # -- running -------------------------------------------------------------------

    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        self._running = True
        epoll = self._epoll
        readers = self._readers
        writers = self._writers
        timers = self._timers
        more = False
        spin = self.spin
        monotonic = time.monotonic
        busy_until = 0.0
        while self._running:
            timeout = -1.0
            if more:
                timeout = 0.0
            elif timers:
                timeout = max(0.0, timers[0][0] - monotonic())
            if spin and timeout != 0.0 and monotonic() < busy_until:
                # Traffic just flowed: poll without sleeping for a moment, since
                # the next frame of a conversation usually follows within
                # microseconds and a sleep/wake-up costs tens of them.
                timeout = 0.0
            try:
                events = epoll.poll(timeout)
            except InterruptedError:
                events = []
            self.iteration += 1
            if spin and events:
                busy_until = monotonic() + spin
            try:
                for fd, mask in events:
                    if mask & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                        cb = readers.get(fd)
                        if cb is not None:
                            cb()
                    if mask & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                        cb = writers.get(fd)
                        if cb is not None:
                            cb()
            except Exception:
                # A bug in one handler must not take every endpoint down with it
                # (SPEC 6): log it and serve the others.
                log.exception("event handler failed")
            more = False
            for hook in self._after_poll:
                try:
                    if hook():
                        more = True
                except Exception:
                    log.exception("after-poll hook failed")
            if timers:
                now = self.time()
                while timers and timers[0][0] <= now:
                    _, _, timer = heapq.heappop(timers)
                    if not timer.cancelled:
                        try:
                            timer.callback()
                        except Exception:
                            log.exception("timer callback failed")

    def close(self) -> None:
        if self._wake_r is not None:
            signal.set_wakeup_fd(-1)
            self._wake_r.close()
            assert self._wake_w is not None
            self._wake_w.close()
        self._epoll.close()
