"""The daemon's end of the control socket, served from the daemon's one event loop.

Every connection is non-blocking and has bounded buffers: a line longer than
64 KiB closes that connection (after an EMSGSIZE reply), a client whose unread
replies or monitor events pass ``max_output`` bytes is dropped, a client that
never sends costs one fd and nothing else, and at most ``max_clients``
connections are open (the next ones get an EUSERS reply and are closed).  So
that one local user cannot take every connection, a caller who is neither root
nor in the admin group may hold ``max_per_user`` of them, and root has
``ROOT_RESERVE`` more than ``max_clients`` to reach a daemon others have filled.

Requests are authorized per request from the peer's SO_PEERCRED/SO_PEERGROUPS
(read once, at accept) — see :mod:`pymacvtap.control.auth` — then handed to the
:class:`Service`.

Error replies: an exception with a string ``code`` attribute (ConfigError,
EngineError, AuthError, ProtocolError) becomes ``{"code": code, "message": ...}``;
an OSError becomes its errno name and strerror; anything else is a bug, logged
with its traceback and answered ``EIO`` "internal error: ...", and the daemon
keeps serving.  Every message is made to start with what was asked, exactly
once (:func:`pymacvtap.control.protocol.with_prefix`): the Service may prefix
its messages with ``link add vm0: `` itself (the server then leaves them
alone), with only ``vm0: `` (replaced), or not at all (the server adds it).
The client prints ``pymacvtap: `` + message: one line.
"""

from __future__ import annotations

import array
import collections
import contextlib
import errno
import logging
import os
import socket
import stat
from collections.abc import Callable
from typing import Any, Protocol

from pymacvtap import __version__
from pymacvtap.control import auth
from pymacvtap.control.auth import Caller
from pymacvtap.control.protocol import (
    MAX_MESSAGE,
    PROTOCOL_VERSION,
    VERBS,
    ProtocolError,
    Request,
    RequestDecoder,
    WithFds,
    check_args,
    describe,
    encode_error,
    encode_event,
    encode_ok,
    with_prefix,
)
from pymacvtap.io.loop import Loop, Timer

MAX_CLIENTS = 256
MAX_PER_USER = 32  # connections of one uid that is neither root nor an admin
ROOT_RESERVE = 8  # connections only root may open beyond MAX_CLIENTS
MAX_OUTPUT = 1 << 20  # unsent bytes a client may have queued before it is dropped
RECV_SIZE = MAX_MESSAGE
ACCEPT_BATCH = 32
ACCEPT_PAUSE = 0.5  # seconds without accept() after EMFILE, instead of spinning
LINGER_SECONDS = 2.0  # after a fatal error, how long the peer has to read our reply
LINGER_BYTES = 4 * MAX_MESSAGE  # and how much more it may send meanwhile


class Service(Protocol):
    """What the daemon implements for the control socket (see the module docstring)."""

    def link_add(self, args: dict[str, Any]) -> dict[str, Any]:
        """``args``: the endpoint's attributes as the request has them; the service checks them."""

    def link_set(self, name: str, changes: dict[str, Any]) -> dict[str, Any]: ...

    def link_del(self, name: str) -> None: ...

    def link_show(self, name: str | None, stats: bool) -> list[dict[str, Any]]: ...

    def lower_show(self, name: str | None, stats: bool) -> list[dict[str, Any]]: ...

    def endpoint_access(self, name: str) -> tuple[int | None, int | None]: ...

    def subscribe(self, callback: Callable[[dict[str, Any]], None]) -> Callable[[], None]: ...

    def attach(self, name: str, queues: int | None) -> WithFds: ...

    def capture(
        self, name: str, callback: Callable[[dict[str, Any]], None]
    ) -> Callable[[], None]: ...


class _Chunk:
    __slots__ = ("data", "fds")

    def __init__(self, data: bytes, fds: list[int]) -> None:
        self.data = memoryview(data)
        self.fds = fds  # sent with the first byte of data, then closed


