"""The vhost-user net device as a state machine: messages in, actions out.

One :class:`Device` per back-end socket, living across sessions (front-end connections).
The I/O layer feeds it each whole message (:meth:`Device.receive`) and each kick
(``device.rings.kicked``), hands it frames for the guest (``device.rings.write``), and carries
out what it asks for (:meth:`Device.take_actions`): replies, eventfd signals, fds to close,
guest memory to map.  Nothing here raises on what a front-end or a guest sends: a bad message
is refused (counted as a :class:`~pymacvtap.virtio.actions.Fault`, NACKed when the front-end
asked for a reply); a bad ring breaks that ring only (see :mod:`pymacvtap.virtio.rings`).

Mapping guest memory takes two steps because only the I/O layer can map: SET_MEM_TABLE yields
a :class:`~pymacvtap.virtio.actions.MapMemory`, and the reply comes once the I/O layer has
answered with :meth:`Device.memory_mapped` or :meth:`Device.memory_refused`.
"""

from __future__ import annotations

from collections.abc import Sequence

from pymacvtap.virtio import features
from pymacvtap.virtio import messages as m
from pymacvtap.virtio.actions import Action, Fault, MapMemory, Reply, SendRarp
from pymacvtap.virtio.memory import RegionSpec, RingError, guest_memory, memory_table
from pymacvtap.virtio.rings import Rings
from pymacvtap.virtio.virtqueue import MAX_QUEUE_SIZE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pymacvtap.virtio.memory import RawMemory

MAX_QUEUE_PAIRS = 128  # one vring index byte holds 256 queues

_GETS = (m.GET_FEATURES, m.GET_PROTOCOL_FEATURES, m.GET_QUEUE_NUM)


class _Later:
    """A reply that waits for the I/O layer (SET_MEM_TABLE)."""


_LATER = _Later()


