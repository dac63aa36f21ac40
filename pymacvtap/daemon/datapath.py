"""The data path: the loop's "breath" that moves frames between lowers, engine and frontends.

Per loop iteration:

1. every readable lower / frontend fd is drained in a batch into the engine
   (``Port.forward_from_lower`` / ``Port.forward_from_endpoint``);
2. the after-poll hook (:meth:`SoftwarePath.breathe`) settles deferred floods
   (the broadcast queue), writes each ready endpoint's queue to its frontend and
   each lower's queue to the wire.  A frontend or lower that is full is polled
   for writability instead of spun on; frames beyond its bounded queue are
   counted drops.

The rest of the daemon reaches the data path only through :class:`DataPath`:
a lower or an endpoint is attached when it comes into use and detached before
it goes.  That is where a second data path (a kernel fast path) plugs in: it
implements the same hooks, and the engine stays the one place of the policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from pymacvtap.core.frame import Frame
from pymacvtap.daemon.runtime import EndpointRuntime, LowerRuntime
from pymacvtap.io.loop import Loop

RX_BATCH = 64  # frames read from one fd per wake-up before serving the others
BROADCAST_BUDGET = 256  # flood copies settled per breath, so unicast is not starved


class DataPath(Protocol):
    """What the daemon tells a data path: lowers and endpoints coming and going."""

    def attach_lower(self, lower: LowerRuntime) -> None: ...

    def detach_lower(self, lower: LowerRuntime) -> None: ...

    def attach_endpoint(self, rt: EndpointRuntime) -> None:
        """Start (or, when its frontend's fds changed, go on) moving the endpoint's frames."""

    def detach_endpoint(self, rt: EndpointRuntime) -> None: ...

    def changed(self) -> None:
        """The engine's configuration or a capture changed: bring what mirrors it up to date."""

    def harvest(self) -> None:
        """Bring the engine's counters up to date with what was counted elsewhere (kernel)."""

    def counters(self) -> dict[str, int]:
        """The data path's own counts of frames charged to no endpoint or lower, by name."""
        ...

    def close(self) -> None:
        """Stop: whatever the data path put outside this process is taken away."""


class SoftwarePath:
    """Every frame through the engine in this process, in batches (see the module docstring)."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        # What is attached, by name; the breath visits lowers in this order.
        self.lowers: dict[str, LowerRuntime] = {}
        self.endpoints: dict[str, EndpointRuntime] = {}
        # What brings the engine up to date with the kernel's link events (the daemon's
        # KernelFollower.catch_up), called before frames from an endpoint believed down
        # are decided: a container's netdev that sends is up, and the RTM_NEWLINK saying
        # so may be waiting unread behind the frame.
        self.catch_up: Callable[[], None] | None = None
        loop.after_poll(self.breathe)

    # -- DataPath ----------------------------------------------------------------------

    def attach_lower(self, lower: LowerRuntime) -> None:
        self.lowers[lower.port.name] = lower
        self.loop.add_reader(lower.sock.fileno(), self._lower_reader(lower))

    def detach_lower(self, lower: LowerRuntime) -> None:
        self.loop.forget(lower.sock.fileno())
        self.lowers.pop(lower.port.name, None)

    def attach_endpoint(self, rt: EndpointRuntime) -> None:
        """Register the frontend's current fds with the loop (they change as VMs come and go)."""
        self.endpoints[rt.cfg.name] = rt
        wanted = set(rt.frontend.readable_fds())
        for fd in rt.fds - wanted:
            self.loop.remove_reader(fd)
        if rt.blocked is not None and rt.blocked not in wanted:
            # The peer we waited on to drain may be gone (a VM disconnected while
            # full), or the fd was never one we read (vhost-user's gate, whatever fd
            # changed): stop waiting on it and write again, which waits anew if the
            # peer is still full; else frames already queued would wait for the next.
            self.loop.remove_writer(rt.blocked)
            rt.blocked = None
            if rt.ep.port is not None and rt.ep.rx_queue:
                rt.ep.port.ready[rt.ep] = None
        for fd in wanted - rt.fds:
            self.loop.add_reader(fd, self._reader(rt, fd))
        rt.fds = wanted

    def detach_endpoint(self, rt: EndpointRuntime) -> None:
        if self.endpoints.get(rt.cfg.name) is rt:
            del self.endpoints[rt.cfg.name]
        for fd in rt.fds:
            self.loop.forget(fd)
        rt.fds = set()
        if rt.blocked is not None:
            self.loop.forget(rt.blocked)
            rt.blocked = None

    def changed(self) -> None:
        """Nothing to do: the engine is read frame by frame."""

    def harvest(self) -> None:
        """Nothing to do: every frame is counted by the engine as it passes."""

    def counters(self) -> dict[str, int]:
        """None: every frame is some endpoint's or lower's."""
        return {}

    def close(self) -> None:
        """Nothing outside the process to take away."""

    # -- reading -----------------------------------------------------------------------

    @staticmethod
    def _captured(rt: EndpointRuntime, direction: str, frames: list[Frame]) -> None:
        for capture in rt.captures or ():
            for frame in frames:
                capture(direction, frame)

    def _reader(self, rt: EndpointRuntime, fd: int) -> Callable[[], None]:
        frontend = rt.frontend
        ep = rt.ep
        loop = self.loop
        from_endpoint = self.from_endpoint
        # Reading until the fd is empty costs one more read that fails (EAGAIN) per
        # wake-up, which is most of a lone frame's reading cost.  Where the fd is
        # level-triggered, a fd that was not ready on the previous poll gets one
        # frame read: if more wait, the next poll says so at once and the reader
        # batches from then on.
        single_first = frontend.level_triggered
        last = -2

        def on_readable() -> None:
            nonlocal last
            if ep.port is None:
                return
            now = loop.iteration
            budget = 1 if single_first and now != last + 1 else RX_BATCH
            last = now
            frames = frontend.read(fd, budget)
            if frames:
                from_endpoint(rt, frames)

        return on_readable

    def from_endpoint(self, rt: EndpointRuntime, frames: list[Frame]) -> None:
        """A batch the endpoint sent, captured and handed to the engine (whichever fd it
        was read from: the frontend's, or on the fast path the inbox)."""
        ep = rt.ep
        if not ep.up and rt.cfg.kind.netdev_is_endpoint and self.catch_up is not None:
            # A container's netdev that sends is up: the engine holds it down only until
            # it has caught up with the link events (then drops them if it still is).
            self.catch_up()
        port = ep.port
        if port is None:
            return
        if rt.captures is not None:
            self._captured(rt, "tx", frames)
        forward = port.forward_from_endpoint
        for frame in frames:
            forward(ep, frame)

    @staticmethod
    def _lower_reader(lower: LowerRuntime) -> Callable[[], None]:
        sock = lower.sock
        from_lower = lower.port.forward_from_lower

        def on_readable() -> None:
            for frame in sock.recv_batch(RX_BATCH):
                from_lower(frame)

        return on_readable

    # -- the breath --------------------------------------------------------------------

    def breathe(self) -> bool:
        """Settle floods, then flush every queue the readers filled.  True: work left."""
        more = False
        for lower in self.lowers.values():
            port = lower.port
            if port.bc_queue:
                port.process_broadcasts(BROADCAST_BUDGET)
                if port.bc_queue:
                    more = True
            if port.ready:
                ready = list(port.ready)
                port.ready.clear()
                for ep in ready:
                    rt = self.endpoints.get(ep.name)
                    if rt is None or rt.blocked is not None:
                        continue
                    if rt.captures is not None:
                        pending = list(ep.rx_queue)
                        fd = rt.frontend.write(ep.rx_queue)
                        self._captured(rt, "rx", pending[: len(pending) - len(ep.rx_queue)])
                    else:
                        fd = rt.frontend.write(ep.rx_queue)
                    if fd is not None:
                        rt.blocked = fd
                        self.loop.add_writer(fd, self._unblock_endpoint(rt, fd))
                    elif ep.rx_queue:
                        port.ready[ep] = None
                        more = True
            if port.tx_queue and not lower.blocked:
                self._flush_lower(lower)
        return more

    def _flush_lower(self, lower: LowerRuntime) -> None:
        queue = lower.port.tx_queue
        _sent, rejected = lower.sock.send_batch(queue)
        if rejected:
            # The lower refused these frames (down, too big for it): count them.
            lower.port.stats.tx_errors += rejected
        if queue:
            # Socket full: the rest waits until it is writable.
            lower.blocked = True
            self.loop.add_writer(lower.sock.fileno(), lambda: self._unblock_lower(lower))

    def _unblock_lower(self, lower: LowerRuntime) -> None:
        self.loop.remove_writer(lower.sock.fileno())
        lower.blocked = False
        self._flush_lower(lower)

    def _unblock_endpoint(self, rt: EndpointRuntime, fd: int) -> Callable[[], None]:
        def writable() -> None:
            self.loop.remove_writer(fd)
            rt.blocked = None
            port = rt.ep.port
            if port is not None and rt.ep.rx_queue:
                port.ready[rt.ep] = None

        return writable