class _Conn:
    __slots__ = (
        "caller",
        "closed",
        "closing",
        "decoder",
        "discarded",
        "fd",
        "lingering",
        "out",
        "out_bytes",
        "sock",
        "timer",
        "unsubscribe",
        "writing",
    )

    def __init__(self, sock: socket.socket, caller: Caller) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.caller = caller
        self.decoder = RequestDecoder()
        self.out: collections.deque[_Chunk] = collections.deque()
        self.out_bytes = 0
        self.unsubscribe: Callable[[], None] | None = None
        self.closing = False  # close once the output is flushed
        self.closed = False
        self.writing = False  # registered for EPOLLOUT
        # After a fatal error: reply, shut down our side, and read (discarding) until the
        # peer closes, so that closing with unread input does not reset the connection
        # and lose the reply.
        self.lingering = False
        self.discarded = 0
        self.timer: Timer | None = None


_NO_REPLY = object()  # the handler already replied (monitor)


class ControlServer:
    """Listens on ``path`` and serves requests on ``loop`` until :meth:`close`."""

    def __init__(
        self,
        loop: Loop,
        path: str,
        service: Service,
        admin_gid: int | None,
        log: logging.Logger,
        *,
        max_clients: int = MAX_CLIENTS,
        max_per_user: int = MAX_PER_USER,
        max_output: int = MAX_OUTPUT,
    ) -> None:
        self.loop = loop
        self.path = path
        self.service = service
        self.admin_gid = admin_gid
        self.admin_group = auth.group_label(admin_gid) if admin_gid is not None else None
        self.log = log
        self.max_clients = max_clients
        self.max_per_user = max_per_user
        self.max_output = max_output
        self.conns: dict[int, _Conn] = {}
        self._per_uid: collections.Counter[int] = collections.Counter()
        self._sock = _listen(path)
        self._ino = os.stat(path).st_ino
        self._accept_paused = False
        loop.add_reader(self._sock.fileno(), self._on_accept)

    # -- accepting ------------------------------------------------------------------

    def _on_accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            try:
                sock, _addr = self._sock.accept()
            except BlockingIOError:
                return
            except InterruptedError:
                continue
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:
                    continue
                # EMFILE/ENFILE/ENOBUFS: the listening fd stays readable; pause, don't spin.
                self.log.warning("control: accept: %s; pausing for %.1fs", exc, ACCEPT_PAUSE)
                self.loop.remove_reader(self._sock.fileno())
                self._accept_paused = True
                self.loop.call_later(ACCEPT_PAUSE, self._resume_accept)
                return
            self._accepted(sock)

    def _resume_accept(self) -> None:
        if self._accept_paused and self._sock.fileno() >= 0:
            self._accept_paused = False
            self.loop.add_reader(self._sock.fileno(), self._on_accept)

    def _accepted(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if len(self.conns) >= self.max_clients + ROOT_RESERVE:
            self._refuse(sock, f"too many connections ({self.max_clients}); try again")
            return
        try:
            caller = auth.peer_caller(sock)
        except OSError as exc:
            self.log.warning("control: cannot read peer credentials: %s", exc)
            sock.close()
            return
        if caller.uid != 0 and len(self.conns) >= self.max_clients:
            self._refuse(sock, f"too many connections ({self.max_clients}); try again")
            return
        if (
            self._per_uid[caller.uid] >= self.max_per_user
            and caller.uid != 0
            and not auth.is_admin(caller, self.admin_gid)
        ):
            self._refuse(
                sock,
                f"too many connections from uid {caller.uid} ({self.max_per_user}); "
                "close some and try again",
            )
            return
        conn = _Conn(sock, caller)
        self.conns[conn.fd] = conn
        self._per_uid[caller.uid] += 1
        self.loop.add_reader(conn.fd, lambda: self._on_readable(conn))

    def _refuse(self, sock: socket.socket, message: str) -> None:
        with contextlib.suppress(OSError):
            sock.send(encode_error(None, "EUSERS", message), socket.MSG_NOSIGNAL)
        sock.close()
        self.log.warning("control: refused a connection (%d open): %s", len(self.conns), message)

    # -- reading ----------------------------------------------------------------------

    def _on_readable(self, conn: _Conn) -> None:
        if conn.closed:
            return
        try:
            data = conn.sock.recv(RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._on_eof(conn)
            return
        if conn.lingering:
            conn.discarded += len(data)
            if conn.discarded > LINGER_BYTES:
                self._close(conn)
            return
        conn.decoder.feed(data)
        while not conn.closed and not conn.closing:
            try:
                req = conn.decoder.next_request()
            except ProtocolError as exc:
                self._send(conn, encode_error(exc.id, exc.code, exc.message))
                if exc.fatal:
                    self.log.warning(
                        "control: pid %d uid %d: %s", conn.caller.pid, conn.caller.uid, exc
                    )
                    self._linger(conn)
                continue
            if req is None:
                break
            self._handle(conn, req)

    def _linger(self, conn: _Conn) -> None:
        conn.lingering = True
        conn.closing = True
        conn.timer = self.loop.call_later(LINGER_SECONDS, lambda: self._close(conn))
        if not conn.closed and not conn.out:
            self._flush(conn)

    def _on_eof(self, conn: _Conn) -> None:
        # Replies still queued are delivered to a client that only shut down its side.
        self._close_after_flush(conn)

    def _close_after_flush(self, conn: _Conn) -> None:
        self.loop.remove_reader(conn.fd)
        if conn.out and conn.unsubscribe is None and not conn.lingering:
            conn.closing = True
        else:
            self._close(conn)

    # -- requests --------------------------------------------------------------------------

    def _handle(self, conn: _Conn, req: Request) -> None:
        target = describe(req.verb, req.args)
        name = req.args.get("name") if isinstance(req.args.get("name"), str) else None
        try:
            result = self._dispatch(conn, req)
            if result is _NO_REPLY:
                return
            fds = result.fds if isinstance(result, WithFds) else []
            value = result.result if isinstance(result, WithFds) else result
            try:
                line = encode_ok(req.id, value, len(fds))
            except BaseException:
                _close_fds(fds)  # not serialisable: a bug, answered EIO below
                raise
            self._send(conn, line, fds)
        except Exception as exc:
            code = getattr(exc, "code", None)
            if isinstance(code, str) and code:
                message = getattr(exc, "message", None)
                text = message if isinstance(message, str) else str(exc)
            elif isinstance(exc, OSError) and exc.errno:
                self.log.warning("control: %s: %s", target, exc, exc_info=True)
                code = errno.errorcode.get(exc.errno, "EIO")
                text = exc.strerror or str(exc)
                if exc.filename:
                    text = f"{exc.filename}: {text}"
            else:
                self.log.error("control: %s: internal error", target, exc_info=True)
                code, text = "EIO", f"internal error: {type(exc).__name__}: {exc}"
            self._send(conn, encode_error(req.id, code, with_prefix(target, text, name)))

    def _dispatch(self, conn: _Conn, req: Request) -> Any:
        verb, args, caller = req.verb, req.args, conn.caller
        if verb not in VERBS:
            check_args(verb, args)  # raises, naming the verbs there are
        raw_name = args.get("name")
        name = raw_name if isinstance(raw_name, str) else None
        admin = auth.is_admin(caller, self.admin_gid)
        if verb not in ("version", "link.show", "attach", "capture"):
            # Refuse before looking at the arguments: strangers learn nothing more.
            auth.authorize(
                caller, verb, None, None, self.admin_gid, name=name, admin_group=self.admin_group
            )
        check_args(verb, args)
        if verb == "version":
            return {"version": __version__, "protocol": PROTOCOL_VERSION}
        if verb == "link.show":
            stats = bool(args.get("stats", False))
            if name is None:
                entries = self.service.link_show(None, stats)
                if admin:
                    return entries
                return [
                    e
                    for e in entries
                    if auth.may_see(caller, e.get("owner"), e.get("group"), self.admin_gid)
                ]
            if not admin:
                self._authorize_endpoint(caller, verb, name)
            return self.service.link_show(name, stats)
        if verb in ("attach", "capture"):
            # The endpoint's VM port or its frames: for its owner/group (and admins).
            assert name is not None
            if not admin:
                self._authorize_endpoint(caller, verb, name)
            if verb == "capture":
                return self._subscribe(
                    conn, req, lambda cb: self.service.capture(name, cb), "capturing"
                )
            queues = args.get("queues")
            return self.service.attach(name, int(queues) if queues is not None else None)
        if verb == "lower.show":  # the host's devices: for admins (authorized above)
            return self.service.lower_show(name, bool(args.get("stats", False)))
        assert name is not None or verb == "monitor"
        if verb == "link.add":
            return self.service.link_add(dict(args))
        if verb == "link.set":
            assert name is not None
            return self.service.link_set(name, dict(args["changes"]))
        if verb == "link.del":
            assert name is not None
            self.service.link_del(name)
            return None
        return self._subscribe(conn, req, self.service.subscribe, "monitoring")

    def _authorize_endpoint(self, caller: auth.Caller, verb: str, name: str) -> None:
        """A non-admin may act on an endpoint only as its owner or group member."""
        owner, group = self.service.endpoint_access(name)
        auth.authorize(
            caller, verb, owner, group, self.admin_gid, name=name, admin_group=self.admin_group
        )

    def _subscribe(
        self,
        conn: _Conn,
        req: Request,
        subscribe: Callable[[Callable[[dict[str, Any]], None]], Callable[[], None]],
        what: str,
    ) -> object:
        """monitor, capture: the ok reply, then one event line per event until the client goes."""
        if conn.unsubscribe is not None:
            raise ProtocolError(f"this connection is already {what}", "EBUSY")
        unsubscribe = subscribe(lambda event: self._send_event(conn, event))
        self._send(conn, encode_ok(req.id, {}))
        conn.unsubscribe = unsubscribe
        return _NO_REPLY

    def _send_event(self, conn: _Conn, event: dict[str, Any]) -> None:
        if conn.closed:
            return
        try:
            data = encode_event(event)
        except (TypeError, ValueError):
            self.log.error("control: monitor event not serialisable: %r", event)
            return
        self._send(conn, data)

    # -- writing --------------------------------------------------------------------------

    def _send(self, conn: _Conn, data: bytes, fds: list[int] | None = None) -> None:
        if conn.closed:
            _close_fds(fds or [])
            return
        conn.out.append(_Chunk(data, list(fds or [])))
        conn.out_bytes += len(data)
        if conn.out_bytes > self.max_output:
            self.log.warning(
                "control: pid %d uid %d does not read its replies/events (%d bytes queued); "
                "dropping it",
                conn.caller.pid,
                conn.caller.uid,
                conn.out_bytes,
            )
            self._close(conn)
            return
        if not conn.writing:
            self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        sock = conn.sock
        while conn.out:
            chunk = conn.out[0]
            try:
                if chunk.fds:
                    ancillary = [
                        (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", chunk.fds))
                    ]
                    sent = sock.sendmsg([chunk.data], ancillary, socket.MSG_NOSIGNAL)
                    _close_fds(chunk.fds)
                    chunk.fds = []
                else:
                    sent = sock.send(chunk.data, socket.MSG_NOSIGNAL)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._close(conn)
                return
            conn.out_bytes -= sent
            if sent < len(chunk.data):
                chunk.data = chunk.data[sent:]
                break
            conn.out.popleft()
        if conn.out:
            if not conn.writing:
                conn.writing = True
                self.loop.add_writer(conn.fd, lambda: self._flush(conn))
            return
        if conn.writing:
            conn.writing = False
            self.loop.remove_writer(conn.fd)
        if conn.closing:
            if conn.lingering:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_WR)  # the peer reads our reply, then EOF
            else:
                self._close(conn)

    # -- closing ---------------------------------------------------------------------------

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        if conn.timer is not None:
            conn.timer.cancel()
        if conn.unsubscribe is not None:
            try:
                conn.unsubscribe()
            except Exception:
                self.log.exception("control: unsubscribe failed")
            conn.unsubscribe = None
        for chunk in conn.out:
            _close_fds(chunk.fds)
        conn.out.clear()
        if self.conns.pop(conn.fd, None) is not None:
            uid = conn.caller.uid
            self._per_uid[uid] -= 1
            if not self._per_uid[uid]:
                del self._per_uid[uid]
        self.loop.forget(conn.fd)
        conn.sock.close()

    def close(self) -> None:
        """Close every connection and the listening socket, and remove the socket file."""
        for conn in list(self.conns.values()):
            self._close(conn)
        if self._sock.fileno() >= 0:
            self.loop.forget(self._sock.fileno())
            self._sock.close()
        try:
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass


def _close_fds(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def _listen(path: str) -> socket.socket:
    """Bind ``path`` (mode 0666), replacing a stale socket file but never a live one."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        os.makedirs(parent, exist_ok=True)
        os.chmod(parent, 0o755)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, "exists and is not a socket; not replacing it", path)
        if _alive(path):
            raise OSError(
                errno.EADDRINUSE, "another pymacvtap daemon is listening on this socket", path
            )
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)  # any local user may connect; each request is authorized
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _alive(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # a full backlog or a timeout: someone is there
    finally:
        probe.close()
    return True
