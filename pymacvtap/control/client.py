"""A blocking client for the control socket (the CLI's, and tests')."""

from __future__ import annotations

import array
import errno
import os
import socket
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from pymacvtap.control.protocol import (
    Event,
    ProtocolError,
    Reply,
    ReplyDecoder,
    encode_request,
)
from pymacvtap.defaults import CONTROL_SOCKET, SOCKET_ENV

MAX_FDS = 253  # SCM_MAX_FD
_RECV = 65536


def socket_path(path: str | None = None) -> str:
    """The control socket: the argument, else $PYMACVTAP_SOCKET, else the default."""
    return path or os.environ.get(SOCKET_ENV) or CONTROL_SOCKET


class ClientError(Exception):
    """The daemon could not be reached or spoke nonsense; ``str()`` is the user's line."""


class ConnectionClosed(ClientError):
    """The daemon closed the connection (it stopped, or dropped a slow monitor)."""


class RemoteError(Exception):
    """The daemon refused the request: ``code`` (an errno name) and its ``message``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return self.message


class Client:
    """One connection to the daemon; requests are answered in order."""

    def __init__(self, path: str | None = None, timeout: float | None = None) -> None:
        self.path = socket_path(path)
        self._decoder = ReplyDecoder()
        self._fds: list[int] = []  # received by SCM_RIGHTS, not yet claimed by a reply
        self._next_id = 1
        self._monitoring = False
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError as exc:
            self.sock.close()
            raise ClientError(_unreachable(self.path, exc)) from None

    # -- requests --------------------------------------------------------------------

    def request(self, verb: str, args: dict[str, Any] | None = None) -> Any:
        """Send one request and return its result; RemoteError if the daemon refused it."""
        result, fds = self.request_fds(verb, args)
        for fd in fds:
            os.close(fd)
        return result

    def request_fds(self, verb: str, args: dict[str, Any] | None = None) -> tuple[Any, list[int]]:
        """Like :meth:`request`, also returning the descriptors sent with the reply."""
        if self._monitoring:
            raise ClientError("this connection is monitoring; open another for requests")
        msg_id = self._next_id
        self._next_id += 1
        self._send(encode_request(msg_id, verb, args))
        while True:
            msg = self._receive()
            if isinstance(msg, Event):
                continue  # not ours to show here
            if msg.id is not None and msg.id != msg_id:
                continue  # a reply to an earlier, abandoned request
            fds = self._claim(msg.fds)
            if not msg.ok:
                for fd in fds:
                    os.close(fd)
                raise RemoteError(msg.code, msg.message)
            return msg.result, fds

    def monitor(self) -> Iterator[dict[str, Any]]:
        """Subscribe to the daemon's events; yields each until the connection closes."""
        return self.stream("monitor")

    def stream(self, verb: str, args: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """A streaming verb (monitor, capture): its events until the connection closes.

        The request is made here, not at the first ``next()``: when this returns, the
        daemon has said yes and every later event reaches the iterator (and a refusal is
        raised here, as RemoteError)."""
        self.request(verb, args)
        self._monitoring = True
        self.sock.settimeout(None)
        return self._events()

    def _events(self) -> Iterator[dict[str, Any]]:
        while True:
            try:
                msg = self._receive()
            except ConnectionClosed:
                return
            if isinstance(msg, Event):
                yield msg.event
            elif not msg.ok:
                raise RemoteError(msg.code, msg.message)

    # -- plumbing -----------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            # A daemon that refuses a connection (too many open) says why and
            # closes at once, so the first send can fail before we read it:
            # show its reason rather than the broken pipe.
            refusal = self._refusal()
            if refusal is not None:
                raise refusal from None
            raise ClientError(
                f"lost the connection to the daemon at {self.path}: {_why(exc)}"
            ) from None

    def _refusal(self) -> RemoteError | None:
        """The error the daemon left before it closed the connection, if any."""
        self.sock.settimeout(0)
        try:
            msg = self._receive()
        except ClientError:
            return None
        if isinstance(msg, Reply) and not msg.ok:
            return RemoteError(msg.code, msg.message)
        return None

    def _receive(self) -> Reply | Event:
        while True:
            try:
                msg = self._decoder.next_message()
            except ProtocolError as exc:
                raise ClientError(f"bad reply from the daemon at {self.path}: {exc}") from None
            if msg is not None:
                return msg
            self._recv_more()

    def _recv_more(self) -> None:
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(
                _RECV, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
            )
        except TimeoutError:
            raise ClientError(f"the daemon at {self.path} did not answer in time") from None
        except OSError as exc:
            raise ClientError(
                f"lost the connection to the daemon at {self.path}: {_why(exc)}"
            ) from None
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                self._fds.extend(fds)
        if not data:
            raise ConnectionClosed(f"the daemon at {self.path} closed the connection")
        try:
            self._decoder.feed(data)
        except ProtocolError as exc:
            raise ClientError(f"bad reply from the daemon at {self.path}: {exc}") from None

    def _claim(self, count: int) -> list[int]:
        if count > len(self._fds):
            raise ClientError(
                f"the daemon at {self.path} promised {count} descriptor(s) but sent "
                f"{len(self._fds)}"
            )
        fds, self._fds = self._fds[:count], self._fds[count:]
        return fds

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _unreachable(path: str, exc: OSError) -> str:
    text = f"cannot reach the daemon at {path}: {_why(exc)}"
    if exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
        text += " (is `pymacvtap daemon` running?)"
    elif exc.errno == errno.EACCES:
        text += " (check the permissions of the socket and its directory)"
    return text
