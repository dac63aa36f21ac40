"""The engine: lowers, their endpoints, and the configuration rules of macvlan.

Feeding frames::

    engine.from_lower(port, frame)        # a frame read off the lower
    engine.from_endpoint(endpoint, frame) # a frame an endpoint's user sent
    engine.process_broadcasts()           # settle the deferred floods

Results land in ``endpoint.rx_queue`` and ``port.tx_queue``; each call also
returns the frame's :class:`~pymacvtap.core.port.Disposition`.  Nothing here
reads a clock, a socket or an entropy source: the caller owns all of those.
"""

from __future__ import annotations

from pymacvtap.core.errors import EngineError
from pymacvtap.core.mac import (
    MacError,
    check_multicast,
    check_unicast,
    format_mac,
    random_local_unicast,
)
from pymacvtap.core.modes import MODE_BY_NAME, Mode
from pymacvtap.core.port import DEFAULT_BCQUEUELEN, DEFAULT_RX_QUEUE_LEN, Endpoint, Port

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from pymacvtap.core.frame import Frame
    from pymacvtap.core.port import Disposition

MIN_MTU = 68  # ETH_MIN_MTU
_MODES = frozenset(MODE_BY_NAME.values())
MAX_MTU = 65535  # ETH_MAX_MTU


class Engine:
    """Every lower and endpoint of one daemon; endpoint names are unique across lowers."""

    def __init__(self, entropy: Callable[[int], bytes]) -> None:
        self._entropy = entropy
        self.ports: dict[str, Port] = {}
        self.endpoints: dict[str, Endpoint] = {}
        # The time of the last tick: a lower added later starts its address tables at it,
        # so what it learns before the next tick is not dated at 0 (and aged out at once).
        self.now = 0.0

    # -- lowers ----------------------------------------------------------------

    def add_lower(self, name: str, mac: bytes, mtu: int = 1500, up: bool = True) -> Port:
        if name in self.ports:
            raise EngineError("EEXIST", f"lower {name}: already attached")
        port = Port(name, mac, mtu)
        port.up = up
        port.addressing.now = self.now
        self.ports[name] = port
        return port

    def port(self, name: str) -> Port:
        try:
            return self.ports[name]
        except KeyError:
            raise EngineError("ENODEV", f"lower {name}: not attached") from None

    def remove_lower(self, name: str) -> list[Endpoint]:
        """Detach a lower; its endpoints go with it (the kernel deletes them)."""
        port = self.port(name)
        removed = list(port.endpoints.values())
        for ep in removed:
            self.remove_endpoint(ep.name)
        # Floods still queued settle now (as "not ours": nobody is left to get
        # them), so no frame is left without a disposition.
        port.process_broadcasts(len(port.bc_queue))
        del self.ports[name]
        return removed

    def set_lower_carrier(self, name: str, up: bool) -> None:
        self.port(name).up = up

    def set_lower_mtu(self, name: str, mtu: int) -> list[Endpoint]:
        """A smaller lower MTU clamps larger endpoints; returns those clamped."""
        port = self.port(name)
        port.mtu = mtu
        clamped = [ep for ep in port.endpoints.values() if ep.mtu > mtu]
        for ep in clamped:
            ep.mtu = mtu
        return clamped

    def set_lower_mac(self, name: str, mac: bytes) -> None:
        """The lower's MAC changed; a passthru endpoint follows it."""
        port = self.port(name)
        port.mac = mac
        port.addressing.set_lower_mac(mac)
        if port.passthru is not None:
            self._rehash(port.passthru, mac)

    # -- endpoints: creation and removal ---------------------------------------

    def endpoint(self, name: str) -> Endpoint:
        try:
            return self.endpoints[name]
        except KeyError:
            raise EngineError("ENODEV", f"{name}: no such endpoint") from None

    def add_endpoint(
        self,
        name: str,
        lower: str,
        mode: Mode = Mode.VEPA,
        mac: bytes | None = None,
        mtu: int | None = None,
        *,
        up: bool = False,
        spoofchk: bool = False,
        bcqueuelen: int = DEFAULT_BCQUEUELEN,
        rx_queue_len: int = DEFAULT_RX_QUEUE_LEN,
        macnat: bool = False,
    ) -> Endpoint:
        if not name:
            raise EngineError("EINVAL", "endpoint name must not be empty")
        _check_mode(name, mode)
        if macnat:
            _check_macnat_mode(name, mode)
        if name in self.endpoints:
            raise EngineError("EEXIST", f"{name}: an endpoint of that name exists")
        port = self.port(lower)
        if port.passthru is not None:
            raise EngineError(
                "EINVAL",
                f"{name}: lower {lower} is taken by passthru endpoint {port.passthru.name}",
            )
        if mode is Mode.PASSTHRU:
            if port.endpoints:
                raise EngineError(
                    "EINVAL",
                    f"{name}: passthru needs lower {lower} to itself, "
                    f"it has {len(port.endpoints)} endpoint(s)",
                )
            if mac is not None and mac != port.mac:
                raise EngineError(
                    "EINVAL",
                    f"{name}: a passthru endpoint carries the lower's address "
                    f"{format_mac(port.mac)}",
                )
            mac = port.mac
        elif mac is None:
            mac = self._unused_random_mac(port)
        else:
            self._check_free(port, name, mac)
        if mtu is None:
            mtu = port.mtu
        self._check_mtu(port, name, mtu)
        if bcqueuelen < 0:
            raise EngineError("EINVAL", f"{name}: bcqueuelen {bcqueuelen} must be >= 0")
        if rx_queue_len < 1:
            raise EngineError("EINVAL", f"{name}: queue length {rx_queue_len} must be >= 1")
        ep = Endpoint(
            name,
            port,
            mode,
            mac,
            mtu,
            spoofchk=spoofchk,
            bcqueuelen=bcqueuelen,
            rx_queue_len=rx_queue_len,
        )
        port.endpoints[name] = ep
        port.macs[mac] = ep
        self.endpoints[name] = ep
        if mode is Mode.PASSTHRU:
            port.passthru = ep
        if macnat:
            self.set_macnat(name, True)
        if up:
            self.set_up(name, True)
        return ep

    def remove_endpoint(self, name: str) -> Endpoint:
        ep = self.endpoint(name)
        port = ep.port
        assert port is not None
        if ep.up:
            self.set_up(name, False)
        self._set_sources(ep, set())
        del port.endpoints[name]
        if port.macs.get(ep.mac) is ep:
            del port.macs[ep.mac]
        del self.endpoints[name]
        port.addressing.remove_endpoint(name)
        port.ready.pop(ep, None)
        if port.passthru is ep:
            port.passthru = None
        ep.port = None
        ep.rx_queue.clear()
        return ep

    # -- endpoints: settings --------------------------------------------------

    def set_up(self, name: str, up: bool) -> None:
        """Admin state.  Only UP endpoints are in the lookup table, as in the kernel."""
        ep = self.endpoint(name)
        port = ep.port
        assert port is not None
        if up == ep.up:
            return
        if up:
            holder = port.by_mac.get(ep.mac)
            if holder is not None:  # only possible through restored state; kept for safety
                raise EngineError(
                    "EADDRINUSE", f"{name}: address {format_mac(ep.mac)}: in use by {holder.name}"
                )
            port.by_mac[ep.mac] = ep
            ep.up = True
            self._sync_groups(ep, +1)
        else:
            del port.by_mac[ep.mac]
            ep.up = False
            self._sync_groups(ep, -1)

    def set_mac(self, name: str, mac: bytes) -> None:
        ep = self.endpoint(name)
        port = ep.port
        assert port is not None
        try:
            check_unicast(mac)
        except MacError as exc:
            raise EngineError("EADDRNOTAVAIL", f"{name}: {exc}") from None
        if mac == ep.mac:
            return
        if ep.mode is Mode.PASSTHRU:
            # The kernel sets the lower's address instead; the caller does that
            # on the real device and reports it back with set_lower_mac().
            self.set_lower_mac(port.name, mac)
            return
        self._check_free(port, name, mac)
        self._rehash(ep, mac)
        if ep.macnat:
            port.addressing.set_macnat(name, mac, True)

    def set_mtu(self, name: str, mtu: int) -> None:
        ep = self.endpoint(name)
        assert ep.port is not None
        self._check_mtu(ep.port, name, mtu)
        ep.mtu = mtu

    def set_mode(self, name: str, mode: Mode) -> None:
        ep = self.endpoint(name)
        _check_mode(name, mode)
        if mode is ep.mode:
            return
        if Mode.PASSTHRU in (mode, ep.mode):
            raise EngineError("EINVAL", f"{name}: mode cannot change to or from passthru")
        if ep.macnat:
            _check_macnat_mode(name, mode)
        if ep.mode is Mode.SOURCE:
            self._set_sources(ep, set())  # leaving source mode flushes the list
        ep.mode = mode

    def set_spoofchk(self, name: str, on: bool) -> None:
        self.endpoint(name).spoofchk = on

    def set_macnat(self, name: str, on: bool) -> None:
        """Translate the endpoint's MAC to the lower's on the wire (SPEC 9), or stop."""
        ep = self.endpoint(name)
        if on:
            _check_macnat_mode(name, ep.mode)
        port = ep.port
        assert port is not None
        port.addressing.set_macnat(name, ep.mac, on)
        ep.macnat = on

    def set_bcqueuelen(self, name: str, length: int) -> None:
        if length < 0:
            raise EngineError("EINVAL", f"{name}: bcqueuelen {length} must be >= 0")
        self.endpoint(name).bcqueuelen = length

    # -- multicast filter ------------------------------------------------------

    def join_group(self, name: str, group: bytes) -> None:
        ep = self.endpoint(name)
        try:
            check_multicast(group)
        except MacError as exc:
            raise EngineError("EINVAL", f"{name}: {exc}") from None
        if group in ep.mc_groups:
            return
        ep.mc_groups.add(group)
        if ep.up:
            self._count_group(ep, group, +1)

    def leave_group(self, name: str, group: bytes) -> None:
        ep = self.endpoint(name)
        if group not in ep.mc_groups:
            return
        ep.mc_groups.discard(group)
        if ep.up:
            self._count_group(ep, group, -1)

    def set_groups(self, name: str, groups: Iterable[bytes]) -> None:
        """Replace the joined groups (what a netdev's mc list sync reports)."""
        wanted = set(groups)
        ep = self.endpoint(name)
        for group in ep.mc_groups - wanted:
            self.leave_group(name, group)
        for group in wanted - ep.mc_groups:
            self.join_group(name, group)

    def set_allmulti(self, name: str, on: bool) -> None:
        ep = self.endpoint(name)
        if ep.allmulti == on:
            return
        if ep.up:
            self._count_group(ep, None, -1 if ep.allmulti else +1)
        ep.allmulti = on

    # -- source mode ------------------------------------------------------------

    def macaddr(self, name: str, op: str, macs: Iterable[bytes] = ()) -> None:
        """``ip link set NAME type macvlan macaddr add|del|set|flush`` (source mode)."""
        ep = self.endpoint(name)
        if ep.mode is not Mode.SOURCE:
            raise EngineError("EINVAL", f"{name}: macaddr needs mode source, not {ep.mode.label}")
        macs = list(macs)
        for mac in macs:
            try:
                check_unicast(mac)
            except MacError as exc:
                raise EngineError("EADDRNOTAVAIL", f"{name}: {exc}") from None
        if op == "add":
            self._set_sources(ep, ep.source_macs | set(macs))
        elif op == "del":
            self._set_sources(ep, ep.source_macs - set(macs))
        elif op == "set":
            self._set_sources(ep, set(macs))
        elif op == "flush":
            self._set_sources(ep, set())
        else:
            raise EngineError("EINVAL", f"{name}: macaddr {op}: expected add, del, set or flush")

    # -- frames ----------------------------------------------------------------

    @staticmethod
    def from_lower(port: Port, frame: Frame) -> Disposition:
        return port.from_lower(frame)

    @staticmethod
    def from_endpoint(ep: Endpoint, frame: Frame) -> Disposition:
        port = ep.port
        if port is None:
            raise EngineError("ENODEV", f"{ep.name}: endpoint was removed")
        return port.from_endpoint(ep, frame)

    def tick(self, now: float) -> None:
        """The time for what follows (address ages, DHCP transactions), passed in."""
        self.now = now
        for port in self.ports.values():
            port.addressing.expire(now)

    def next_expiry(self) -> float | None:
        """When :meth:`tick` next forgets an address (the daemon's timer)."""
        times = [t for p in self.ports.values() if (t := p.addressing.next_expiry()) is not None]
        return min(times) if times else None

    def process_broadcasts(self, budget: int = 1 << 30) -> list[Disposition]:
        """Settle queued floods on every lower, at most ``budget`` frames each."""
        settled: list[Disposition] = []
        for port in self.ports.values():
            if port.bc_queue:
                settled.extend(port.process_broadcasts(budget))
        return settled

    # -- internals ----------------------------------------------------------------

    def _unused_random_mac(self, port: Port) -> bytes:
        while True:
            mac = random_local_unicast(self._entropy)
            if mac != port.mac and mac not in port.macs:
                return mac

    def _check_free(self, port: Port, name: str, mac: bytes) -> None:
        """SPEC 2.3: a duplicate is refused at once, up or down, not at `up`."""
        try:
            check_unicast(mac)
        except MacError as exc:
            raise EngineError("EADDRNOTAVAIL", f"{name}: {exc}") from None
        if mac == port.mac:
            raise EngineError(
                "EADDRINUSE", f"{name}: address {format_mac(mac)}: in use by lower {port.name}"
            )
        other = port.macs.get(mac)
        if other is not None and other.name != name:
            raise EngineError(
                "EADDRINUSE",
                f"{name}: address {format_mac(mac)}: already in use by {other.name}",
            )

    @staticmethod
    def _check_mtu(port: Port, name: str, mtu: int) -> None:
        if not MIN_MTU <= mtu <= port.mtu:
            raise EngineError(
                "EINVAL",
                f"{name}: mtu {mtu}: must be {MIN_MTU}..{port.mtu} (the MTU of lower {port.name})",
            )

    @staticmethod
    def _rehash(ep: Endpoint, mac: bytes) -> None:
        port = ep.port
        assert port is not None
        if ep.up:
            del port.by_mac[ep.mac]
            port.by_mac[mac] = ep
        if port.macs.get(ep.mac) is ep:
            del port.macs[ep.mac]
        port.macs[mac] = ep
        ep.mac = mac

    def _sync_groups(self, ep: Endpoint, delta: int) -> None:
        """An endpoint going up/down adds/removes its groups on the lower's filter."""
        for group in ep.mc_groups:
            self._count_group(ep, group, delta)
        if ep.allmulti:
            self._count_group(ep, None, delta)

    @staticmethod
    def _count_group(ep: Endpoint, group: bytes | None, delta: int) -> None:
        port = ep.port
        assert port is not None
        count = port.groups.get(group, 0) + delta
        if count > 0:
            port.groups[group] = count
        else:
            port.groups.pop(group, None)

    @staticmethod
    def _set_sources(ep: Endpoint, macs: set[bytes]) -> None:
        port = ep.port
        assert port is not None
        for mac in ep.source_macs - macs:
            listeners = port.sources[mac]
            listeners.remove(ep)
            if not listeners:
                del port.sources[mac]
        for mac in macs - ep.source_macs:
            port.sources.setdefault(mac, []).append(ep)
        ep.source_macs = macs


_MACNAT_MODES = (Mode.BRIDGE, Mode.VEPA, Mode.PRIVATE)


def _check_macnat_mode(name: str, mode: Mode) -> None:
    """MAC translation needs endpoints that share the lower: passthru owns the lower's MAC
    already, and a source endpoint receives by the sender's MAC, which translation hides."""
    if mode not in _MACNAT_MODES:
        raise EngineError(
            "EINVAL", f"{name}: macnat needs mode bridge, vepa or private, not {mode.label}"
        )


def _check_mode(name: str, mode: Mode) -> None:
    """Exactly one of the five modes: a combination is a mask, not a mode (EINVAL)."""
    if mode not in _MODES:
        raise EngineError("EINVAL", f"{name}: mode {int(mode)}: not one of the five modes")