class Device:
    """A vhost-user net device with ``queues`` queue pairs."""

    def __init__(self, queues: int = 1) -> None:
        if not 1 <= queues <= MAX_QUEUE_PAIRS:
            raise ValueError(f"queues must be 1..{MAX_QUEUE_PAIRS}, not {queues}")
        self.queues = queues
        self._actions: list[Action] = []
        self.rings = Rings(queues, self._actions)
        self.messages = 0  # messages received, in all sessions
        self.features = 0
        self.protocol_features = 0
        self._mapping: tuple[m.Message, list[RegionSpec]] | None = None

    def reset(self) -> None:
        """End the session: every fd let go (as Close actions), nothing negotiated."""
        self.rings.reset()
        self.features = 0
        self.protocol_features = 0
        self._mapping = None

    def take_actions(self) -> list[Action]:
        """What to do, in order, since the last call."""
        actions = self._actions[:]
        self._actions.clear()
        return actions

    @property
    def has_actions(self) -> bool:
        return bool(self._actions)

    # -- messages ----------------------------------------------------------------------------------

    def receive(self, message: m.Message) -> None:
        """Act on one message.  The fds the device keeps are taken out of ``message.fds``."""
        self.messages += 1
        try:
            result = self._dispatch(message)
        except m.Refused as exc:
            self._answer(message, exc)
            return
        if not isinstance(result, _Later):
            self._answer(message, result)

    def memory_mapped(self, buffers: Sequence[RawMemory]) -> bool:
        """The regions of the last MapMemory are mapped, in its order.

        True when the device now uses them (the I/O layer may unmap the previous ones);
        False when it refused them (the I/O layer unmaps these).
        """
        message, specs = self._take_mapping()
        try:
            memory = guest_memory(specs, buffers)
        except RingError as exc:
            self._answer(message, m.Refused("memory", f"mapping guest memory: {exc}"))
            return False
        self.rings.set_memory(memory)
        self._answer(message, None)
        return True

    def memory_refused(self, reason: str) -> None:
        """The regions of the last MapMemory could not be mapped."""
        message, _specs = self._take_mapping()
        self._answer(message, m.Refused("memory", f"mapping guest memory: {reason}"))

    def _take_mapping(self) -> tuple[m.Message, list[RegionSpec]]:
        if self._mapping is None:
            raise RuntimeError("no memory table is waiting to be mapped")
        mapping, self._mapping = self._mapping, None
        return mapping

    def _answer(self, message: m.Message, result: bytes | m.Refused | None) -> None:
        """Reply as the protocol wants: GETs always, others with REPLY_ACK when asked."""
        request = message.request
        ok = not isinstance(result, m.Refused)
        if isinstance(result, m.Refused):
            self._actions.append(Fault(result.kind, f"request {request}: {result}"))
        if isinstance(result, bytes):
            reply: bytes | None = result
        elif request == m.GET_VRING_BASE and not ok:
            reply = m.STATE.pack(0, 0)
        elif request in _GETS and not ok:
            reply = m.U64.pack(0)
        elif message.need_reply:
            reply = m.U64.pack(0 if ok else 1)
        else:
            reply = None
        if reply is not None:
            self._actions.append(Reply(request, reply))

    def _dispatch(self, message: m.Message) -> bytes | _Later | None:
        request = message.request
        payload = message.payload
        rings = self.rings
        if request == m.GET_FEATURES:
            return m.U64.pack(features.OFFERED_FEATURES)
        if request == m.GET_PROTOCOL_FEATURES:
            return m.U64.pack(features.OFFERED_PROTOCOL_FEATURES)
        if request == m.GET_QUEUE_NUM:
            return m.U64.pack(self.queues)
        if request == m.SET_FEATURES:
            self._set_features(m.u64(payload))
        elif request == m.SET_PROTOCOL_FEATURES:
            requested = m.u64(payload)
            value, unoffered = features.negotiate_protocol(requested)
            if unoffered:
                self._fault("features", f"protocol features {requested:#x} include unoffered bits")
            self.protocol_features = value
        elif request == m.SET_OWNER:
            pass
        elif request in (m.RESET_OWNER, m.RESET_DEVICE):
            for i in range(len(rings.vqs)):
                rings.stop(i)
            if request == m.RESET_DEVICE:
                self._set_features(0)
        elif request == m.SET_MEM_TABLE:
            self._mapping = (message, memory_table(payload, message.fds))
            self._actions.append(MapMemory(tuple(self._mapping[1])))
            return _LATER
        elif request == m.SET_VRING_NUM:
            i, num = self._vring_state(payload)
            if not (0 < num <= MAX_QUEUE_SIZE) or num & (num - 1):
                raise m.Refused(
                    "ring", f"queue {i}: size {num} is not a power of two ≤ {MAX_QUEUE_SIZE}"
                )
            rings.set_num(i, num)
        elif request == m.SET_VRING_ADDR:
            i, desc, used, avail = m.vring_addr(payload)
            rings.check_index(i)
            rings.set_addr(i, desc, used, avail)
        elif request == m.SET_VRING_BASE:
            i, num = self._vring_state(payload)
            rings.set_base(i, num)
        elif request == m.GET_VRING_BASE:
            i, _num = self._vring_state(payload)
            return m.STATE.pack(i, rings.get_base(i))
        elif request in (m.SET_VRING_KICK, m.SET_VRING_CALL, m.SET_VRING_ERR):
            self._set_vring_fd(message)
        elif request == m.SET_VRING_ENABLE:
            i, num = self._vring_state(payload)
            if num > 1:
                raise m.Refused("protocol", f"queue {i}: enable value {num}")
            rings.set_enabled(i, bool(num))
        elif request == m.SEND_RARP:
            if not self.protocol_features & features.bits(features.PROTOCOL_F_RARP):
                raise m.Refused("protocol", "SEND_RARP without the RARP protocol feature")
            if len(payload) < 6:
                raise m.Refused("protocol", f"SEND_RARP with {len(payload)} bytes of payload")
            self._actions.append(SendRarp(bytes(payload[:6])))
        else:
            raise m.Refused("unknown", f"unsupported request {request}")
        return None

    def _set_features(self, value: int) -> None:
        negotiated, unoffered = features.negotiate(value)
        if unoffered:
            self._fault("features", f"features {value:#x} include bits we did not offer")
        self.features = negotiated.value
        self.rings.set_features(negotiated)

    def _vring_state(self, payload: bytes) -> tuple[int, int]:
        i, num = m.vring_state(payload)
        self.rings.check_index(i)
        return i, num

    def _set_vring_fd(self, message: m.Message) -> None:
        i, with_fd = m.vring_fd(message.payload)
        self.rings.check_index(i)
        fds = message.fds
        number = -1
        if not with_fd:
            if fds:
                raise m.Refused("fds", "an fd came with the no-fd flag")
        else:
            if len(fds) != 1:
                raise m.Refused("fds", f"{len(fds)} fds for one vring notifier")
            if fds[0].notifier_error is not None:
                raise m.Refused("fds", f"queue {i}: unusable notifier fd: {fds[0].notifier_error}")
            number = fds.pop().number
        if message.request == m.SET_VRING_KICK:
            self.rings.set_kick(i, number)
        elif message.request == m.SET_VRING_CALL:
            self.rings.set_call(i, number)
        else:
            self.rings.set_err(i, number)

    def _fault(self, kind: str, message: str) -> None:
        self._actions.append(Fault(kind, message))
