"""The kernel fast path as a data path: pymacvtap's eBPF programs beside the software path.

:class:`EbpfPath` is the :class:`~pymacvtap.daemon.datapath.SoftwarePath` with
the programs of :mod:`pymacvtap.io.bpf` in front of it.  The programs sit on
the ingress of each lower and of each endpoint's daemon-side device (a
container's veth peer, a VM's tap in the daemon's namespace) and forward the
unicast they can decide; everything else they hand to the daemon on its inbox
(:mod:`pymacvtap.daemon.inbox`), labelled with the device it came from, and the
daemon handles it as the Python data path does.  The daemon's sockets on those
devices only send: they are not on the devices' receive paths at all.

The maps are kept equal to the engine: after every change the daemon makes
(each event it emits, i.e. before a control verb answers; a capture starting
or stopping; a lower's new mtu, through :meth:`EbpfPath.changed`) and, as a
safety net, every second, :func:`~pymacvtap.bpf.tables.derive` is compared
with what the maps hold and :func:`~pymacvtap.bpf.tables.changes` applied,
which withdraws what changes before writing the new entries: no frame is
forwarded by a half-written configuration.  Nothing runs per loop iteration:
a daemon the programs leave idle stays idle.

The programs count in per-CPU maps; :meth:`EbpfPath.harvest` adds what they
counted since the last harvest into the engine's counters, so ``link show -s``
and the metrics mean the same on both data paths.  It runs every second, before
``link show -s`` and ``lower show -s`` answer, and before a counter slot is given up.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

from pymacvtap.bpf.tables import Counters, Device, Tables, changes, derive
from pymacvtap.core.engine import Engine
from pymacvtap.core.frame import Frame
from pymacvtap.daemon.datapath import RX_BATCH, SoftwarePath
from pymacvtap.daemon.inbox import Inbox, key_of, remove_left_inboxes
from pymacvtap.daemon.runtime import EndpointRuntime, LowerRuntime
from pymacvtap.frontends.veth import VethFrontend
from pymacvtap.frontends.vmtap import VmTapFrontend
from pymacvtap.io.afpacket import DeviceSocket
from pymacvtap.io.bpf import LABEL_BITS, BpfError, FastPath
from pymacvtap.io.loop import Loop

log = logging.getLogger("pymacvtap")

HARVEST_SECONDS = 1.0


class EbpfPath(SoftwarePath):
    """The software path, with the kernel forwarding what its programs can decide."""

    def __init__(self, loop: Loop, engine: Engine, fastpath: FastPath, inbox: Inbox) -> None:
        super().__init__(loop)
        self.engine = engine
        self.fastpath = fastpath
        self.tables = Tables()
        self._lower_index: dict[str, int] = {}
        self._devices: dict[str, Device] = {}
        # What each counter slot held at the last harvest, per map.
        self._seen: dict[tuple[str, int], Counters] = {}
        # The inbox: what the programs hand over, by label (inbox.key_of).
        self.inbox = inbox
        self._senders: dict[int, LowerRuntime | EndpointRuntime] = {}
        self.inbox_unknown = 0  # frames with no label, or one no device has (any more)
        fastpath.attach(inbox.ifindex, "inbox_ingress")
        fastpath.set_inbox(inbox.ifindex)
        loop.call_later(HARVEST_SECONDS, self._tick)

    # -- DataPath ----------------------------------------------------------------------

    def attach_lower(self, lower: LowerRuntime) -> None:
        # The lower's socket keeps its memberships and sends; the inbox receives.
        lower.sock.stop_receiving()
        self.lowers[lower.port.name] = lower
        ifindex = lower.sock.ifindex
        self._lower_index[lower.port.name] = ifindex
        self._label(ifindex, lower.port.name, lower, endpoint=False, queued=False)
        self._attach_tc(ifindex, "lower_ingress")

    def detach_lower(self, lower: LowerRuntime) -> None:
        ifindex = self._lower_index.pop(lower.port.name, None)
        self.sync()
        if ifindex is not None:
            self._detach_tc(ifindex)
            self._unlabel(ifindex, lower.port.name, endpoint=False)
        super().detach_lower(lower)

    def attach_endpoint(self, rt: EndpointRuntime) -> None:
        name = rt.cfg.name
        if name not in self._devices:
            device = self._device_of(rt)
            if device is not None:
                frontend = rt.frontend
                assert isinstance(frontend, VethFrontend | VmTapFrontend)
                queued = isinstance(frontend, VmTapFrontend) and frontend.queues > 1
                label = self._label(device.ifindex, name, rt, endpoint=True, queued=queued)
                frontend.stop_reading(lambda: self.inbox.missed(label))
                self._attach_tc(device.ifindex, "endpoint_ingress")
                self._devices[name] = device
        # The maps learn of the device with the link.add event that follows (on_event).
        super().attach_endpoint(rt)

    def detach_endpoint(self, rt: EndpointRuntime) -> None:
        device = self._devices.pop(rt.cfg.name, None)
        if device is not None:
            # Its frames are the daemon's before its device goes.
            self.sync()
            self._detach_tc(device.ifindex)
            self._unlabel(device.ifindex, rt.cfg.name, endpoint=True)
            rt.datapath = "python"
        super().detach_endpoint(rt)

    # -- the inbox -----------------------------------------------------------------------

    def _label(
        self,
        ifindex: int,
        name: str,
        sender: LowerRuntime | EndpointRuntime,
        *,
        endpoint: bool,
        queued: bool,
    ) -> int:
        label, new = self.inbox.give(name, endpoint=endpoint)
        if new is not None:
            self.loop.add_reader(new.fileno(), self._inbox_reader(new))
        self._senders[key_of(endpoint, label)] = sender
        self.fastpath.set_label(ifindex, label, endpoint=endpoint, queued=queued)
        return label

    def _unlabel(self, ifindex: int, name: str, *, endpoint: bool) -> None:
        with contextlib.suppress(OSError):
            self.fastpath.delete_label(ifindex)
        label = self.inbox.take_back(name, endpoint=endpoint)
        if label is not None:
            self._senders.pop(key_of(endpoint, label), None)

    def _inbox_reader(self, inbox: DeviceSocket) -> Callable[[], None]:
        def on_readable() -> None:
            self._read_inbox(inbox)

        return on_readable

    def _read_inbox(self, inbox: DeviceSocket) -> None:
        """What the programs left to the daemon, each frame to its sender's port.

        A socket serves one label, so a batch is one device's (a label given back is
        drained first); the endpoint's frames go to the engine together.
        """
        frames = inbox.recv_batch(RX_BATCH)
        labels = inbox.labels
        assert labels is not None
        senders = self._senders
        queue_mask = ~(0xF << LABEL_BITS)
        batch: list[Frame] = []
        holder: EndpointRuntime | None = None
        for frame, label in zip(frames, labels, strict=True):
            sender = senders.get(label & queue_mask) if label >= 0 else None
            if sender is None:
                self.inbox_unknown += 1
            elif isinstance(sender, LowerRuntime):
                sender.port.forward_from_lower(frame)
            elif sender.ep.port is not None:  # else it is on its way out: as unread
                if sender is not holder:
                    if holder is not None:
                        self.from_endpoint(holder, batch)
                    holder, batch = sender, []
                frontend = sender.frontend
                if isinstance(frontend, VmTapFrontend):
                    frontend.from_guest((label >> LABEL_BITS) & 0xF, frame)
                batch.append(frame)
        if holder is not None:
            self.from_endpoint(holder, batch)

    # -- the maps ------------------------------------------------------------------------

    def sync(self) -> None:
        """Make the maps say what the engine says (nothing written when nothing changed)."""
        captured = [name for name, rt in self.endpoints.items() if rt.captures is not None]
        new = derive(self.engine, self._lower_index, self._devices, captured, self.tables)
        if new != self.tables:
            self._harvest_leaving(new)
            self.fastpath.apply(changes(self.tables, new))
            self.tables = new
        # What link show calls an endpoint's data path is what the maps say of it: one
        # under capture or with macnat is the daemon's even though its device has programs.
        fast = {entry.name for entry in new.endpoints.values() if entry.fast}
        for name, rt in self.endpoints.items():
            rt.datapath = "ebpf" if name in fast else "python"

    def on_event(self, _event: dict[str, Any]) -> None:
        """A service subscriber: every change the daemon announces reaches the maps at once."""
        self.sync()

    def changed(self) -> None:
        self.sync()

    # -- counters ------------------------------------------------------------------------

    def harvest(self) -> None:
        """Add what the programs counted since the last harvest to the engine's counters."""
        for lower in self.tables.lowers.values():
            port = self.engine.ports.get(lower.name)
            if port is not None:
                self._fold("lower_stats", lower.slot, port.stats)
        for entry in self.tables.endpoints.values():
            ep = self.engine.endpoints.get(entry.name)
            if ep is not None:
                self._fold("endpoint_stats", entry.slot, ep.stats)

    def _fold(self, table: str, slot: int, stats: Any) -> None:
        now = self.fastpath.counters(table, slot)
        before = self._seen.get((table, slot), Counters())
        delta = now - before
        if delta.rx_packets or delta.tx_packets or any(delta.drops.values()):
            delta.add_to(stats)
        self._seen[(table, slot)] = now

    def _harvest_leaving(self, new: Tables) -> None:
        """Before slots change hands (a name gone, a new name zeroed), take what they hold."""
        old = self.tables
        new_slots = {("lower_stats", e.name): e.slot for e in new.lowers.values()}
        new_slots |= {("endpoint_stats", e.name): e.slot for e in new.endpoints.values()}
        leaving = [
            ("lower_stats", e.name, e.slot)
            for e in old.lowers.values()
            if new_slots.get(("lower_stats", e.name)) != e.slot
        ] + [
            ("endpoint_stats", e.name, e.slot)
            for e in old.endpoints.values()
            if new_slots.get(("endpoint_stats", e.name)) != e.slot
        ]
        if not leaving:
            return
        self.harvest()
        for table, _name, slot in leaving:
            self._seen.pop((table, slot), None)

    def counters(self) -> dict[str, int]:
        return {"inbox_unlabelled": self.inbox_unknown}

    def _tick(self) -> None:
        try:
            self.sync()
            self.harvest()
        finally:
            self.loop.call_later(HARVEST_SECONDS, self._tick)

    # -- devices -------------------------------------------------------------------------

    @staticmethod
    def _device_of(rt: EndpointRuntime) -> Device | None:
        """The endpoint's device the programs can reach, if it has one."""
        frontend = rt.frontend
        if isinstance(frontend, VethFrontend):
            return Device(frontend.sock.ifindex, peer=True)
        if isinstance(frontend, VmTapFrontend) and frontend.netns is None and frontend.socks:
            # bpf_redirect reaches only devices of the program's namespace.
            return Device(frontend.socks[0].ifindex, peer=False)
        return None

    def _attach_tc(self, ifindex: int, prog: str) -> None:
        # A filter a killed daemon left behind goes first: it holds that daemon's maps.
        _remove_leftover(ifindex)
        self.fastpath.attach(ifindex, prog)

    def _detach_tc(self, ifindex: int) -> None:
        with contextlib.suppress(OSError):
            self.fastpath.detach(ifindex, self.fastpath.prog_fds.values())

    def close(self) -> None:
        """Stop: every program detached (by the detach calls before), the maps released,
        the inbox gone."""
        for ifindex in list(self._lower_index.values()):
            self._detach_tc(ifindex)
        for device in self._devices.values():
            self._detach_tc(device.ifindex)
        for sock in self.inbox.sockets:
            self.loop.forget(sock.fileno())
        self._detach_tc(self.inbox.ifindex)
        self.inbox.close()
        self.fastpath.close()


