"""What the vhost-user device asks the I/O layer to do: the device's only way out.

The device (:mod:`pymacvtap.virtio.device`) queues these as it handles messages and moves
frames; the I/O layer takes them in order with ``Device.take_actions()`` and carries them
out.  Each is something the device cannot do without a syscall.

Plain slotted classes rather than dataclasses: ``dataclasses`` imports ``os`` (through
``inspect``), which the no-I/O rule of this package forbids loading.
"""

from __future__ import annotations

from pymacvtap.virtio.memory import RegionSpec


class _Action:
    """Compared and shown by the fields named in ``__slots__`` (for tests and logs)."""

    __slots__: tuple[str, ...] = ()

    def _fields(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((type(self), self._fields()))

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Reply(_Action):
    """Send this reply to the front-end (``messages.encode_reply``)."""

    __slots__ = ("payload", "request")

    def __init__(self, request: int, payload: bytes) -> None:
        self.request = request
        self.payload = payload


class Notify(_Action):
    """Write 1 to an eventfd: ``call`` interrupts the guest for ``queue``, ``err`` tells the
    front-end the ring broke, ``kick`` wakes ourselves to look at the ring again."""

    __slots__ = ("fd", "queue", "why")

    def __init__(self, fd: int, queue: int, why: str) -> None:
        self.fd = fd
        self.queue = queue
        self.why = why  # "call" | "err" | "kick"


class Close(_Action):
    """The device let go of this fd (a notifier replaced, a ring stopped, a session over).

    Close it once the daemon has forgotten it: a kick fd is polled until
    :data:`KICKS_CHANGED` is acted on.
    """

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd


class MapMemory(_Action):
    """Map each region's fd (``spec.length`` bytes from its start, shared, read-write), then
    answer with ``Device.memory_mapped(buffers)`` or ``Device.memory_refused(reason)``."""

    __slots__ = ("regions",)

    def __init__(self, regions: tuple[RegionSpec, ...]) -> None:
        self.regions = regions


class Fault(_Action):
    """The front-end or the guest did something wrong: count it under ``kind``, log it."""

    __slots__ = ("kind", "message")

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        self.message = message


class SendRarp(_Action):
    """Announce the guest: broadcast a RARP from ``mac`` (VHOST_USER_SEND_RARP, which QEMU
    sends after a live migration or QMP ``announce-self`` when the guest cannot announce
    itself, having no VIRTIO_NET_F_GUEST_ANNOUNCE)."""

    __slots__ = ("mac",)

    def __init__(self, mac: bytes) -> None:
        self.mac = mac


class Signal(_Action):
    """A change of state the I/O layer reacts to; one instance of each."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


# The set of kick fds changed: the daemon must poll ``Rings.kick_fds()`` anew.
KICKS_CHANGED = Signal("KICKS_CHANGED")
# Something changed that may let a blocked write progress (buffers, rings, features).
WAKE_WRITER = Signal("WAKE_WRITER")

Action = Reply | Notify | Close | MapMemory | Fault | SendRarp | Signal
