"""The software path's writer that waits for a full endpoint, when the endpoint's fds change.

A vhost-user endpoint waits on a gate (an eventfd that turns writable when the guest adds
receive buffers), never one of the fds it reads.  attach_endpoint runs again whenever the
frontend's fds change (QEMU sends a new kick fd, a queue pair starts); it used to drop the
wait without writing again, and the frames already queued then sat until the next frame
for the endpoint came, however many buffers the guest added.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator
from types import SimpleNamespace

import pytest

from pymacvtap.core.frame import Frame
from pymacvtap.daemon.datapath import SoftwarePath
from pymacvtap.io.loop import Loop


class GatedFrontend:
    """A frontend like vhost-user's: kick fds to read; a gate to wait on while full."""

    level_triggered = False

    def __init__(self) -> None:
        self.kicks = [os.eventfd(0, os.EFD_NONBLOCK)]
        self.gate = os.eventfd(0, os.EFD_NONBLOCK)
        os.eventfd_write(self.gate, 0xFFFFFFFFFFFFFFFE)  # at its maximum: not writable
        self.buffers = 0
        self.written: list[Frame] = []

    def readable_fds(self) -> list[int]:
        return list(self.kicks)

    def write(self, queue: deque[Frame]) -> int | None:
        while queue and self.buffers:
            self.written.append(queue.popleft())
            self.buffers -= 1
        return self.gate if queue else None

    def guest_adds_buffers(self, n: int) -> None:
        self.buffers += n
        os.eventfd_read(self.gate)  # the gate opens (writable)

    def close(self) -> None:
        for fd in [*self.kicks, self.gate]:
            os.close(fd)


class Endpoint:
    """The engine's endpoint as the software path uses it (hashable, as in port.ready)."""

    name = "vm"

    def __init__(self, port: object) -> None:
        self.port = port
        self.rx_queue: deque[Frame] = deque()


@pytest.fixture
def frontend() -> Iterator[GatedFrontend]:
    fe = GatedFrontend()
    yield fe
    fe.close()


def test_frames_waiting_for_a_full_endpoint_go_once_it_drains_after_its_fds_changed(
    frontend: GatedFrontend,
) -> None:
    loop = Loop()
    path = SoftwarePath(loop)
    port = SimpleNamespace(bc_queue=[], ready={}, tx_queue=[])
    path.lowers["low0"] = SimpleNamespace(port=port, blocked=False)
    ep = Endpoint(port)
    rt = SimpleNamespace(
        cfg=SimpleNamespace(name="vm"), ep=ep, frontend=frontend, fds=set(), blocked=None,
        captures=None,
    )  # fmt: skip
    path.attach_endpoint(rt)  # type: ignore[arg-type]
    ep.rx_queue.extend(Frame(bytes(60)) for _ in range(3))
    port.ready[ep] = None
    path.breathe()
    assert rt.blocked == frontend.gate  # full: waiting for the guest's buffers
    frontend.kicks.append(os.eventfd(0, os.EFD_NONBLOCK))  # e.g. SET_VRING_KICK again
    path.attach_endpoint(rt)  # type: ignore[arg-type]
    frontend.guest_adds_buffers(8)
    # What the loop does: writers whose fd is writable, then the after-poll hooks.
    for fd, _mask in loop._epoll.poll(0):
        writer = loop._writers.get(fd)
        if writer is not None:
            writer()
    path.breathe()
    assert len(frontend.written) == 3 and not ep.rx_queue
    loop.close()
