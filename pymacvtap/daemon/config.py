"""Endpoint configuration as users state it: what `link add` takes and state files keep.

This is the daemon's view of an endpoint (netns, frontend, owner ...), one level
above the engine's forwarding state.  One dataclass serves the control
protocol, the state file and ``link show`` so the three cannot drift apart.
The kinds of endpoint (a type and a frontend) differ only as :data:`KINDS` says.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from pymacvtap.core.mac import MacError, check_unicast, format_mac, parse_mac
from pymacvtap.core.modes import MODE_BY_NAME
from pymacvtap.defaults import BCQUEUELEN, SOCKET_DIR

IFNAMSIZ = 16
_IFNAME = re.compile(r"^[^\s/:]{1,15}$")
_HOSTNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class ConfigError(ValueError):
    """A bad request; ``code`` is the errno name reported to the client (as EngineError's)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclasses.dataclass(frozen=True)
class Kind:
    """What an endpoint's type and frontend make of it: every way kinds differ."""

    type: str
    frontend: str
    # The frontend is a persistent tap netdev in the endpoint's namespace, which the
    # daemon follows (link events, multicast lists) and keeps across restarts;
    # otherwise it is a Unix socket at ``path``, made anew by every daemon.
    netdev: bool
    # The netdev *is* the endpoint (macvlan, for a container): its admin state is
    # the endpoint's.  Otherwise the endpoint is a VM's port, up unless set down.
    netdev_is_endpoint: bool = False
    multiqueue: bool = False
    peer: bool = False  # dgram: where to send before the VM has spoken

    @property
    def starts_up(self) -> bool:
        """macvlan netdevs start down like `ip link add`; a VM cannot raise its port."""
        return not self.netdev_is_endpoint

    @property
    def hands_out_queues(self) -> bool:
        """A VM's tap: `attach` opens its queue fds for the VM."""
        return self.netdev and not self.netdev_is_endpoint


_KIND_LIST = (
    Kind("macvlan", "tap", netdev=True, netdev_is_endpoint=True),
    Kind("macvtap", "tap", netdev=True, multiqueue=True),
    Kind("macvtap", "stream", netdev=False),
    Kind("macvtap", "dgram", netdev=False, peer=True),
    Kind("macvtap", "vhost-user", netdev=False, multiqueue=True),
)
KINDS: dict[tuple[str, str], Kind] = {(k.type, k.frontend): k for k in _KIND_LIST}
TYPES = tuple(dict.fromkeys(k.type for k in _KIND_LIST))
FRONTENDS = tuple(dict.fromkeys(k.frontend for k in _KIND_LIST))


@dataclasses.dataclass
class EndpointConfig:
    """Everything needed to (re)create one endpoint."""

    name: str
    link: str
    type: str = "macvlan"
    mode: str = "vepa"
    address: str | None = None  # None: a random one is chosen at creation and stored
    netns: str | None = None  # /run/netns name or a path such as /proc/PID/ns/net
    ifname: str | None = None  # netdev name; defaults to name
    frontend: str = "tap"
    path: str | None = None  # socket path (stream, dgram, vhost-user)
    peer: str | None = None  # dgram: where to send before the VM has spoken
    owner: int | None = None
    group: int | None = None
    queues: int = 1
    mtu: int | None = None
    bcqueuelen: int = BCQUEUELEN
    spoofchk: bool = False
    macnat: bool = False  # SPEC 9: the lower's MAC on the wire
    nopromisc: bool = False
    up: bool | None = None  # None: the type's default (macvlan down, macvtap up)
    macaddrs: list[str] = dataclasses.field(default_factory=list)  # source mode
    # DHCP kept by the daemon (macvlan): the lease goes onto the netdev, and into the
    # state with the endpoint (``lease``, Lease.to_dict) so a restart resumes it.
    dhcp: bool = False
    hostname: str | None = None  # sent to the DHCP server (option 12)
    lease: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ----------------------------------------------------------------

    def validate(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                "EINVAL",
                f"name {self.name!r}: use 1-64 letters, digits, '.', '_' or '-' "
                "(starting with a letter or digit)",
            )
        if not _IFNAME.match(self.link):
            raise ConfigError("EINVAL", f"link {self.link!r}: not an interface name")
        if self.type not in TYPES:
            raise ConfigError("EINVAL", f"type {self.type}: unknown (one of {', '.join(TYPES)})")
        if self.mode not in MODE_BY_NAME:
            raise ConfigError(
                "EINVAL", f"mode {self.mode}: unknown (one of {', '.join(MODE_BY_NAME)})"
            )
        if self.frontend not in FRONTENDS:
            raise ConfigError(
                "EINVAL", f"frontend {self.frontend}: unknown (one of {', '.join(FRONTENDS)})"
            )
        kind = KINDS.get((self.type, self.frontend))
        if kind is None:
            raise ConfigError(
                "EINVAL",
                f"frontend {self.frontend}: macvlan endpoints are netdevs; "
                "socket frontends need type macvtap",
            )
        if self.address is not None:
            try:
                self.address = format_mac(check_unicast(parse_mac(self.address)))
            except MacError as exc:
                raise ConfigError("EADDRNOTAVAIL", str(exc)) from None
        for i, mac in enumerate(self.macaddrs):
            try:
                self.macaddrs[i] = format_mac(check_unicast(parse_mac(mac)))
            except MacError as exc:
                raise ConfigError("EINVAL", f"macaddr: {exc}") from None
        if self.macaddrs and self.mode != "source":
            raise ConfigError("EINVAL", "macaddr needs mode source")
        if self.ifname is not None and not _IFNAME.match(self.ifname):
            raise ConfigError(
                "EINVAL", f"ifname {self.ifname!r}: at most 15 characters, no '/', ':'"
            )
        if self.ifname is None and kind.netdev and len(self.name) >= IFNAMSIZ:
            raise ConfigError(
                "EINVAL",
                f"name {self.name}: longer than 15 characters; give an ifname for the netdev",
            )
        if self.macnat and self.mode not in ("bridge", "vepa", "private"):
            raise ConfigError(
                "EINVAL",
                f"macnat needs mode bridge, vepa or private, not {self.mode} "
                "(passthru owns the lower's MAC; source mode receives by the sender's MAC)",
            )
        if self.nopromisc and self.mode != "passthru":
            raise ConfigError("EINVAL", "nopromisc needs mode passthru")
        if not 1 <= self.queues <= 256:
            raise ConfigError("EINVAL", f"queues {self.queues}: must be 1..256")
        if self.queues > 1 and not kind.multiqueue:
            raise ConfigError(
                "EINVAL",
                "queues: only macvtap endpoints have queues"
                if kind.netdev_is_endpoint
                else f"queues {self.queues}: frontend {self.frontend} has one queue",
            )
        if self.mtu is not None and not 68 <= self.mtu <= 65535:
            raise ConfigError("EINVAL", f"mtu {self.mtu}: must be 68..65535")
        if not 0 <= self.bcqueuelen <= 1 << 31:
            raise ConfigError("EINVAL", f"bcqueuelen {self.bcqueuelen}: out of range")
        if self.path is not None and kind.netdev:
            raise ConfigError(
                "EINVAL", "path: only socket frontends (stream, dgram, vhost-user) have one"
            )
        if self.peer is not None and not kind.peer:
            raise ConfigError("EINVAL", "peer: only the dgram frontend has one")
        if self.dhcp and not kind.netdev_is_endpoint:
            raise ConfigError("EINVAL", "dhcp: only macvlan endpoints (a container's netdev)")
        if self.hostname is not None and not self.dhcp:
            raise ConfigError("EINVAL", "hostname: only with dhcp on")
        if self.hostname is not None and not _HOSTNAME.match(self.hostname):
            raise ConfigError(
                "EINVAL", f"hostname {self.hostname!r}: letters, digits, '-' and '.' (at most 63)"
            )
        for label, value in (("owner", self.owner), ("group", self.group)):
            if value is not None and not 0 <= value < 1 << 32:
                raise ConfigError("EINVAL", f"{label} {value}: not a valid id")

    # -- derived values ---------------------------------------------------------

    @property
    def kind(self) -> Kind:
        return KINDS[self.type, self.frontend]

    @property
    def netdev_name(self) -> str:
        return self.ifname or self.name

    @property
    def socket_path(self) -> str | None:
        if self.kind.netdev:
            return None
        return self.path or f"{SOCKET_DIR}/{self.name}.sock"

    @property
    def starts_up(self) -> bool:
        """macvlan netdevs start down like `ip link add`; a VM cannot raise its port."""
        if self.up is not None:
            return self.up
        return self.kind.starts_up

    # -- (de)serialisation ---------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its deep copy made saving 1,000 endpoints cost
        # 13 ms of every link add; the one mutable field is copied by hand.
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        data["macaddrs"] = list(self.macaddrs)
        data["lease"] = dict(self.lease) if self.lease is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EndpointConfig:
        if not isinstance(data, dict):
            raise ConfigError("EINVAL", "endpoint: expected an object")
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError("EINVAL", f"unknown attribute(s): {', '.join(unknown)}")
        for key in ("name", "link"):
            if key not in data:
                raise ConfigError("EINVAL", f"{key}: required")
        for key, value in data.items():
            _check_type(key, value)
        return cls(**data)


_FIELD_NAMES = tuple(f.name for f in dataclasses.fields(EndpointConfig))
_STR = {"name", "link", "type", "mode", "frontend"}
_OPT_STR = {"address", "netns", "ifname", "path", "peer", "hostname"}
_OPT_INT = {"owner", "group", "mtu"}
_INT = {"queues", "bcqueuelen"}
_BOOL = {"spoofchk", "nopromisc", "macnat", "dhcp"}


def _check_type(key: str, value: object) -> None:
    """Reject wrong JSON types with a message naming the attribute."""
    ok: bool
    if key in _STR:
        ok = isinstance(value, str)
    elif key in _OPT_STR:
        ok = value is None or isinstance(value, str)
    elif key in _OPT_INT:
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
    elif key in _INT:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif key in _BOOL:
        ok = isinstance(value, bool)
    elif key == "up":
        ok = value is None or isinstance(value, bool)
    elif key == "lease":
        ok = value is None or isinstance(value, dict)
    elif key == "macaddrs":
        ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
    else:
        ok = False
    if not ok:
        raise ConfigError("EINVAL", f"{key}: wrong type {type(value).__name__}")
