"""A DHCP lease: what the server granted, and when, as the daemon's state file keeps it.

Times are seconds on the caller's clock (the ``now`` given to the client).  A
lease kept across daemon restarts needs a clock that survives them, so the
daemon passes wall-clock time; tests pass whatever they like.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from pymacvtap.core.dhcp.value import Value
from pymacvtap.core.mac import format_mac, parse_mac

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class LeaseError(ValueError):
    """A saved lease that cannot be read back; the message names the field."""


class Lease(Value):
    """An address for an endpoint, with its options and its timers."""

    __slots__ = (
        "address", "dns", "domain", "lease_time", "mtu", "obtained", "prefixlen",
        "rebinding_time", "renewal_time", "routers", "server_id", "server_mac",
    )  # fmt: skip

    INFINITE = 0xFFFFFFFF

    def __init__(
        self,
        address: IPv4Address,
        prefixlen: int,
        server_id: IPv4Address,
        obtained: float,  # when the request that won the lease was sent (RFC 2131 4.4.1)
        lease_time: int,  # seconds; INFINITE is for ever
        renewal_time: int,  # T1, seconds after ``obtained``
        rebinding_time: int,  # T2
        routers: tuple[IPv4Address, ...] = (),
        dns: tuple[IPv4Address, ...] = (),
        domain: str | None = None,
        mtu: int | None = None,
        server_mac: bytes | None = None,  # where a unicast renewal goes (the ACK's source)
    ) -> None:
        self.address = address
        self.prefixlen = prefixlen
        self.server_id = server_id
        self.obtained = obtained
        self.lease_time = lease_time
        self.renewal_time = renewal_time
        self.rebinding_time = rebinding_time
        self.routers = routers
        self.dns = dns
        self.domain = domain
        self.mtu = mtu
        self.server_mac = server_mac

    @property
    def infinite(self) -> bool:
        return self.lease_time == self.INFINITE

    @property
    def t1(self) -> float:
        return self.obtained + self.renewal_time

    @property
    def t2(self) -> float:
        return self.obtained + self.rebinding_time

    @property
    def expires(self) -> float:
        return float("inf") if self.infinite else self.obtained + self.lease_time

    @property
    def network(self) -> IPv4Network:
        return IPv4Network(f"{self.address}/{self.prefixlen}", strict=False)

    @property
    def interface(self) -> str:
        """``a.b.c.d/len``: what goes on the netdev."""
        return f"{self.address}/{self.prefixlen}"

    def expired(self, now: float) -> bool:
        return now >= self.expires

    # -- the state file ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "address": str(self.address),
            "prefixlen": self.prefixlen,
            "server_id": str(self.server_id),
            "obtained": self.obtained,
            "lease_time": self.lease_time,
            "renewal_time": self.renewal_time,
            "rebinding_time": self.rebinding_time,
            "routers": [str(r) for r in self.routers],
            "dns": [str(d) for d in self.dns],
            "domain": self.domain,
            "mtu": self.mtu,
            "server_mac": format_mac(self.server_mac) if self.server_mac is not None else None,
        }

    @classmethod
    def from_dict(cls, data: object) -> Lease:
        """The lease :meth:`to_dict` wrote; LeaseError for anything else."""
        if not isinstance(data, dict):
            raise LeaseError("lease: expected an object")
        try:
            server_mac = data.get("server_mac")
            lease = cls(
                address=IPv4Address(_typed(data, "address", str)),
                prefixlen=_typed(data, "prefixlen", int),
                server_id=IPv4Address(_typed(data, "server_id", str)),
                obtained=float(_typed(data, "obtained", (int, float))),
                lease_time=_typed(data, "lease_time", int),
                renewal_time=_typed(data, "renewal_time", int),
                rebinding_time=_typed(data, "rebinding_time", int),
                routers=tuple(IPv4Address(_str(r)) for r in _typed(data, "routers", list)),
                dns=tuple(IPv4Address(_str(d)) for d in _typed(data, "dns", list)),
                domain=_optional(data, "domain", str),
                mtu=_optional(data, "mtu", int),
                server_mac=parse_mac(_str(server_mac)) if server_mac is not None else None,
            )
        except LeaseError:
            raise
        except (ValueError, TypeError) as exc:
            raise LeaseError(f"lease: {exc}") from None
        if not 0 <= lease.prefixlen <= 32:
            raise LeaseError(f"lease: prefixlen {lease.prefixlen}: must be 0..32")
        return lease


def _typed(data: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise LeaseError(f"lease: {key}: missing or of the wrong type")
    return value


def _optional(data: dict[str, Any], key: str, kind: type) -> Any:
    return None if data.get(key) is None else _typed(data, key, kind)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise LeaseError(f"lease: {value!r}: expected a string")
    return value
