"""DHCP kept by the daemon: one sans-I/O DhcpClient per endpoint with ``dhcp on``.

The client speaks through the engine as the endpoint would: what it sends goes
in with ``forward_from_endpoint`` (so mode, hairpin and spoofchk apply as to the
container's own frames), and it sees every frame the endpoint is handed (a
capture hook on the endpoint, which the data path already calls for ``rx``).
Its clock is the wall clock, so a lease saved in the state means the same to
the next daemon: a restart, even after SIGKILL, resumes with INIT-REBOOT.

The lease is put on the container's netdev wherever that netdev is now: a
reconcile tick compares what was applied (namespace, name, address) with what
should be and applies again when they differ, because Docker moves the netdev
into the container (which flushes its addresses) and renames it after the
endpoint was created, and brings it up later still.  A client starts once its
endpoint is up: frames from a down endpoint go nowhere.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from pymacvtap.core.dhcp import (
    DhcpClient,
    Lease,
    LeaseAcquired,
    LeaseError,
    LeaseLost,
    LeaseRenewed,
    State,
    client_id_for,
)
from pymacvtap.core.frame import Frame
from pymacvtap.daemon.config import EndpointConfig
from pymacvtap.daemon.lowers import Lowers
from pymacvtap.daemon.runtime import Capture, EndpointRuntime
from pymacvtap.io import ipconfig
from pymacvtap.io.loop import Loop, Timer

log = logging.getLogger("pymacvtap")

RECONCILE_SECONDS = 0.25  # how soon an up endpoint starts, a moved netdev gets its address back


class LeaseOwner(Protocol):
    """What keeping leases needs of whoever owns the endpoints (the service)."""

    @property
    def endpoints(self) -> Mapping[str, EndpointRuntime]: ...

    def save(
        self, where: str, *, put: Sequence[EndpointConfig] = (), delete: Sequence[str] = ()
    ) -> None: ...

    def emit(self, event: dict[str, Any]) -> None: ...


class _Kept:
    """One endpoint's client and what of its lease is on the netdev."""

    __slots__ = ("applied", "client", "hook", "rt", "started", "timer")

    def __init__(self, rt: EndpointRuntime, client: DhcpClient) -> None:
        self.rt = rt
        self.client = client
        self.started = False
        self.timer: Timer | None = None
        self.applied: tuple[str | None, str, str] | None = None  # netns, netdev, interface
        self.hook: Capture | None = None  # how it sees the endpoint's frames


