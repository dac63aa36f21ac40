"""vhost-user messages on the wire: request codes, framing, payloads, replies.

A message is a 12-byte header (request, flags, payload size; native byte order, as both ends
share a host) and a payload, with fds passed beside the bytes (SCM_RIGHTS).  The front-end is
untrusted (SPEC 6): a header that lies about its version or size is refused before its payload
is read, and a payload is decoded only through the helpers here, which raise :class:`Refused`
instead of ``struct.error``.

The names and numbers are those of QEMU's docs/interop/vhost-user.rst.
"""

from __future__ import annotations

import struct

# -- requests (front-end → back-end) -------------------------------------------------------------

GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_LOG_BASE = 6
SET_LOG_FD = 7
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
SEND_RARP = 19  # payload: a u64 whose first 6 bytes are the guest's MAC
RESET_DEVICE = 34

# -- header flags and payload bits ---------------------------------------------------------------

VERSION = 1
F_REPLY = 0x4
F_NEED_REPLY = 0x8
VRING_NOFD = 0x100
VRING_IDX_MASK = 0xFF

HDR = struct.Struct("=III")  # request, flags, size
U64 = struct.Struct("=Q")
STATE = struct.Struct("=II")  # index, num
ADDR = struct.Struct("=IIQQQQ")  # index, flags, desc, used, avail, log

MAX_REGIONS = 8  # regions in a memory table: the most fds one message may carry
MAX_FDS = MAX_REGIONS
MAX_PAYLOAD = 4096  # larger than any message we take (a memory table is 264 bytes)

# What the fds of a request are for, so the I/O layer knows what to find out about them
# before the device sees the message (see :class:`Fd`).  Fds of other requests are refused.
MEMORY = "memory"
NOTIFIER = "notifier"
FD_ROLES = {
    SET_MEM_TABLE: MEMORY,
    SET_VRING_KICK: NOTIFIER,
    SET_VRING_CALL: NOTIFIER,
    SET_VRING_ERR: NOTIFIER,
}


class Refused(Exception):
    """A message the back-end will not act on; ``kind`` is the error counter it goes to."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Fd:
    """An fd that came with a message, and what the I/O layer found out about it.

    The device never touches the fd itself; it decides from these facts.  ``memory_size``
    is the size of a regular file (guest memory), None for anything else; ``notifier_error``
    says why the fd cannot be a kick/call/err notifier (only eventfds can), None when it can.
    """

    __slots__ = ("memory_size", "notifier_error", "number")

    def __init__(
        self,
        number: int,
        memory_size: int | None = None,
        notifier_error: str | None = "not inspected",
    ) -> None:
        self.number = number
        self.memory_size = memory_size
        self.notifier_error = notifier_error


class Message:
    """One whole message.  The device takes the fds it keeps out of ``fds``; the rest stay
    there for the caller to close."""

    __slots__ = ("fds", "flags", "payload", "request")

    def __init__(
        self, request: int, flags: int, payload: bytes, fds: list[Fd] | None = None
    ) -> None:
        self.request = request
        self.flags = flags
        self.payload = payload
        self.fds: list[Fd] = [] if fds is None else fds

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & F_NEED_REPLY)


class Received:
    """A whole message as read from the stream, its fds as numbers not yet inspected."""

    __slots__ = ("fds", "flags", "payload", "request")

    def __init__(self, request: int, flags: int, payload: bytes, fds: list[int]) -> None:
        self.request = request
        self.flags = flags
        self.payload = payload
        self.fds = fds


class MessageReader:
    """Framing of the message stream: ask :meth:`want` bytes, :meth:`feed` what came.

    Reading no further than the message at hand (its header, then its payload) keeps the
    fds that came with the next message out of this one.
    """

    __slots__ = ("_buf", "_size", "fds")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._size = 0
        self.fds: list[int] = []  # received with a message not yet whole: the caller's to close

    def want(self) -> int:
        have = len(self._buf)
        return HDR.size - have if have < HDR.size else HDR.size + self._size - have

    def feed(self, data: bytes, fds: list[int]) -> Received | None:
        """Take what one read brought; the message when it is whole.

        Raises :class:`Refused` on a header with another version or a payload over
        MAX_PAYLOAD: the stream cannot be trusted after that.
        """
        if len(data) > self.want():
            raise ValueError(f"fed {len(data)} bytes where {self.want()} were wanted")
        self.fds.extend(fds)
        buf = self._buf
        have = len(buf)
        buf += data
        if have < HDR.size <= len(buf):
            request, flags, size = HDR.unpack_from(buf)
            if flags & 3 != VERSION or size > MAX_PAYLOAD:
                raise Refused(
                    "protocol",
                    f"bad message header (request {request}, flags {flags:#x}, size {size})",
                )
            self._size = size
        if len(buf) < HDR.size or len(buf) != HDR.size + self._size:
            return None
        request, flags, _size = HDR.unpack_from(buf)
        received = Received(request, flags, bytes(buf[HDR.size :]), self.fds)
        self._buf = bytearray()
        self._size = 0
        self.fds = []
        return received


def encode_reply(request: int, payload: bytes) -> bytes:
    return HDR.pack(request, VERSION | F_REPLY, len(payload)) + payload


# -- payloads ----------------------------------------------------------------------------------


def u64(payload: bytes) -> int:
    if len(payload) < U64.size:
        raise Refused("protocol", f"u64 payload of {len(payload)} bytes")
    value: int = U64.unpack_from(payload)[0]
    return value


def vring_state(payload: bytes) -> tuple[int, int]:
    """(queue index, num) of SET_VRING_NUM/BASE/ENABLE and GET_VRING_BASE."""
    if len(payload) < STATE.size:
        raise Refused("protocol", f"vring state of {len(payload)} bytes")
    index, num = STATE.unpack_from(payload)
    return index, num


def vring_addr(payload: bytes) -> tuple[int, int, int, int]:
    """(queue index, desc, used, avail) user addresses of SET_VRING_ADDR."""
    if len(payload) < ADDR.size:
        raise Refused("protocol", f"vring address of {len(payload)} bytes")
    index, _flags, desc, used, avail, _log = ADDR.unpack_from(payload)
    return index, desc, used, avail


def vring_fd(payload: bytes) -> tuple[int, bool]:
    """(queue index, whether an fd comes) of SET_VRING_KICK/CALL/ERR."""
    value = u64(payload)
    if value & ~(VRING_IDX_MASK | VRING_NOFD):
        raise Refused("protocol", f"vring fd payload {value:#x}")
    return value & VRING_IDX_MASK, not value & VRING_NOFD
