"""The control protocol: newline-delimited JSON objects over a Unix stream socket.

Sans-I/O, in the manner of h11: a :class:`RequestDecoder` (daemon side) or
:class:`ReplyDecoder` (client side) is fed bytes and hands back parsed
messages, one per line; :func:`encode` turns a message into the bytes to send.
No socket anywhere in this module.

Wire format (``PROTOCOL_VERSION`` 1), one UTF-8 JSON object per line, at most
``MAX_MESSAGE`` bytes without the newline::

    request  {"v": 1, "id": 7, "verb": "link.show", "args": {"name": "vm0", "stats": false}}
    reply    {"v": 1, "id": 7, "ok": true, "result": [...]}
             {"v": 1, "id": 7, "ok": false, "error": {"code": "ENODEV", "message": "..."}}
    event    {"v": 1, "event": {...}}          (after the ok reply to "monitor")

A reply may carry file descriptors (SCM_RIGHTS) for verbs that hand them out
(the coming ``attach``): it then says how many with ``"fds": N``, and the
descriptors travel as ancillary data on the bytes of that reply line.

Error messages in replies are complete sentences for the user, prefixed by what
was asked (``link add vm0: ...``); see :func:`with_prefix`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

PROTOCOL_VERSION = 1
MAX_MESSAGE = 64 * 1024  # bytes in one line, without its newline

VERBS = (
    "link.add",
    "link.set",
    "link.del",
    "link.show",
    "lower.show",
    "attach",
    "capture",
    "monitor",
    "version",
)
MACADDR_OPS = ("add", "del", "set", "flush")
# link set attributes and the JSON type each takes
SET_KEYS: dict[str, type] = {
    "up": bool,
    "address": str,
    "mtu": int,
    "mode": str,
    "spoofchk": bool,
    "macnat": bool,
    "macaddr": dict,
    "announce": bool,
}
_MAX_NAME = 255


class ProtocolError(Exception):
    """A message that cannot be understood.

    ``code`` is the errno name sent back; ``id`` is the request id when it could
    be read (so the reply can still be matched); ``fatal`` means the stream is
    beyond repair (an oversize line) and the connection must be closed.
    """

    def __init__(
        self, message: str, code: str = "EPROTO", *, id: int | None = None, fatal: bool = False
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.id = id
        self.fatal = fatal


@dataclasses.dataclass(frozen=True)
class Request:
    id: int
    verb: str
    args: dict[str, Any]

    @property
    def target(self) -> str:
        """What the request is about, as the user typed it: ``link add vm0``."""
        return describe(self.verb, self.args)


@dataclasses.dataclass(frozen=True)
class Reply:
    id: int | None
    ok: bool
    result: Any = None
    code: str = ""  # errno name when not ok
    message: str = ""
    fds: int = 0  # how many descriptors came with it (SCM_RIGHTS)


@dataclasses.dataclass(frozen=True)
class Event:
    event: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class WithFds:
    """A service result that hands file descriptors to the client.

    The server sends ``fds`` with the reply and closes its copies afterwards.
    """

    result: Any
    fds: list[int]


# -- encoding ------------------------------------------------------------------------


def _dump(obj: dict[str, Any]) -> bytes:
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return data + b"\n"


def encode_request(id: int, verb: str, args: dict[str, Any] | None = None) -> bytes:
    return _dump({"v": PROTOCOL_VERSION, "id": id, "verb": verb, "args": args or {}})


def encode_ok(id: int | None, result: Any, fds: int = 0) -> bytes:
    obj: dict[str, Any] = {"v": PROTOCOL_VERSION, "id": id, "ok": True, "result": result}
    if fds:
        obj["fds"] = fds
    return _dump(obj)


def encode_error(id: int | None, code: str, message: str) -> bytes:
    return _dump(
        {
            "v": PROTOCOL_VERSION,
            "id": id,
            "ok": False,
            "error": {"code": code, "message": message},
        }
    )


def encode_event(event: dict[str, Any]) -> bytes:
    return _dump({"v": PROTOCOL_VERSION, "event": event})


def encode(message: Request | Reply | Event) -> bytes:
    """The line for any message object (tests and tools; the hot paths use the above)."""
    if isinstance(message, Request):
        return encode_request(message.id, message.verb, message.args)
    if isinstance(message, Event):
        return encode_event(message.event)
    if message.ok:
        return encode_ok(message.id, message.result, message.fds)
    return encode_error(message.id, message.code, message.message)


# -- decoding ------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class _LineDecoder:
    """Framing, UTF-8, JSON, object and version checks shared by both sides."""

    def __init__(self, max_size: int = MAX_MESSAGE) -> None:
        self._buf = bytearray()
        self._max = max_size
        self._broken: ProtocolError | None = None
        self._overflow = False

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        """Add received bytes.

        Memory stays bounded: once the unfinished last line is longer than the
        limit it is dropped, and after the complete lines before it have been
        read, reading raises a fatal ProtocolError.
        """
        if self._broken is not None or self._overflow:
            return
        self._buf += data
        start = self._buf.rfind(b"\n") + 1
        if len(self._buf) - start > self._max:
            del self._buf[start:]
            self._overflow = True

    def _fail(self) -> None:
        self._buf.clear()
        self._broken = ProtocolError(
            f"message longer than {self._max} bytes; closing the connection",
            "EMSGSIZE",
            fatal=True,
        )
        raise self._broken

    def _next_object(self) -> dict[str, Any] | None:
        if self._broken is not None:
            raise self._broken
        while True:
            end = self._buf.find(b"\n")
            if end < 0:
                if self._overflow:
                    self._fail()
                return None
            if end > self._max:
                self._fail()
            line = bytes(self._buf[:end])
            del self._buf[: end + 1]
            if line.strip():
                break  # blank lines are keep-alives, skipped
        try:
            obj = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise ProtocolError("message is not valid UTF-8") from None
        except (ValueError, RecursionError) as exc:
            raise ProtocolError(f"message is not valid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise ProtocolError(f"message must be a JSON object, not {_type_name(obj)}")
        raw_id = obj.get("id")
        msg_id = raw_id if _is_int(raw_id) else None
        version = obj.get("v")
        if version != PROTOCOL_VERSION:
            if "v" not in obj:
                what = 'no protocol version ("v")'
            else:
                what = f"protocol version {json.dumps(version)}"
            raise ProtocolError(
                f"message has {what}; this side speaks protocol version {PROTOCOL_VERSION}",
                "EPROTONOSUPPORT",
                id=msg_id,
            )
        if "id" in obj and raw_id is not None and msg_id is None:
            raise ProtocolError(f'"id" must be an integer, not {_type_name(raw_id)}')
        return obj


class RequestDecoder(_LineDecoder):
    """The daemon's side: bytes in, :class:`Request` objects out."""

    def next_request(self) -> Request | None:
        """The next complete request, None when more bytes are needed.

        Raises ProtocolError for a bad line (which is consumed: call again for
        the next one) and, fatally, for an oversize line.
        """
        obj = self._next_object()
        if obj is None:
            return None
        msg_id = obj.get("id")
        if not _is_int(msg_id):
            raise ProtocolError('request has no integer "id"')
        assert isinstance(msg_id, int)
        verb = obj.get("verb")
        if not isinstance(verb, str):
            raise ProtocolError('request has no "verb" string', id=msg_id)
        args = obj.get("args", {})
        if args is None:
            args = {}
        if not isinstance(args, dict):
            raise ProtocolError(f'"args" must be an object, not {_type_name(args)}', id=msg_id)
        extra = sorted(set(obj) - {"v", "id", "verb", "args"})
        if extra:
            raise ProtocolError(f"request has unknown field(s): {', '.join(extra)}", id=msg_id)
        return Request(msg_id, verb, args)

    def __iter__(self) -> RequestDecoder:
        return self

    def __next__(self) -> Request:
        req = self.next_request()
        if req is None:
            raise StopIteration
        return req


