"""The ``vhost-user`` frontend of a ``macvtap`` endpoint: a vhost-user NET back-end.

QEMU (the vhost-user *front-end*) connects to our listening Unix socket, shares
the guest's RAM (SET_MEM_TABLE: one fd per region) and hands us each virtqueue
(SET_VRING_NUM/ADDR/BASE/KICK/CALL).  Queue 2k is the guest's RX ring (we fill
its write buffers), 2k+1 its TX ring (we read what the guest sends); up to
``queues`` pairs.  The protocol — messages, features, the memory table, the
rings and their walks — is the sans-I/O :class:`pymacvtap.virtio.device.Device`;
this module does its I/O: the sockets, the fds that come with messages, the
mmaps and the eventfds, carrying out the device's actions.

How the daemon drives it (it is a :class:`~pymacvtap.frontends.base.Frontend`):

* register ``readable_fds()`` as readers; the set changes as the session
  evolves (accept, disconnect, SET_VRING_KICK, GET_VRING_BASE), and each time
  ``on_fds_changed()`` is called: the daemon then re-reads ``readable_fds()``,
  forgets the fds that left and adds the new ones.  Fds that left are closed
  only *after* the callback returns, so ``loop.forget`` on them is safe.
* ``read(fd, budget)`` serves whichever fd is ready: the listening socket
  (accept), the connection (control messages), an RX kick (the guest added
  receive buffers) or a TX kick (frames from the guest, returned, at most
  ``budget``; when more are left the kick is re-armed so the fd stays ready).
* ``write(queue)`` places frames in the guest's receive buffers.  When none are
  left it returns ``blocked_fd``: an eventfd kept *un*writable while we wait and
  made writable when the guest kicks an RX ring (or the session changes), so
  the daemon's ``loop.add_writer(fd, ...)`` wakes exactly then.  Frames the
  guest cannot take (GSO or partial checksum without the matching GUEST_*
  feature) are turned into plain frames with
  :func:`pymacvtap.virtio.offload.to_plain`; ``accepts_offloads`` tells
  whether the guest takes them as they are.  Without a guest ready to receive
  (no connection, rings not set up or disabled), frames are dropped and counted.
* ``close(delete=...)`` ends the session and the listener (``delete`` removes
  the socket path).

Nothing raised by a bad front-end or guest escapes: errors are counted in
``errors`` (by kind) and in the per-queue counters, logged once per kind and
session, and end the session (framing or fd errors) or break one ring (ring
errors; the front-end's reconfiguration of that ring repairs it).
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import select
import socket
import stat
from collections import deque
from collections.abc import Callable

from pymacvtap.core.announce import rarp
from pymacvtap.core.frame import Frame, VnetHeader
from pymacvtap.frontends.base import WRITE_BUDGET, FrontendDefaults
from pymacvtap.virtio import messages as m
from pymacvtap.virtio.actions import (
    KICKS_CHANGED,
    WAKE_WRITER,
    Close,
    Fault,
    MapMemory,
    Notify,
    Reply,
    SendRarp,
)
from pymacvtap.virtio.device import Device

log = logging.getLogger(__name__)

MAX_MESSAGES_PER_READ = 256
_GATE_CLOSED = 0xFFFFFFFFFFFFFFFE  # an eventfd at this count is not writable

FdsChanged = Callable[[], None]


class VhostUserFrontend(FrontendDefaults):
    """A vhost-user net back-end on a listening Unix socket: one front-end at a time."""

    def __init__(self, path: str, listener: socket.socket, queues: int = 1) -> None:
        self.device = Device(queues)  # checks ``queues``
        self.path = path
        self.queues = queues
        self.on_fds_changed: FdsChanged | None = None
        self._listener: socket.socket | None = listener
        listener.setblocking(False)
        self._gate = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._gate_closed = False
        self._conn: socket.socket | None = None
        self._reader = m.MessageReader()
        self._maps: list[mmap.mmap] = []
        self._retired: list[int] = []
        self._fds_dirty = False
        # Frames the back-end sends as the guest (SEND_RARP), handed out by the next read.
        self._announced: list[Frame] = []
        # Counters that outlive sessions (the device keeps the others).
        self.error_counts: dict[str, int] = {}
        self.sessions = 0
        self._logged: set[str] = set()

    @classmethod
    def create(cls, path: str, queues: int = 1, *, replace: bool = True) -> VhostUserFrontend:
        """Listen at ``path`` (a stale socket there is replaced); mode/owner are the caller's."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            if replace:
                try:
                    if stat.S_ISSOCK(os.lstat(path).st_mode):
                        os.unlink(path)
                except FileNotFoundError:
                    pass
            sock.bind(path)
            sock.listen(4)
            return cls(path, sock, queues)
        except BaseException:
            sock.close()
            raise

    # -- Frontend protocol -----------------------------------------------------------------------

    def readable_fds(self) -> list[int]:
        fds: list[int] = []
        if self._listener is not None:
            fds.append(self._listener.fileno())
        if self._conn is not None:
            fds.append(self._conn.fileno())
            fds.extend(self.device.rings.kick_fds())
        return fds

    @property
    def errors(self) -> int:
        """Faults of the driver (bad messages, broken rings), all kinds together."""
        return sum(self.error_counts.values())

    @property
    def dropped(self) -> int:
        """Frames for the guest that it could not take (see ``rx_dropped``)."""
        return self.rx_dropped

    @property
    def blocked_fd(self) -> int:
        """The fd ``write`` returns when blocked (writable again once receive buffers come)."""
        return self._gate

    @property
    def connected(self) -> bool:
        return self._conn is not None

    def read(self, fd: int, budget: int) -> list[Frame]:
        try:
            frames = self._read(fd, budget)
            self._carry_out()
            if self._announced:
                frames = self._announced + frames
                self._announced = []
            return frames
        except Exception as exc:
            self._error("internal", f"internal error ({exc!r}); session reset")
            log.debug("vhost-user %s: internal error", self.path, exc_info=True)
            self._end_session("internal error")
            return []
        finally:
            self._settle()

    def write(self, queue: deque[Frame]) -> int | None:
        try:
            blocked = self.device.rings.write(queue, WRITE_BUDGET)
            self._carry_out()
            return self._close_gate() if blocked else None
        except Exception as exc:
            self._error("internal", f"internal error on write ({exc!r}); frame dropped")
            log.debug("vhost-user %s: internal error", self.path, exc_info=True)
            if queue:
                queue.popleft()
                self.device.rings.rx_dropped += 1
            return None
        finally:
            self._settle()

    def close(self, *, delete: bool) -> None:
        self._end_session("closed")
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            if delete:
                with contextlib.suppress(OSError):
                    os.unlink(self.path)
        self._fds_dirty = False  # the daemon forgot our fds before closing us
        self._settle()
        if self._gate >= 0:
            os.close(self._gate)
            self._gate = -1

    # -- the device's state, for statistics and tests ----------------------------------------------

    @property
    def features(self) -> int:
        return self.device.features

    @property
    def protocol_features(self) -> int:
        return self.device.protocol_features

    @property
    def messages(self) -> int:
        """Control messages handled, in all sessions."""
        return self.device.messages

    @property
    def rx_dropped(self) -> int:
        """Frames for a guest that could not receive at all."""
        return self.device.rings.rx_dropped

    @property
    def accepts_offloads(self) -> bool:
        """True when the guest takes TCP GSO super-frames and partial checksums as they are."""
        return self.device.rings.negotiated.accepts_offloads

    def accepts(self, vnet: VnetHeader | None) -> bool:
        """Can the guest take a frame with this vnet header without ``to_plain``?"""
        return self.device.rings.negotiated.accepts(vnet)

    def queue_stats(self) -> list[dict[str, int | str]]:
        """Per virtqueue: rx (to the guest, even queues) and tx (from it, odd queues)."""
        return self.device.rings.queue_stats()

    def ring_state(self, index: int) -> dict[str, object]:
        return self.device.rings.ring_state(index)

    # -- sessions ----------------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            conn, _ = self._listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._error("accept", f"accept: {exc}")
            return
        if self._conn is not None:
            self._error("busy", "a second front-end connected; refused (one at a time)")
            conn.close()
            return
        conn.setblocking(False)
        self._logged.clear()
        self._conn = conn
        self.sessions += 1
        self._fds_dirty = True
        log.info("vhost-user %s: front-end connected (session %d)", self.path, self.sessions)

    def _end_session(self, reason: str) -> None:
        conn = self._conn
        if conn is None:
            return
        log.info("vhost-user %s: session ended: %s", self.path, reason)
        self.device.reset()  # unbinds the rings from guest memory: it can be unmapped
        for fd in self._reader.fds:
            _close_fd(fd)
        self._reader = m.MessageReader()
        self._retired.append(conn.detach())
        self._conn = None
        old_maps, self._maps = self._maps, []
        _unmap(old_maps)
        self._logged.clear()
        self._fds_dirty = True
        self._open_gate()
        self._carry_out()

    def _settle(self) -> None:
        """Tell the daemon the fd set changed, then close the fds that left it."""
        if self._fds_dirty:
            self._fds_dirty = False
            callback = self.on_fds_changed
            if callback is not None:
                try:
                    callback()
                except Exception:
                    log.exception("vhost-user %s: on_fds_changed failed", self.path)
        retired = self._retired
        if retired:
            self._retired = []
            for fd in retired:
                _close_fd(fd)

    def _error(self, kind: str, message: str) -> None:
        self.error_counts[kind] = self.error_counts.get(kind, 0) + 1
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("vhost-user %s: %s", self.path, message)
        else:
            log.debug("vhost-user %s: %s", self.path, message)

    # -- reading -----------------------------------------------------------------------------------

    def _read(self, fd: int, budget: int) -> list[Frame]:
        listener = self._listener
        if listener is not None and fd == listener.fileno():
            self._accept()
            return []
        conn = self._conn
        if conn is None:
            return []
        if fd == conn.fileno():
            self._serve(conn)
            return []
        rings = self.device.rings
        i = rings.kick_to_vq.get(fd)
        if i is None:
            return []
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            pass
        except OSError as exc:
            self._error("kick", f"reading the kick of queue {i}: {exc}")
        return rings.kicked(i, budget)

    def _serve(self, conn: socket.socket) -> None:
        for _ in range(MAX_MESSAGES_PER_READ):
            if self._conn is not conn:
                return
            try:
                data, fds, flags, _ = socket.recv_fds(conn, self._reader.want(), m.MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._end_session(f"receive: {exc}")
                return
            if flags & socket.MSG_CTRUNC or not data:
                for fd in fds:
                    _close_fd(fd)
                if flags & socket.MSG_CTRUNC:
                    self._error("protocol", "too many fds in one message")
                    self._end_session("protocol error")
                else:
                    self._end_session("front-end disconnected")
                return
            try:
                received = self._reader.feed(data, fds)
            except m.Refused as exc:
                self._error(exc.kind, str(exc))
                self._end_session("protocol error")
                return
            if received is not None:
                self.handle_message(
                    received.request, received.flags, received.payload, received.fds
                )

    def handle_message(self, request: int, flags: int, payload: bytes, fds: list[int]) -> None:
        """Act on one message; ``fds`` are ours (kept or closed).  Never raises on bad input."""
        message = m.Message(request, flags, payload, [_inspect(request, fd) for fd in fds])
        fds.clear()
        try:
            self.device.receive(message)
            self._carry_out()  # maps guest memory before its fds are closed
        finally:
            for fd in message.fds:
                _close_fd(fd.number)

    # -- carrying out the device's actions ---------------------------------------------------------

    def _carry_out(self) -> None:
        device = self.device
        while device.has_actions:
            for action in device.take_actions():
                if isinstance(action, Notify):
                    self._notify(action)
                elif action is WAKE_WRITER:
                    self._open_gate()
                elif action is KICKS_CHANGED:
                    self._fds_dirty = True
                elif isinstance(action, Close):
                    self._retired.append(action.fd)
                elif isinstance(action, Reply):
                    self._send(action)
                elif isinstance(action, Fault):
                    self._error(action.kind, action.message)
                elif isinstance(action, MapMemory):
                    self._map(action)
                elif isinstance(action, SendRarp):
                    # Forwarded as if the guest had sent it: the engine's rules apply.
                    self._announced.append(Frame(rarp(action.mac)))

    def _notify(self, action: Notify) -> None:
        try:
            os.eventfd_write(action.fd, 1)
        except BlockingIOError:
            pass  # the counter is near full: the other side has a wake-up pending anyway
        except OSError as exc:
            if action.why == "call":
                self._error("call", f"queue {action.queue}: signalling the guest: {exc}")

    def _send(self, reply: Reply) -> None:
        conn = self._conn
        if conn is None:
            return
        message = m.encode_reply(reply.request, reply.payload)
        try:
            sent = conn.send(message)
        except OSError as exc:
            self._end_session(f"send: {exc}")
            return
        if sent != len(message):
            self._end_session("front-end does not read its replies")

    def _map(self, action: MapMemory) -> None:
        maps: list[mmap.mmap] = []
        try:
            for region in action.regions:
                prot = mmap.PROT_READ | mmap.PROT_WRITE
                maps.append(mmap.mmap(region.fd, region.length, mmap.MAP_SHARED, prot))
        except (OSError, ValueError, OverflowError) as exc:
            _unmap(maps)
            self.device.memory_refused(str(exc))
            return
        if self.device.memory_mapped(maps):
            maps, self._maps = self._maps, maps  # the rings no longer use the old ones
        _unmap(maps)

    # -- the writer's gate -------------------------------------------------------------------------

    def _open_gate(self) -> None:
        if self._gate_closed:
            self._gate_closed = False
            with contextlib.suppress(BlockingIOError):
                os.eventfd_read(self._gate)

    def _close_gate(self) -> int:
        if not self._gate_closed:
            self._gate_closed = True
            os.eventfd_write(self._gate, _GATE_CLOSED)
        return self._gate


def _inspect(request: int, fd: int) -> m.Fd:
    """What the device needs to know about an fd, for the role its request gives it."""
    role = m.FD_ROLES.get(request)
    if role == m.MEMORY:
        try:
            st = os.fstat(fd)
        except OSError:
            return m.Fd(fd)
        return m.Fd(fd, memory_size=st.st_size if stat.S_ISREG(st.st_mode) else None)
    if role == m.NOTIFIER:
        try:
            _check_notifier(fd)
            os.set_blocking(fd, False)
        except OSError as exc:
            return m.Fd(fd, notifier_error=str(exc))
        return m.Fd(fd, notifier_error=None)
    return m.Fd(fd)


def _check_notifier(fd: int) -> None:
    """Only eventfds are notifiers (what QEMU uses on Linux): pollable, never at EOF."""
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        target = None
    if target is not None:
        if target != "anon_inode:[eventfd]":
            raise OSError(f"{target} is not an eventfd")
        return
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        raise OSError("not an eventfd")
    probe = select.epoll()
    try:
        probe.register(fd, select.EPOLLIN)
    finally:
        probe.close()


def _close_fd(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def _unmap(maps: list[mmap.mmap]) -> None:
    for mm in maps:
        try:
            mm.close()
        except (BufferError, ValueError):
            log.debug("guest memory still referenced; left to the garbage collector")
