"""What the vhost-user device asks the I/O layer to do: the device's only way out.

The device (:mod:`pymacvtap.virtio.device`) queues these as it handles messages and moves
frames; the I/O layer takes them in order with ``Device.take_actions()`` and carries them
out.  Each is something the device cannot do without a syscall.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymacvtap.virtio.memory import RegionSpec


@dataclass(frozen=True, slots=True)
class Reply:
    """Send this reply to the front-end (``messages.encode_reply``)."""

    request: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Notify:
    """Write 1 to an eventfd: ``call`` interrupts the guest for ``queue``, ``err`` tells the
    front-end the ring broke, ``kick`` wakes ourselves to look at the ring again."""

    fd: int
    queue: int
    why: str  # "call" | "err" | "kick"


@dataclass(frozen=True, slots=True)
class Close:
    """The device let go of this fd (a notifier replaced, a ring stopped, a session over).

    Close it once the daemon has forgotten it: a kick fd is polled until
    :data:`KICKS_CHANGED` is acted on.
    """

    fd: int


@dataclass(frozen=True, slots=True)
class MapMemory:
    """Map each region's fd (``spec.length`` bytes, shared, read-write), then answer with
    ``Device.memory_mapped(buffers)`` or ``Device.memory_refused(reason)``."""

    regions: tuple[RegionSpec, ...]


@dataclass(frozen=True, slots=True)
class Fault:
    """The front-end or the guest did something wrong: count it under ``kind``, log it."""

    kind: str
    message: str


@dataclass(frozen=True, slots=True)
class _Signal:
    name: str

    def __repr__(self) -> str:
        return self.name


# The set of kick fds changed: the daemon must poll ``Device.kick_fds()`` anew.
KICKS_CHANGED = _Signal("KICKS_CHANGED")
# Something changed that may let a blocked write progress (buffers, rings, features).
WAKE_WRITER = _Signal("WAKE_WRITER")

Action = Reply | Notify | Close | MapMemory | Fault | _Signal
