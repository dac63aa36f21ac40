"""The virtqueues of a vhost-user net device: their state, their notifiers, frames in and out.

Queue 2k is pair k's receive ring (we fill the guest's buffers), 2k+1 its transmit ring (we
read what the guest sends).  A ring moves frames once it is *ready*: started (a kick fd, or
the start that SET_VRING_KICK means), its addresses set, guest memory mapped, and its
addresses inside that memory; and *enabled* (SET_VRING_ENABLE, when the protocol features say
rings start disabled).  A ring the guest breaks stays broken until the front-end configures it
again; the other rings go on.

What needs a syscall (signalling an eventfd, closing one) is queued as an action (see
:mod:`pymacvtap.virtio.actions`) on the list shared with the device.
"""

from __future__ import annotations

from collections import deque

from pymacvtap.core.frame import Frame
from pymacvtap.virtio.actions import KICKS_CHANGED, WAKE_WRITER, Action, Close, Fault, Notify
from pymacvtap.virtio.features import Negotiated
from pymacvtap.virtio.memory import GuestMemory, RingError
from pymacvtap.virtio.messages import Refused
from pymacvtap.virtio.offload import to_plain
from pymacvtap.virtio.virtqueue import RX_NO_BUFFERS, RX_OK, Virtqueue

# Rounds in a row of "out of buffers, re-arm the kick, buffers came meanwhile" (each too few
# for the frame) before write() stops and kicks itself: bounds the work one write does
# against a guest that adds buffers one at a time.
_REARM_RETRIES = 3


