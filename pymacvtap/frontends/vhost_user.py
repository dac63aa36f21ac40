"""The ``vhost-user`` frontend of a ``macvtap`` endpoint: a vhost-user NET back-end.

QEMU (the vhost-user *front-end*) connects to our listening Unix socket, shares
the guest's RAM (SET_MEM_TABLE: one fd per region) and hands us each virtqueue
(SET_VRING_NUM/ADDR/BASE/KICK/CALL).  Queue 2k is the guest's RX ring (we fill
its write buffers), 2k+1 its TX ring (we read what the guest sends); up to
``queues`` pairs.  The ring walking itself is sans-I/O in
:mod:`pymacvtap.virtio.virtqueue`; this module does the socket, the messages, the
mmaps and the eventfds.

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
  feature) are turned into plain frames here with
  :func:`pymacvtap.virtio.offload.to_plain`; ``accepts_offloads`` tells the
  daemon whether it could skip that.  Without a guest ready to receive (no
  connection, rings not set up or disabled), frames are dropped and counted.
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
import struct
from collections import deque
from collections.abc import Callable

from pymacvtap.core.frame import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_ECN,
    VIRTIO_NET_HDR_GSO_NONE,
    VIRTIO_NET_HDR_GSO_TCPV4,
    VIRTIO_NET_HDR_GSO_TCPV6,
    VNET_HDR_LEN,
    Frame,
    VnetHeader,
)
from pymacvtap.virtio.offload import to_plain
from pymacvtap.virtio.virtqueue import (
    RX_NO_BUFFERS,
    RX_OK,
    VNET_HDR_MRG_LEN,
    GuestMemory,
    Region,
    RingError,
    Virtqueue,
)

log = logging.getLogger(__name__)

# -- protocol constants (QEMU docs/interop/vhost-user.rst) ------------------------------------

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
RESET_DEVICE = 34

VERSION = 1
F_REPLY = 0x4
F_NEED_REPLY = 0x8
VRING_NOFD = 0x100
VRING_IDX_MASK = 0xFF

PROTOCOL_F_MQ = 0
PROTOCOL_F_REPLY_ACK = 3
PROTOCOL_F_RESET_DEVICE = 13

VIRTIO_NET_F_CSUM = 0
VIRTIO_NET_F_GUEST_CSUM = 1
VIRTIO_NET_F_GUEST_TSO4 = 7
VIRTIO_NET_F_GUEST_TSO6 = 8
VIRTIO_NET_F_GUEST_ECN = 9
VIRTIO_NET_F_HOST_TSO4 = 11
VIRTIO_NET_F_HOST_TSO6 = 12
VIRTIO_NET_F_HOST_ECN = 13
VIRTIO_NET_F_MRG_RXBUF = 15
VIRTIO_NET_F_MQ = 22
VIRTIO_F_ANY_LAYOUT = 27
VIRTIO_RING_F_INDIRECT_DESC = 28
VIRTIO_RING_F_EVENT_IDX = 29
VHOST_USER_F_PROTOCOL_FEATURES = 30
VIRTIO_F_VERSION_1 = 32


def _bits(*bits: int) -> int:
    value = 0
    for bit in bits:
        value |= 1 << bit
    return value


OFFERED_FEATURES = _bits(
    VIRTIO_NET_F_CSUM,
    VIRTIO_NET_F_GUEST_CSUM,
    VIRTIO_NET_F_GUEST_TSO4,
    VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_ECN,
    VIRTIO_NET_F_HOST_TSO4,
    VIRTIO_NET_F_HOST_TSO6,
    VIRTIO_NET_F_HOST_ECN,
    VIRTIO_NET_F_MRG_RXBUF,
    VIRTIO_NET_F_MQ,
    VIRTIO_F_ANY_LAYOUT,
    VIRTIO_RING_F_INDIRECT_DESC,
    VIRTIO_RING_F_EVENT_IDX,
    VHOST_USER_F_PROTOCOL_FEATURES,
    VIRTIO_F_VERSION_1,
)
OFFERED_PROTOCOL_FEATURES = _bits(PROTOCOL_F_MQ, PROTOCOL_F_REPLY_ACK, PROTOCOL_F_RESET_DEVICE)

HDR = struct.Struct("=III")  # request, flags, size: native byte order
U64 = struct.Struct("=Q")
STATE = struct.Struct("=II")  # index, num
ADDR = struct.Struct("=IIQQQQ")  # index, flags, desc, used, avail, log
MEM_HEAD = struct.Struct("=II")  # nregions, padding
MEM_REGION = struct.Struct("=QQQQ")  # guest_phys, size, user_addr, mmap_offset

MAX_REGIONS = 8
MAX_PAYLOAD = 4096  # larger than any message we take (a memory table is 264 bytes)
MAX_FDS = MAX_REGIONS
MAX_MESSAGES_PER_READ = 256
MAX_MAPPING = 1 << 42  # 4 TiB of guest RAM per region is plenty
MAX_QUEUE_PAIRS = 128  # one vring index byte holds 256 queues
WRITE_BUDGET = 256
_GATE_CLOSED = 0xFFFFFFFFFFFFFFFE  # an eventfd at this count is not writable

FdsChanged = Callable[[], None]


class VhostUserFrontend:
    """A vhost-user net back-end on a listening Unix socket: one front-end at a time."""

    def __init__(self, path: str, listener: socket.socket, queues: int = 1) -> None:
        if not 1 <= queues <= MAX_QUEUE_PAIRS:
            raise ValueError(f"queues must be 1..{MAX_QUEUE_PAIRS}, not {queues}")
        self.path = path
        self.queues = queues
        self.on_fds_changed: FdsChanged | None = None
        self._listener: socket.socket | None = listener
        listener.setblocking(False)
        self._gate = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._gate_closed = False
        self._conn: socket.socket | None = None
        self._retired: list[int] = []
        self._fds_dirty = False
        # Counters that outlive sessions.
        self.error_counts: dict[str, int] = {}
        self.sessions = 0
        self.messages = 0  # control messages handled
        self.rx_dropped = 0  # frames for a guest that could not receive at all
        nvq = 2 * queues
        self._vqs = [Virtqueue(i) for i in range(nvq)]
        self._logged: set[str] = set()
        self._reset_session_state()

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

    # -- session state -----------------------------------------------------------------------

    def _reset_session_state(self) -> None:
        nvq = 2 * self.queues
        self.features = 0
        self.protocol_features = 0
        self._hdr_len = VNET_HDR_LEN
        self._mergeable = False
        self._guest_csum = self._guest_tso4 = self._guest_tso6 = self._guest_ecn = False
        self._mem: GuestMemory | None = None
        self._maps: list[mmap.mmap] = []
        self._kick = [-1] * nvq
        self._call = [-1] * nvq
        self._err = [-1] * nvq
        self._started = [False] * nvq
        self._enabled = [False] * nvq
        self._addr_set = [False] * nvq
        self._broken: list[str | None] = [None] * nvq
        self._kick_to_vq: dict[int, int] = {}
        self._rxbuf = bytearray()
        self._rxfds: list[int] = []
        self._rxsize = 0
        for vq in self._vqs:
            vq.unbind()
            vq.num = 0
            vq.desc_addr = vq.avail_addr = vq.used_addr = 0
            vq.last_avail = vq.used_idx = 0
            vq.event_idx = vq.indirect = False
        self._logged.clear()

    def _end_session(self, reason: str) -> None:
        conn = self._conn
        if conn is None:
            return
        log.info("vhost-user %s: session ended: %s", self.path, reason)
        for i in range(len(self._vqs)):
            self._retire_vring_fds(i)
        for fd in self._rxfds:
            _close_fd(fd)
        self._retired.append(conn.detach())
        self._conn = None
        old_maps = self._maps
        self._reset_session_state()
        _unmap(old_maps)
        self._fds_dirty = True
        self._open_gate()

    def _retire(self, fd: int) -> None:
        if fd >= 0:
            self._retired.append(fd)
            self._fds_dirty = True

    def _retire_vring_fds(self, i: int) -> None:
        kick = self._kick[i]
        if kick >= 0:
            self._kick_to_vq.pop(kick, None)
        self._retire(kick)
        self._retire(self._call[i])
        self._retire(self._err[i])
        self._kick[i] = self._call[i] = self._err[i] = -1

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

    # -- Frontend protocol -----------------------------------------------------------------------

    def readable_fds(self) -> list[int]:
        fds: list[int] = []
        if self._listener is not None:
            fds.append(self._listener.fileno())
        if self._conn is not None:
            fds.append(self._conn.fileno())
            fds.extend(fd for fd in self._kick if fd >= 0)
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

    @property
    def accepts_offloads(self) -> bool:
        """True when the guest takes TCP GSO super-frames and partial checksums as they are."""
        return self._guest_csum and self._guest_tso4 and self._guest_tso6

    def accepts(self, vnet: VnetHeader | None) -> bool:
        """Can the guest take a frame with this vnet header without ``to_plain``?"""
        if vnet is None:
            return True
        if vnet.flags & VIRTIO_NET_HDR_F_NEEDS_CSUM and not self._guest_csum:
            return False
        gso = vnet.gso_type & ~VIRTIO_NET_HDR_GSO_ECN
        if gso == VIRTIO_NET_HDR_GSO_NONE:
            return True
        if vnet.gso_type & VIRTIO_NET_HDR_GSO_ECN and not self._guest_ecn:
            return False
        if gso == VIRTIO_NET_HDR_GSO_TCPV4:
            return self._guest_tso4
        if gso == VIRTIO_NET_HDR_GSO_TCPV6:
            return self._guest_tso6
        return False

    def read(self, fd: int, budget: int) -> list[Frame]:
        try:
            return self._read(fd, budget)
        except Exception as exc:
            self._error("internal", f"internal error ({exc!r}); session reset")
            log.debug("vhost-user %s: internal error", self.path, exc_info=True)
            self._end_session("internal error")
            return []
        finally:
            self._settle()

    def write(self, queue: deque[Frame]) -> int | None:
        try:
            return self._write(queue)
        except Exception as exc:
            self._error("internal", f"internal error on write ({exc!r}); frame dropped")
            log.debug("vhost-user %s: internal error", self.path, exc_info=True)
            if queue:
                queue.popleft()
                self.rx_dropped += 1
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

    # -- statistics -----------------------------------------------------------------------------

    def queue_stats(self) -> list[dict[str, int | str]]:
        """Per virtqueue: rx (to the guest, even queues) and tx (from it, odd queues)."""
        out: list[dict[str, int | str]] = []
        for vq in self._vqs:
            entry: dict[str, int | str] = {
                "queue": vq.index,
                "pair": vq.index // 2,
                "direction": "tx" if vq.index & 1 else "rx",
            }
            entry.update(vq.stats.as_dict())
            out.append(entry)
        return out

    def ring_state(self, index: int) -> dict[str, object]:
        vq = self._vqs[index]
        return {
            "started": self._started[index],
            "enabled": self._enabled_eff(index),
            "bound": vq.bound,
            "broken": self._broken[index],
            "last_avail": vq.last_avail,
            "used_idx": vq.used_idx,
        }

    # -- reading --------------------------------------------------------------------------------

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
        i = self._kick_to_vq.get(fd)
        if i is None:
            return []
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            pass
        except OSError as exc:
            self._error("kick", f"reading the kick of queue {i}: {exc}")
        if not i & 1:
            self._open_gate()  # receive buffers may have come
            return []
        return self._drain_tx(i, budget)

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
        self._reset_session_state()
        self._conn = conn
        self.sessions += 1
        self._fds_dirty = True
        log.info("vhost-user %s: front-end connected (session %d)", self.path, self.sessions)

    def _serve(self, conn: socket.socket) -> None:
        for _ in range(MAX_MESSAGES_PER_READ):
            if self._conn is not conn:
                return
            buf = self._rxbuf
            have = len(buf)
            want = HDR.size - have if have < HDR.size else HDR.size + self._rxsize - have
            try:
                data, fds, flags, _ = socket.recv_fds(conn, want, MAX_FDS)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._end_session(f"receive: {exc}")
                return
            self._rxfds.extend(fds)
            if flags & socket.MSG_CTRUNC:
                self._error("protocol", "too many fds in one message")
                self._end_session("protocol error")
                return
            if not data:
                self._end_session("front-end disconnected")
                return
            buf += data
            if have < HDR.size <= len(buf):
                request, mflags, size = HDR.unpack_from(buf)
                if mflags & 3 != VERSION or size > MAX_PAYLOAD:
                    self._error(
                        "protocol",
                        f"bad message header (request {request}, flags {mflags:#x}, size {size})",
                    )
                    self._end_session("protocol error")
                    return
                self._rxsize = size
            if len(buf) >= HDR.size and len(buf) == HDR.size + self._rxsize:
                request, mflags, _size = HDR.unpack_from(buf)
                payload = bytes(buf[HDR.size :])
                fds = self._rxfds
                self._rxbuf = bytearray()
                self._rxfds = []
                self._rxsize = 0
                self.handle_message(request, mflags, payload, fds)

    # -- messages ---------------------------------------------------------------------------------

    def handle_message(self, request: int, flags: int, payload: bytes, fds: list[int]) -> None:
        """Act on one message; ``fds`` are ours (kept or closed).  Never raises on bad input."""
        reply: bytes | None = None
        ok = True
        self.messages += 1
        try:
            result = self._dispatch(request, payload, fds)
        except _Refused as exc:
            self._error(exc.kind, f"request {request}: {exc}")
            ok = False
            result = None
        finally:
            for fd in fds:
                _close_fd(fd)
            fds.clear()
        if isinstance(result, bytes):
            reply = result
        elif request == GET_VRING_BASE and not ok:
            reply = STATE.pack(0, 0)
        elif request in (GET_FEATURES, GET_PROTOCOL_FEATURES, GET_QUEUE_NUM) and not ok:
            reply = U64.pack(0)
        elif flags & F_NEED_REPLY:
            reply = U64.pack(0 if ok else 1)
        if reply is not None and self._conn is not None:
            self._send(request, reply)

    def _send(self, request: int, payload: bytes) -> None:
        conn = self._conn
        assert conn is not None
        message = HDR.pack(request, VERSION | F_REPLY, len(payload)) + payload
        try:
            sent = conn.send(message)
        except OSError as exc:
            self._end_session(f"send: {exc}")
            return
        if sent != len(message):
            self._end_session("front-end does not read its replies")

    def _dispatch(self, request: int, payload: bytes, fds: list[int]) -> bytes | None:
        if request == GET_FEATURES:
            return U64.pack(OFFERED_FEATURES)
        if request == GET_PROTOCOL_FEATURES:
            return U64.pack(OFFERED_PROTOCOL_FEATURES)
        if request == GET_QUEUE_NUM:
            return U64.pack(self.queues)
        if request == SET_FEATURES:
            self._set_features(_u64(payload))
        elif request == SET_PROTOCOL_FEATURES:
            value = _u64(payload)
            if value & ~OFFERED_PROTOCOL_FEATURES:
                self._error("features", f"protocol features {value:#x} include unoffered bits")
            self.protocol_features = value & OFFERED_PROTOCOL_FEATURES
        elif request == SET_OWNER:
            pass
        elif request in (RESET_OWNER, RESET_DEVICE):
            for i in range(len(self._vqs)):
                self._stop(i)
            if request == RESET_DEVICE:
                self._set_features(0)
        elif request == SET_MEM_TABLE:
            self._set_mem_table(payload, fds)
        elif request == SET_VRING_NUM:
            i, num = self._state(payload)
            if not (0 < num <= 32768) or num & (num - 1):
                raise _Refused("ring", f"queue {i}: size {num} is not a power of two ≤ 32768")
            self._vqs[i].num = num
            self._reconfigured(i)
        elif request == SET_VRING_ADDR:
            if len(payload) < ADDR.size:
                raise _Refused("protocol", f"vring address of {len(payload)} bytes")
            i, _flags, desc, used, avail, _log = ADDR.unpack_from(payload)
            self._check_index(i)
            vq = self._vqs[i]
            vq.desc_addr, vq.used_addr, vq.avail_addr = desc, used, avail
            self._addr_set[i] = True
            self._reconfigured(i)
        elif request == SET_VRING_BASE:
            i, num = self._state(payload)
            self._vqs[i].last_avail = num & 0xFFFF
            self._reconfigured(i)
        elif request == GET_VRING_BASE:
            i, _num = self._state(payload)
            vq = self._vqs[i]
            if vq.bound and vq.flush_used():
                self._signal(i)
            self._stop(i)
            return STATE.pack(i, vq.last_avail)
        elif request in (SET_VRING_KICK, SET_VRING_CALL, SET_VRING_ERR):
            self._set_vring_fd(request, payload, fds)
        elif request == SET_VRING_ENABLE:
            i, num = self._state(payload)
            if num > 1:
                raise _Refused("protocol", f"queue {i}: enable value {num}")
            self._enabled[i] = bool(num)
            self._open_gate()
        else:
            raise _Refused("unknown", f"unsupported request {request}")
        return None

    def _set_features(self, value: int) -> None:
        if value & ~OFFERED_FEATURES:
            self._error("features", f"features {value:#x} include bits we did not offer")
        value &= OFFERED_FEATURES
        self.features = value

        def has(bit: int) -> bool:
            return bool(value >> bit & 1)

        self._mergeable = has(VIRTIO_NET_F_MRG_RXBUF)
        self._hdr_len = (
            VNET_HDR_MRG_LEN if self._mergeable or has(VIRTIO_F_VERSION_1) else VNET_HDR_LEN
        )
        self._guest_csum = has(VIRTIO_NET_F_GUEST_CSUM)
        self._guest_tso4 = has(VIRTIO_NET_F_GUEST_TSO4)
        self._guest_tso6 = has(VIRTIO_NET_F_GUEST_TSO6)
        self._guest_ecn = has(VIRTIO_NET_F_GUEST_ECN)
        for vq in self._vqs:
            vq.event_idx = has(VIRTIO_RING_F_EVENT_IDX)
            vq.indirect = has(VIRTIO_RING_F_INDIRECT_DESC)
        self._open_gate()

    def _check_index(self, i: int) -> None:
        if not 0 <= i < len(self._vqs):
            raise _Refused("protocol", f"queue index {i} (we have {len(self._vqs)} queues)")

    def _state(self, payload: bytes) -> tuple[int, int]:
        if len(payload) < STATE.size:
            raise _Refused("protocol", f"vring state of {len(payload)} bytes")
        i, num = STATE.unpack_from(payload)
        self._check_index(i)
        return i, num

    def _set_vring_fd(self, request: int, payload: bytes, fds: list[int]) -> None:
        value = _u64(payload)
        i = value & VRING_IDX_MASK
        self._check_index(i)
        if value & ~(VRING_IDX_MASK | VRING_NOFD):
            raise _Refused("protocol", f"vring fd payload {value:#x}")
        fd = -1
        if value & VRING_NOFD:
            if fds:
                raise _Refused("fds", "an fd came with the no-fd flag")
        else:
            if len(fds) != 1:
                raise _Refused("fds", f"{len(fds)} fds for one vring notifier")
            fd = fds.pop()
            try:
                _check_notifier(fd)
                os.set_blocking(fd, False)
            except OSError as exc:
                _close_fd(fd)
                raise _Refused("fds", f"queue {i}: unusable notifier fd: {exc}") from None
        if request == SET_VRING_KICK:
            old = self._kick[i]
            if old >= 0:
                self._kick_to_vq.pop(old, None)
                self._retire(old)
            self._kick[i] = fd
            if fd >= 0:
                self._kick_to_vq[fd] = i
                self._fds_dirty = True
            else:
                self._error("polling", f"queue {i}: polling mode (no kick fd) is not supported")
            self._started[i] = True
            self._reconfigured(i)
        elif request == SET_VRING_CALL:
            self._retire_quiet(self._call[i])
            self._call[i] = fd
        else:
            self._retire_quiet(self._err[i])
            self._err[i] = fd

    def _retire_quiet(self, fd: int) -> None:
        # call/err fds are not polled: no need to tell the daemon.
        if fd >= 0:
            self._retired.append(fd)

    def _set_mem_table(self, payload: bytes, fds: list[int]) -> None:
        if len(payload) < MEM_HEAD.size:
            raise _Refused("memory", f"memory table of {len(payload)} bytes")
        n, _pad = MEM_HEAD.unpack_from(payload)
        if not 0 < n <= MAX_REGIONS:
            raise _Refused("memory", f"{n} memory regions (1..{MAX_REGIONS} allowed)")
        if len(payload) < MEM_HEAD.size + n * MEM_REGION.size:
            raise _Refused("memory", f"memory table of {len(payload)} bytes for {n} regions")
        if len(fds) != n:
            raise _Refused("fds", f"{len(fds)} fds for {n} memory regions")
        maps: list[mmap.mmap] = []
        regions: list[Region] = []
        try:
            for k in range(n):
                gpa, size, uva, offset = MEM_REGION.unpack_from(
                    payload, MEM_HEAD.size + k * MEM_REGION.size
                )
                fd = fds[k]
                st = os.fstat(fd)
                length = offset + size
                if not stat.S_ISREG(st.st_mode):
                    raise _Refused("memory", f"region {k}: fd is not a memory file")
                if size == 0 or length > MAX_MAPPING or length > st.st_size:
                    raise _Refused(
                        "memory",
                        f"region {k}: {size} bytes at offset {offset} but the file has "
                        f"{st.st_size}",
                    )
                mm = mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                maps.append(mm)
                regions.append(Region(gpa, size, uva, mm, offset))
        except (OSError, ValueError, OverflowError, RingError) as exc:
            _unmap(maps)
            raise _Refused("memory", f"mapping guest memory: {exc}") from None
        except _Refused:
            _unmap(maps)
            raise
        old = self._maps
        for vq in self._vqs:
            vq.unbind()
        self._mem = GuestMemory(regions)
        self._maps = maps
        for i in range(len(self._vqs)):
            self._refresh(i)
        _unmap(old)

    # -- rings ------------------------------------------------------------------------------------

    def _enabled_eff(self, i: int) -> bool:
        if not self.features >> VHOST_USER_F_PROTOCOL_FEATURES & 1:
            return True
        return self._enabled[i]

    def _ready(self, i: int) -> bool:
        return self._vqs[i].bound and self._broken[i] is None

    def _reconfigured(self, i: int) -> None:
        self._broken[i] = None
        self._refresh(i)

    def _refresh(self, i: int) -> None:
        vq = self._vqs[i]
        vq.unbind()
        if not (self._started[i] and self._addr_set[i] and self._mem is not None):
            return
        if self._broken[i] is not None:
            return
        try:
            vq.bind(self._mem)
        except RingError as exc:
            self._break(i, str(exc))
            return
        self._kick_self(i)  # look at what the guest posted before we were ready
        self._open_gate()

    def _stop(self, i: int) -> None:
        self._started[i] = False
        self._vqs[i].unbind()
        self._retire_vring_fds(i)
        self._open_gate()

    def _break(self, i: int, reason: str) -> None:
        vq = self._vqs[i]
        vq.stats.errors += 1
        self._broken[i] = reason
        self._error("ring", f"queue {i} broken: {reason}")
        err = self._err[i]
        if err >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(err, 1)
        self._open_gate()

    def _signal(self, i: int) -> None:
        fd = self._call[i]
        if fd < 0:
            return
        try:
            os.eventfd_write(fd, 1)
        except BlockingIOError:
            pass
        except OSError as exc:
            self._error("call", f"queue {i}: signalling the guest: {exc}")

    def _kick_self(self, i: int) -> None:
        fd = self._kick[i]
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.eventfd_write(fd, 1)

    def _drain_tx(self, i: int, budget: int) -> list[Frame]:
        if not self._ready(i):
            return []
        vq = self._vqs[i]
        out: list[Frame] = []
        more = False
        try:
            more = vq.pop_tx(budget, self._hdr_len, out if self._enabled_eff(i) else None)
        except RingError as exc:
            if vq.flush_used():
                self._signal(i)
            self._break(i, str(exc))
            return out
        if vq.flush_used():
            self._signal(i)
        if more:
            self._kick_self(i)
        return out

    # -- writing ----------------------------------------------------------------------------------

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

    def _write(self, queue: deque[Frame]) -> int | None:
        if not queue:
            return None
        rings = [
            self._vqs[i]
            for i in range(0, len(self._vqs), 2)
            if self._ready(i) and self._enabled_eff(i)
        ]
        if not rings:
            self.rx_dropped += len(queue)
            queue.clear()
            return None
        hdr_len = self._hdr_len
        mergeable = self._mergeable
        touched: dict[Virtqueue, None] = {}
        budget = WRITE_BUDGET
        retries = 0
        accepts = self.accepts
        while queue and budget > 0:
            frame = queue[0]
            vnet = frame.vnet
            if vnet is not None and not accepts(vnet):
                queue.popleft()
                try:
                    plain = to_plain(frame)
                except Exception as exc:
                    self._error("offload", f"cannot make a plain frame: {exc!r}")
                    self.rx_dropped += 1
                    continue
                queue.extendleft(reversed(plain))
                continue
            data = frame.data
            nr = len(rings)
            first = _flow_hash(data) % nr if nr > 1 else 0
            result = RX_NO_BUFFERS
            for k in range(nr):
                vq = rings[(first + k) % nr]
                try:
                    result = vq.rx_put(data, vnet, hdr_len, mergeable)
                except RingError as exc:
                    if vq.flush_used():
                        self._signal(vq.index)
                    touched.pop(vq, None)
                    self._break(vq.index, str(exc))
                    result = -1
                    break
                if result != RX_NO_BUFFERS:
                    break
            if result == -1:
                rings = [r for r in rings if self._ready(r.index)]
                if not rings:
                    self.rx_dropped += len(queue)
                    queue.clear()
                    break
                continue
            if result == RX_OK:
                touched[vq] = None
            elif result != RX_NO_BUFFERS:  # too big for the guest's buffers
                vq.stats.dropped += 1
            else:
                self._publish(touched)
                touched.clear()
                more = self._rearm(rings)
                rings = [r for r in rings if self._ready(r.index)]
                if not rings:
                    self.rx_dropped += len(queue)
                    queue.clear()
                    break
                if more and retries < 3:
                    retries += 1
                    continue
                return self._close_gate()
            queue.popleft()
            budget -= 1
        self._publish(touched)
        for vq in touched:
            vq.disable_notify()
        return None

    def _publish(self, touched: dict[Virtqueue, None]) -> None:
        for vq in touched:
            if vq.flush_used():
                self._signal(vq.index)

    def _rearm(self, rings: list[Virtqueue]) -> bool:
        """Ask for kicks on the receive rings; True when buffers came meanwhile."""
        seen = [vq.avail_idx_seen() for vq in rings]
        for vq in rings:
            vq.enable_notify()
        more = False
        for vq, before in zip(rings, seen, strict=True):
            try:
                vq.available()
            except RingError as exc:
                self._break(vq.index, str(exc))
                more = True  # the ring set changed: look again
                continue
            if vq.avail_idx_seen() != before:
                more = True
        return more


class _Refused(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _u64(payload: bytes) -> int:
    if len(payload) < U64.size:
        raise _Refused("protocol", f"u64 payload of {len(payload)} bytes")
    value: int = U64.unpack_from(payload)[0]
    return value


def _flow_hash(data: bytes) -> int:
    """Hash of the IP addresses and ports (not of fields that change per packet)."""
    if len(data) >= 38 and data[12] == 0x08 and data[13] == 0x00:
        return hash(data[26:38])
    if len(data) >= 58 and data[12] == 0x86 and data[13] == 0xDD:
        return hash(data[22:58])
    return hash(data[0:12])


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