class DhcpKeeper:
    """The clients of the endpoints with ``dhcp on``."""

    def __init__(self, loop: Loop, lowers: Lowers, owner: LeaseOwner) -> None:
        self.loop = loop
        self.lowers = lowers
        self.owner = owner
        self._kept: dict[str, _Kept] = {}
        self._tick: Timer | None = None

    def keep(self, rt: EndpointRuntime) -> None:
        """Keep a lease for the endpoint (a saved one is resumed once it is up)."""
        cfg = rt.cfg
        client = DhcpClient(
            rt.ep.mac,
            os.urandom,
            client_id=client_id_for(cfg.name, rt.ep.mac),
            hostname=cfg.hostname or cfg.name,
        )
        kept = _Kept(rt, client)
        self._kept[cfg.name] = kept

        def on_frame(direction: str, frame: Frame) -> None:
            if direction == "rx" and kept.started:
                client.receive_frame(frame.data, time.time())
                # Not from inside the data path's breath: its next timer turn.
                self.loop.call_later(0, lambda: self._pump(kept))

        rt.captures = [*(rt.captures or []), on_frame]
        kept.hook = on_frame
        if self._tick is None:  # one reconcile chain for all the endpoints
            self._tick = self.loop.call_later(0, self._reconcile)

    def stop(self, rt: EndpointRuntime, *, release: bool) -> None:
        """Stop keeping the endpoint's lease; ``release`` it to the server first (link del)."""
        kept = self._kept.pop(rt.cfg.name, None)
        if kept is None:
            return
        if kept.timer is not None:
            kept.timer.cancel()
        if rt.captures is not None and kept.hook in rt.captures:
            rt.captures = [c for c in rt.captures if c is not kept.hook] or None
        if release and kept.started:
            kept.client.release(time.time())
            # Straight onto the wire, not through the engine: by link del the netdev is
            # often down (Docker sets it down to move it out of the container), and the
            # engine drops what a down endpoint sends; the lower may also go with this
            # endpoint before the next breath.  A RELEASE is unicast to the LAN's server.
            frames = deque(Frame(data) for data in kept.client.frames_to_send())
            lower = self.lowers.get(rt.cfg.link)
            if lower is not None and frames:
                lower.sock.send_batch(frames)
                log.info("%s: dhcp: lease released", rt.cfg.name)

    # -- driving the clients ---------------------------------------------------------------

    def _reconcile(self) -> None:
        """Start clients whose endpoint came up; put leases back where the netdev is now."""
        self._tick = None
        for kept in list(self._kept.values()):
            rt = kept.rt
            if not kept.started and rt.ep.up:
                kept.started = True
                kept.client.start(time.time(), _saved(rt))
                self._pump(kept)
            self._apply(kept)
        if self._kept:
            self._tick = self.loop.call_later(RECONCILE_SECONDS, self._reconcile)

    def _pump(self, kept: _Kept) -> None:
        """Send what the client queued, act on its events, and set its timer."""
        if self._kept.get(kept.rt.cfg.name) is not kept:
            return
        client, rt = kept.client, kept.rt
        self._send(kept)
        while (event := client.next_event()) is not None:
            if isinstance(event, LeaseAcquired | LeaseRenewed):
                rt.cfg.lease = event.lease.to_dict()
                kind = "acquired" if isinstance(event, LeaseAcquired) else "renewed"
                log.info("%s: dhcp: %s %s", rt.cfg.name, kind, event.lease.interface)
                self._apply(kept)
                self.owner.save(f"dhcp {rt.cfg.name}", put=[rt.config()])
                self.owner.emit({"event": f"dhcp.{kind}", "ifname": rt.cfg.name,
                                 "address": event.lease.interface})  # fmt: skip
            elif isinstance(event, LeaseLost):
                log.info("%s: dhcp: lost %s (%s)", rt.cfg.name, event.lease.interface,
                         event.reason)  # fmt: skip
                rt.cfg.lease = None
                if kept.applied is not None:
                    netns, netdev, interface = kept.applied
                    ipconfig.take_address(netdev, netns, interface)
                    kept.applied = None
                self.owner.save(f"dhcp {rt.cfg.name}", put=[rt.config()])
                self.owner.emit({"event": "dhcp.lost", "ifname": rt.cfg.name,
                                 "reason": event.reason})  # fmt: skip
        if kept.timer is not None:
            kept.timer.cancel()
            kept.timer = None
        when = client.get_timer()
        if when is not None:
            kept.timer = self.loop.call_later(
                max(0.0, when - time.time()), lambda: self._fire(kept)
            )

    def _fire(self, kept: _Kept) -> None:
        kept.timer = None
        kept.client.handle_timer(time.time())
        self._pump(kept)

    def _send(self, kept: _Kept) -> None:
        ep = kept.rt.ep
        frames = kept.client.frames_to_send()
        if ep.port is None:
            return
        for data in frames:
            ep.port.forward_from_endpoint(ep, Frame(data))

    def _apply(self, kept: _Kept) -> None:
        """The bound lease onto the netdev, if it is not there already (and the netdev is up:
        a default route via a gateway is refused on a down link)."""
        lease = kept.client.lease if kept.started else None
        rt = kept.rt
        # REBOOTING: the saved lease is not confirmed yet (and is on the netdev still,
        # if the netdev outlived the daemon, as it does).
        if lease is None or not rt.ep.up or kept.client.state is State.REBOOTING:
            return
        want = (rt.cfg.netns, rt.cfg.netdev_name, lease.interface)
        if kept.applied == want:
            return
        gateway = str(lease.routers[0]) if lease.routers else None
        try:
            ipconfig.put_address(rt.cfg.netdev_name, rt.cfg.netns, lease.interface, gateway)
        except OSError as exc:
            log.warning("%s: dhcp: cannot put %s on %s: %s", rt.cfg.name, lease.interface,
                        rt.cfg.netdev_name, exc)  # fmt: skip
            return
        kept.applied = want


def _saved(rt: EndpointRuntime) -> Lease | None:
    if rt.cfg.lease is None:
        return None
    try:
        return Lease.from_dict(rt.cfg.lease)
    except LeaseError as exc:
        log.warning("%s: dhcp: the saved lease is unusable (%s); starting afresh", rt.cfg.name, exc)
        return None