class ReplyDecoder(_LineDecoder):
    """The client's side: bytes in, :class:`Reply` and :class:`Event` objects out."""

    def next_message(self) -> Reply | Event | None:
        obj = self._next_object()
        if obj is None:
            return None
        if "event" in obj:
            event = obj["event"]
            if not isinstance(event, dict):
                raise ProtocolError(f'"event" must be an object, not {_type_name(event)}')
            return Event(event)
        msg_id = obj.get("id")
        if msg_id is not None and not _is_int(msg_id):
            raise ProtocolError('reply has no integer "id"')
        ok = obj.get("ok")
        if not isinstance(ok, bool):
            raise ProtocolError('reply has no boolean "ok"')
        fds = obj.get("fds", 0)
        if not _is_int(fds) or fds < 0:
            raise ProtocolError('"fds" must be a non-negative integer')
        if ok:
            return Reply(msg_id, True, obj.get("result"), fds=fds)
        error = obj.get("error")
        if (
            not isinstance(error, dict)
            or not isinstance(error.get("code"), str)
            or not isinstance(error.get("message"), str)
        ):
            raise ProtocolError('error reply needs "error": {"code": string, "message": string}')
        return Reply(msg_id, False, None, error["code"], error["message"], fds)

    def __iter__(self) -> ReplyDecoder:
        return self

    def __next__(self) -> Reply | Event:
        msg = self.next_message()
        if msg is None:
            raise StopIteration
        return msg


