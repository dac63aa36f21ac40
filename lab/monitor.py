"""A daemon's events, collected in the background from the moment the subscription exists.

Tests that start ``pymacvtap monitor`` as a process cannot tell when it has subscribed,
and an event emitted before that is lost to them; a fixed sleep only makes that rarer.
This subscribes through the control client, which returns once the daemon has said yes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pymacvtap.control.client import Client, ClientError


class EventMonitor:
    """Every event the daemon at ``socket`` emits after construction, in order."""

    def __init__(self, socket: Path | str) -> None:
        self._client = Client(str(socket), timeout=10)
        self._stream = self._client.monitor()
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for event in self._stream:
                with self._lock:
                    self._events.append(event)
        except (ClientError, OSError):
            pass  # closed by close(), or the daemon went away

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._events)

    def wait_event(
        self, pred: Callable[[dict[str, Any]], bool], timeout: float = 8.0
    ) -> dict[str, Any]:
        """The first event ``pred`` accepts; AssertionError listing all seen if none comes."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events():
                if pred(event):
                    return event
            if time.monotonic() > deadline:
                raise AssertionError(f"no such monitor event in {self.events()}")
            time.sleep(0.02)

    def close(self) -> None:
        # shutdown, not just close: it wakes the reader thread blocked in recvmsg.
        with contextlib.suppress(OSError):  # the daemon may have closed it first
            self._client.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._client.close()

    def __enter__(self) -> EventMonitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