class PythonPath(SoftwarePath):
    """The software path, which first takes away programs a killed fast-path daemon left.

    Left on a lower or a peer, they would go on forwarding with that daemon's last
    tables beside this one: every frame must be this daemon's now.
    """

    def attach_lower(self, lower: LowerRuntime) -> None:
        _remove_leftover(lower.sock.ifindex)
        super().attach_lower(lower)

    def attach_endpoint(self, rt: EndpointRuntime) -> None:
        if rt.cfg.name not in self.endpoints:
            device = EbpfPath._device_of(rt)
            if device is not None:
                _remove_leftover(device.ifindex)
        super().attach_endpoint(rt)


def _remove_leftover(ifindex: int) -> None:
    with contextlib.suppress(OSError):
        if FastPath.ours_attached(ifindex):
            log.info("ifindex %d: removing programs a previous daemon left", ifindex)
            FastPath.detach(ifindex)


def choose(choice: str, loop: Loop, engine: Engine) -> SoftwarePath:
    """The data path ``--datapath choice`` asks for; ``auto`` says in one log line why."""
    if choice == "python":
        log.info("data path: python (--datapath python)")
        return PythonPath(loop)
    try:
        fastpath = FastPath()
    except (BpfError, OSError) as exc:
        if choice == "ebpf":
            raise BpfError(f"--datapath ebpf: {exc}") from None
        log.info("data path: python (auto: the eBPF fast path cannot load: %s)", exc)
        return PythonPath(loop)
    try:
        remove_left_inboxes()
        inbox = Inbox.open()
    except OSError as exc:
        fastpath.close()
        reason = f"cannot make its inbox device (CAP_NET_ADMIN): {exc.strerror or exc}"
        if choice == "ebpf":
            raise BpfError(f"--datapath ebpf: {reason}") from None
        log.info("data path: python (auto: %s)", reason)
        return PythonPath(loop)
    try:
        path = EbpfPath(loop, engine, fastpath, inbox)
    except BaseException:
        inbox.close()
        fastpath.close()
        raise
    log.info(
        "data path: ebpf (the fast path's programs loaded, on the %s hook; %s)",
        fastpath.hook,
        _why(choice),
    )
    return path


def _why(choice: str) -> str:
    return "--datapath ebpf" if choice == "ebpf" else "auto"