class Rings:
    """The ``2 * queues`` virtqueues of one device and what each needs besides its ring."""

    def __init__(self, queues: int, actions: list[Action]) -> None:
        n = 2 * queues
        self.vqs = [Virtqueue(i) for i in range(n)]
        self._actions = actions
        self.rx_dropped = 0  # frames for a guest that could not receive at all
        self.kick = [-1] * n  # notifier fds per ring, -1 for none
        self.call = [-1] * n
        self.err = [-1] * n
        self.kick_to_vq: dict[int, int] = {}
        self.reset()

    def reset(self) -> None:
        """Back to a fresh session: every notifier let go, nothing configured, counters kept."""
        for i in range(len(self.vqs)):
            self._let_go(i)
        n = len(self.vqs)
        self.negotiated = Negotiated()
        self.memory: GuestMemory | None = None
        self.started = [False] * n
        self.enabled = [False] * n
        self.addr_set = [False] * n
        self.broken: list[str | None] = [None] * n
        for vq in self.vqs:
            vq.reset()

    # -- configuration (from the device's messages) ---------------------------------------------

    def check_index(self, i: int) -> None:
        if not 0 <= i < len(self.vqs):
            raise Refused("protocol", f"queue index {i} (we have {len(self.vqs)} queues)")

    def set_features(self, negotiated: Negotiated) -> None:
        self.negotiated = negotiated
        for vq in self.vqs:
            vq.event_idx = negotiated.event_idx
            vq.indirect = negotiated.indirect
        self._actions.append(WAKE_WRITER)

    def set_memory(self, memory: GuestMemory) -> None:
        """Rebind every ring to new guest memory; the old one is no longer referenced after."""
        for vq in self.vqs:
            vq.unbind()
        self.memory = memory
        for i in range(len(self.vqs)):
            self._refresh(i)

    def set_num(self, i: int, num: int) -> None:
        self.vqs[i].num = num
        self.reconfigured(i)

    def set_addr(self, i: int, desc: int, used: int, avail: int) -> None:
        vq = self.vqs[i]
        vq.desc_addr, vq.used_addr, vq.avail_addr = desc, used, avail
        self.addr_set[i] = True
        self.reconfigured(i)

    def set_base(self, i: int, num: int) -> None:
        self.vqs[i].last_avail = num & 0xFFFF
        self.reconfigured(i)

    def get_base(self, i: int) -> int:
        """Stop ring ``i`` (GET_VRING_BASE) and say where the front-end resumes it."""
        vq = self.vqs[i]
        if vq.bound and vq.flush_used():
            self._signal(i)
        self.stop(i)
        return vq.last_avail

    def set_kick(self, i: int, fd: int) -> None:
        """A new kick fd (-1: none, polling mode); it also starts the ring."""
        old = self.kick[i]
        if old >= 0:
            self.kick_to_vq.pop(old, None)
            self._actions.append(Close(old))
        self.kick[i] = fd
        if fd >= 0:
            self.kick_to_vq[fd] = i
        else:
            self._fault("polling", f"queue {i}: polling mode (no kick fd) is not supported")
        if old >= 0 or fd >= 0:
            self._actions.append(KICKS_CHANGED)
        self.started[i] = True
        self.reconfigured(i)

    def set_call(self, i: int, fd: int) -> None:
        if self.call[i] >= 0:
            self._actions.append(Close(self.call[i]))
        self.call[i] = fd

    def set_err(self, i: int, fd: int) -> None:
        if self.err[i] >= 0:
            self._actions.append(Close(self.err[i]))
        self.err[i] = fd

    def set_enabled(self, i: int, enabled: bool) -> None:
        self.enabled[i] = enabled
        self._actions.append(WAKE_WRITER)

    def stop(self, i: int) -> None:
        self.started[i] = False
        self.vqs[i].unbind()
        self._let_go(i)
        self._actions.append(WAKE_WRITER)

    def reconfigured(self, i: int) -> None:
        """The front-end set the ring up again: whatever broke it is forgiven."""
        self.broken[i] = None
        self._refresh(i)

    # -- state -----------------------------------------------------------------------------------

    def is_enabled(self, i: int) -> bool:
        return not self.negotiated.rings_need_enable or self.enabled[i]

    def ready(self, i: int) -> bool:
        return self.vqs[i].bound and self.broken[i] is None

    def kick_fds(self) -> list[int]:
        return [fd for fd in self.kick if fd >= 0]

    def queue_stats(self) -> list[dict[str, int | str]]:
        """Per virtqueue: rx (to the guest, even queues) and tx (from it, odd queues)."""
        out: list[dict[str, int | str]] = []
        for vq in self.vqs:
            entry: dict[str, int | str] = {
                "queue": vq.index,
                "pair": vq.index // 2,
                "direction": "tx" if vq.index & 1 else "rx",
            }
            entry.update(vq.stats.as_dict())
            out.append(entry)
        return out

    def ring_state(self, i: int) -> dict[str, object]:
        vq = self.vqs[i]
        return {
            "started": self.started[i],
            "enabled": self.is_enabled(i),
            "bound": vq.bound,
            "broken": self.broken[i],
            "last_avail": vq.last_avail,
            "used_idx": vq.used_idx,
        }

    # -- frames ------------------------------------------------------------------------------------

    def kicked(self, i: int, budget: int) -> list[Frame]:
        """The guest kicked ring ``i``: its frames when it is a transmit ring (at most
        ``budget``; the kick is re-armed when more are left)."""
        if not i & 1:
            self._actions.append(WAKE_WRITER)  # receive buffers may have come
            return []
        if not self.ready(i):
            return []
        vq = self.vqs[i]
        out: list[Frame] = []
        more = False
        try:
            more = vq.pop_tx(budget, self.negotiated.hdr_len, out if self.is_enabled(i) else None)
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

    def write(self, queue: deque[Frame], budget: int) -> bool:
        """Place up to ``budget`` frames of ``queue`` in the guest's receive buffers.

        Frames placed (or dropped: too big for the guest, not made plain, no ring to take
        them) leave ``queue``.  Returns True when the guest has no buffers left and frames
        wait: write again after the next WAKE_WRITER.
        """
        if not queue:
            return False
        rings = [
            self.vqs[i] for i in range(0, len(self.vqs), 2) if self.ready(i) and self.is_enabled(i)
        ]
        if not rings:
            self.rx_dropped += len(queue)
            queue.clear()
            return False
        hdr_len = self.negotiated.hdr_len
        mergeable = self.negotiated.mergeable
        accepts = self.negotiated.accepts
        touched: dict[Virtqueue, None] = {}
        retries = 0
        while queue and budget > 0:
            frame = queue[0]
            vnet = frame.vnet
            if vnet is not None and not accepts(vnet):
                self._make_plain(queue)
                continue
            data = frame.data
            nr = len(rings)
            first = flow_hash(data) % nr if nr > 1 else 0
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
                rings = [r for r in rings if self.ready(r.index)]
                if not rings:
                    self.rx_dropped += len(queue)
                    queue.clear()
                    break
                continue
            if result == RX_OK:
                touched[vq] = None
                retries = 0
            elif result != RX_NO_BUFFERS:  # too big for the guest's buffers
                vq.stats.dropped += 1
            else:
                self._publish(touched)
                touched.clear()
                more = self._rearm(rings)
                rings = [r for r in rings if self.ready(r.index)]
                if not rings:
                    self.rx_dropped += len(queue)
                    queue.clear()
                    break
                if more:
                    if retries < _REARM_RETRIES:
                        retries += 1
                        continue
                    # Buffers keep coming, each time too few: stop here, but the guest
                    # may have added them before it could see the re-armed avail_event
                    # (and so not kicked): the kick it owes us is ours to give.
                    for r in rings:
                        self._kick_self(r.index)
                return True
            queue.popleft()
            budget -= 1
        self._publish(touched)
        for vq in touched:
            vq.disable_notify()
        return False

    def _make_plain(self, queue: deque[Frame]) -> None:
        """Replace the head of ``queue`` by its plain frames (segmented, checksummed)."""
        frame = queue.popleft()
        try:
            plain = to_plain(frame)
        except Exception as exc:
            self._fault("offload", f"cannot make a plain frame: {exc!r}")
            self.rx_dropped += 1
            return
        queue.extendleft(reversed(plain))

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

    # -- inside -----------------------------------------------------------------------------------

    def _refresh(self, i: int) -> None:
        vq = self.vqs[i]
        vq.unbind()
        if not (self.started[i] and self.addr_set[i] and self.memory is not None):
            return
        if self.broken[i] is not None:
            return
        try:
            vq.bind(self.memory)
        except RingError as exc:
            self._break(i, str(exc))
            return
        self._kick_self(i)  # look at what the guest posted before we were ready
        self._actions.append(WAKE_WRITER)

    def _break(self, i: int, reason: str) -> None:
        self.vqs[i].stats.errors += 1
        self.broken[i] = reason
        self._fault("ring", f"queue {i} broken: {reason}")
        if self.err[i] >= 0:
            self._actions.append(Notify(self.err[i], i, "err"))
        self._actions.append(WAKE_WRITER)

    def _let_go(self, i: int) -> None:
        """Close ring ``i``'s notifiers (the kick stops being polled)."""
        kick = self.kick[i]
        if kick >= 0:
            self.kick_to_vq.pop(kick, None)
            self._actions.append(Close(kick))
            self._actions.append(KICKS_CHANGED)
            self.kick[i] = -1
        for fds in (self.call, self.err):
            if fds[i] >= 0:
                self._actions.append(Close(fds[i]))
                fds[i] = -1

    def _signal(self, i: int) -> None:
        if self.call[i] >= 0:
            self._actions.append(Notify(self.call[i], i, "call"))

    def _kick_self(self, i: int) -> None:
        if self.kick[i] >= 0:
            self._actions.append(Notify(self.kick[i], i, "kick"))

    def _fault(self, kind: str, message: str) -> None:
        self._actions.append(Fault(kind, message))


def flow_hash(data: bytes) -> int:
    """Hash of the IP addresses and ports (not of fields that change per packet)."""
    if len(data) >= 38 and data[12] == 0x08 and data[13] == 0x00:
        return hash(data[26:38])
    if len(data) >= 58 and data[12] == 0x86 and data[13] == 0xDD:
        return hash(data[22:58])
    return hash(data[0:12])