# -- verbs and their arguments ----------------------------------------------------------


def _name_of(args: dict[str, Any]) -> str | None:
    name = args.get("name")
    return name if isinstance(name, str) and name else None


def describe(verb: str, args: dict[str, Any]) -> str:
    """``link.add`` + ``{"name": "vm0"}`` → ``link add vm0``: the prefix of error messages."""
    words = verb.replace(".", " ")
    name = _name_of(args)
    return f"{words} {name}" if name is not None else words


def with_prefix(prefix: str, message: str, name: str | None = None) -> str:
    """Make ``message`` start with ``prefix: `` exactly once.

    The daemon's messages usually already carry the prefix (``link add vm0:
    ...``); some carry only the endpoint name (``vm0: ...``), which is replaced;
    the rest (EndpointConfig validation, authorization) get it added.
    """
    if message == prefix or message.startswith(prefix + ": "):
        return message
    if name and message.startswith(name + ": "):
        message = message[len(name) + 2 :]
    return f"{prefix}: {message}"


def _req_name(args: dict[str, Any], *, required: bool) -> str | None:
    name = args.get("name")
    if name is None and not required:
        return None
    if not isinstance(name, str) or not name:
        raise ProtocolError('"name": a non-empty string is required', "EINVAL")
    if len(name) > _MAX_NAME or "\n" in name or "\0" in name:
        raise ProtocolError(f"name {name[:40]!r}: not a valid endpoint name", "EINVAL")
    return name


def _only(verb: str, args: dict[str, Any], allowed: set[str]) -> None:
    extra = sorted(set(args) - allowed)
    if extra:
        raise ProtocolError(f"{verb}: unknown argument(s): {', '.join(extra)}", "EINVAL")


def check_args(verb: str, args: dict[str, Any]) -> None:
    """Validate a request's arguments (shape and JSON types) for its verb.

    Raises ProtocolError (code EINVAL, or EOPNOTSUPP for an unknown verb) with a
    message naming the bad argument.  ``link.add`` arguments are the
    endpoint's configuration, checked by the service.
    """
    if verb not in VERBS:
        raise ProtocolError(
            f"unknown verb {verb!r} (one of {', '.join(VERBS)})",
            "EOPNOTSUPP",
        )
    if verb == "link.add":
        _req_name(args, required=True)
    elif verb == "link.del":
        _only(verb, args, {"name"})
        _req_name(args, required=True)
    elif verb in ("link.show", "lower.show"):
        _only(verb, args, {"name", "stats"})
        _req_name(args, required=False)
        if not isinstance(args.get("stats", False), bool):
            raise ProtocolError('"stats" must be a boolean', "EINVAL")
    elif verb == "capture":
        _only(verb, args, {"name"})
        _req_name(args, required=True)
    elif verb == "attach":
        _only(verb, args, {"name", "queues"})
        _req_name(args, required=True)
        queues = args.get("queues", 1)
        if not _is_int(queues) or not 1 <= queues <= 256:
            raise ProtocolError('"queues" must be an integer 1..256', "EINVAL")
    elif verb == "link.set":
        _only(verb, args, {"name", "changes"})
        _req_name(args, required=True)
        check_changes(args.get("changes"))
    else:  # monitor, version
        _only(verb, args, set())


def check_changes(changes: object) -> None:
    """The ``changes`` of ``link.set``: known keys with the right JSON types."""
    if not isinstance(changes, dict):
        raise ProtocolError('"changes" must be an object', "EINVAL")
    for key, value in changes.items():
        want = SET_KEYS.get(key)
        if want is None:
            raise ProtocolError(
                f"changes: unknown attribute {key!r} (one of {', '.join(SET_KEYS)})", "EINVAL"
            )
        ok = _is_int(value) if want is int else isinstance(value, want)
        if not ok:
            raise ProtocolError(f"changes: {key}: wrong type {_type_name(value)}", "EINVAL")
    spec = changes.get("macaddr")
    if spec is not None:
        assert isinstance(spec, dict)
        extra = sorted(set(spec) - {"op", "addresses"})
        if extra:
            raise ProtocolError(f"macaddr: unknown field(s): {', '.join(extra)}", "EINVAL")
        if spec.get("op") not in MACADDR_OPS:
            raise ProtocolError(f"macaddr: op must be one of {', '.join(MACADDR_OPS)}", "EINVAL")
        addrs = spec.get("addresses", [])
        if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
            raise ProtocolError("macaddr: addresses must be a list of strings", "EINVAL")
