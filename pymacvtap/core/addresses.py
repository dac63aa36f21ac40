"""The IPv4/IPv6 addresses of each endpoint, and which endpoint owns an address (SPEC 9).

Two sources feed it: a container netdev's own addresses (netlink events in its namespace,
origin ``netdev``, kept until the kernel says they are gone) and what an endpoint's traffic
shows (ARP sender, IPv6 source, ND target, DHCP ACK), which ages out when not seen again.
Announcements read an endpoint's list; MAC translation reads the reverse index to find
which endpoint a frame for the lower's MAC is for.

Both are bounded: a misbehaving user can make an endpoint claim any number of addresses,
so each endpoint keeps at most ``capacity`` (least recently seen goes first).  Time is an
argument everywhere (seconds of any monotonic clock the caller owns), never read here.
"""

from __future__ import annotations

import enum
import ipaddress
from collections import OrderedDict

from pymacvtap.core import headers as h

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pymacvtap.core.headers import Buffer

DEFAULT_CAPACITY = 64  # addresses per endpoint
DEFAULT_TTL = 600.0  # seconds a traffic-learned address lives without being seen again


class Origin(enum.Enum):
    """Where an address was learned; the value is what ``link show`` prints."""

    NETDEV = "netdev"
    DHCP = "dhcp"
    ARP = "arp"
    ND = "nd"
    IPV6_SOURCE = "ipv6-source"

    @property
    def rank(self) -> int:
        """Trust: an address seen two ways keeps the more authoritative origin."""
        return _RANK[self]


_RANK = {Origin.NETDEV: 3, Origin.DHCP: 2, Origin.ARP: 1, Origin.ND: 1, Origin.IPV6_SOURCE: 0}


class AddressEntry:
    __slots__ = ("address", "expires", "last_seen", "origin")

    def __init__(
        self, address: bytes, origin: Origin, last_seen: float, expires: float | None
    ) -> None:
        self.address = address  # 4 or 16 bytes
        self.origin = origin
        self.last_seen = last_seen
        self.expires = expires  # None: until removed (netdev addresses, infinite leases)

    def __repr__(self) -> str:
        return f"AddressEntry({self.text}, {self.origin.value}, expires={self.expires})"

    @property
    def text(self) -> str:
        return str(ipaddress.ip_address(self.address))

    @property
    def family(self) -> str:
        return "inet" if len(self.address) == 4 else "inet6"

    def as_dict(self, now: float) -> dict[str, object]:
        """One element of ``link show``'s ``addresses``."""
        return {
            "family": self.family,
            "address": self.text,
            "origin": self.origin.value,
            "age": round(max(0.0, now - self.last_seen), 3),
        }


# -- what a frame tells ------------------------------------------------------------------


def learned_from_sent(data: Buffer, mac: bytes) -> list[tuple[bytes, Origin]]:
    """Addresses an endpoint whose MAC is ``mac`` shows it owns by sending ``data``.

    Only frames sent with its own MAC count: a VM bridging other machines behind it sends
    their frames too, and their addresses are not its own.  ARP probes (sender 0.0.0.0)
    and DAD (source ::) claim nothing yet, except DAD's target: the address being tried.
    """
    l3 = h.l3_header(data)
    if l3 is None or bytes(data[6:12]) != mac:
        return []
    if l3.ethertype == h.ETH_P_ARP:
        arp = h.parse_arp(data, l3.offset)
        if arp is not None and arp.sha == mac and h.is_ipv4_unicast(arp.spa):
            return [(arp.spa, Origin.ARP)]
        return []
    if l3.ethertype != h.ETH_P_IPV6:
        return []
    found: list[tuple[bytes, Origin]] = []
    icmp = h.parse_icmpv6(data, l3)
    if icmp is not None:
        ip, nd = icmp
        if nd.target is not None and h.is_ipv6_unicast(nd.target):
            dad = nd.icmp_type == h.ND_NEIGHBOR_SOLICIT and ip.src == h.IPV6_UNSPECIFIED
            if nd.icmp_type == h.ND_NEIGHBOR_ADVERT or dad:
                found.append((nd.target, Origin.ND))
        if h.is_ipv6_unicast(ip.src):
            found.append((ip.src, Origin.IPV6_SOURCE))
        return found
    ip6 = h.parse_ipv6(data, l3.offset)
    if ip6 is not None and h.is_ipv6_unicast(ip6.src):
        found.append((ip6.src, Origin.IPV6_SOURCE))
    return found


def dhcp_ack_for(data: Buffer, mac: bytes) -> tuple[bytes, float | None] | None:
    """The address and lease (seconds, None if infinite or unsaid) a DHCP ACK gives ``mac``."""
    l3 = h.l3_header(data)
    if l3 is None:
        return None
    bootp = h.bootp_reply(data, l3)
    if (
        bootp is None
        or bootp.message_type != h.DHCPACK
        or bootp.chaddr != mac
        or not h.is_ipv4_unicast(bootp.yiaddr)
    ):
        return None
    lease = bootp.lease_time
    return bootp.yiaddr, None if lease is None or lease == 0xFFFFFFFF else float(lease)


# -- one endpoint's table ------------------------------------------------------------------


class AddressTable:
    """One endpoint's addresses, least recently seen first, at most ``capacity``."""

    __slots__ = ("_entries", "capacity", "ttl")

    def __init__(self, capacity: int = DEFAULT_CAPACITY, ttl: float = DEFAULT_TTL) -> None:
        if capacity < 1:
            raise ValueError("an address table holds at least one address")
        self.capacity = capacity
        self.ttl = ttl
        self._entries: OrderedDict[bytes, AddressEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, address: object) -> bool:
        return address in self._entries

    def get(self, address: bytes) -> AddressEntry | None:
        return self._entries.get(address)

    def learn(
        self, address: bytes, origin: Origin, now: float, ttl: float | None = None
    ) -> tuple[bool, list[bytes]]:
        """Record ``address`` as seen now; returns (new?, addresses evicted to make room).

        ``ttl`` overrides the table's for this sighting (a DHCP lease); ``netdev``
        addresses never age.  A more trusted origin replaces a less trusted one; a less
        trusted sighting only refreshes.
        """
        if origin is Origin.NETDEV:
            expires: float | None = None
        else:
            expires = now + (self.ttl if ttl is None else ttl)
        entry = self._entries.get(address)
        if entry is not None:
            self._entries.move_to_end(address)
            entry.last_seen = now
            if origin.rank > entry.origin.rank:
                entry.origin = origin
                entry.expires = expires
            elif entry.expires is not None:
                entry.expires = None if expires is None else max(entry.expires, expires)
            return False, []
        self._entries[address] = AddressEntry(address, origin, now, expires)
        evicted = []
        while len(self._entries) > self.capacity:
            evicted.append(self._evict_one())
        return True, evicted

    def _evict_one(self) -> bytes:
        """The least recently seen address learned from traffic, else the oldest netdev one."""
        victim = next(
            (a for a, e in self._entries.items() if e.origin is not Origin.NETDEV),
            next(iter(self._entries)),
        )
        del self._entries[victim]
        return victim

    def forget(self, address: bytes) -> bool:
        return self._entries.pop(address, None) is not None

    def expire(self, now: float) -> list[bytes]:
        gone = [a for a, e in self._entries.items() if e.expires is not None and e.expires <= now]
        for address in gone:
            del self._entries[address]
        return gone

    def next_expiry(self) -> float | None:
        times = [e.expires for e in self._entries.values() if e.expires is not None]
        return min(times) if times else None

    def entries(self, now: float) -> list[AddressEntry]:
        """Live entries, IPv4 first, each family in address order (what ``link show`` lists)."""
        live = [e for e in self._entries.values() if e.expires is None or e.expires > now]
        return sorted(live, key=lambda e: (len(e.address), e.address))

    def ipv4(self, now: float) -> list[bytes]:
        return [e.address for e in self.entries(now) if len(e.address) == 4]

    def ipv6(self, now: float) -> list[bytes]:
        return [e.address for e in self.entries(now) if len(e.address) == 16]


# -- every endpoint's tables, and the index address -> endpoint ----------------------------


class AddressBook:
    """Per-endpoint tables plus the reverse index, kept in step; endpoints by name.

    One book per lower: two lowers may sit on different networks with the same private
    addresses.  An address belongs to one endpoint at a time: when another endpoint shows
    it (an address moved between containers), the last one to show it owns it and the
    previous owner forgets it, unless the previous owner has it from its netdev (the
    kernel's word beats traffic; the index then follows the newest sighting anyway, as
    the network does).
    """

    def __init__(self, capacity: int = DEFAULT_CAPACITY, ttl: float = DEFAULT_TTL) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._tables: dict[str, AddressTable] = {}
        self._owner: dict[bytes, str] = {}

    # -- endpoints --

    def add_endpoint(self, name: str) -> AddressTable:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = AddressTable(self.capacity, self.ttl)
        return table

    def remove_endpoint(self, name: str) -> None:
        table = self._tables.pop(name, None)
        if table is None:
            return
        for entry in table.entries(float("-inf")):
            self._drop_index(entry.address, name)

    def table(self, name: str) -> AddressTable | None:
        return self._tables.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._tables

    # -- learning and forgetting --

    def learn(
        self, name: str, address: bytes, origin: Origin, now: float, ttl: float | None = None
    ) -> bool:
        """Record that ``name`` owns ``address``; True if the endpoint did not have it."""
        table = self.add_endpoint(name)
        previous = self._owner.get(address)
        if previous is not None and previous != name:
            other = self._tables.get(previous)
            if other is not None:
                entry = other.get(address)
                if entry is not None and entry.origin is not Origin.NETDEV:
                    other.forget(address)
        new, evicted = table.learn(address, origin, now, ttl)
        self._owner[address] = name
        # May include ``address`` itself, when the table is full of netdev addresses.
        for gone in evicted:
            self._drop_index(gone, name)
        return new

    def learn_from_sent(self, name: str, mac: bytes, data: Buffer, now: float) -> list[bytes]:
        """Learn what a frame ``name`` sent shows; returns the addresses new to it."""
        return [a for a, origin in learned_from_sent(data, mac) if self.learn(name, a, origin, now)]

    def learn_from_received(self, name: str, mac: bytes, data: Buffer, now: float) -> list[bytes]:
        """Learn from a frame delivered to ``name``: a DHCP ACK gives it its address."""
        ack = dhcp_ack_for(data, mac)
        if ack is None:
            return []
        address, lease = ack
        return [address] if self.learn(name, address, Origin.DHCP, now, lease) else []

    def forget(self, name: str, address: bytes) -> bool:
        """An address removed (netlink RTM_DELADDR); True if the endpoint had it."""
        table = self._tables.get(name)
        if table is None or not table.forget(address):
            return False
        self._drop_index(address, name)
        return True

    def expire(self, now: float) -> list[tuple[str, bytes]]:
        """Drop what was not seen within its lifetime; returns what went."""
        gone = []
        for name, table in self._tables.items():
            for address in table.expire(now):
                self._drop_index(address, name)
                gone.append((name, address))
        return gone

    def next_expiry(self) -> float | None:
        """When :meth:`expire` next has work: the daemon's timer for this book."""
        times = [t for t in (tb.next_expiry() for tb in self._tables.values()) if t is not None]
        return min(times) if times else None

    def _drop_index(self, address: bytes, name: str) -> None:
        if self._owner.get(address) == name:
            del self._owner[address]
            # Another endpoint that still has it (its netdev's) takes the index back.
            for other, table in self._tables.items():
                if address in table:
                    self._owner[address] = other
                    break

    # -- reading --

    def owner(self, address: bytes, now: float) -> str | None:
        """The endpoint that owns ``address`` now, if any."""
        name = self._owner.get(address)
        if name is None:
            return None
        entry = self._tables[name].get(address)
        if entry is None or (entry.expires is not None and entry.expires <= now):
            return None
        return name

    def entries(self, name: str, now: float) -> list[AddressEntry]:
        table = self._tables.get(name)
        return [] if table is None else table.entries(now)

    def as_list(self, name: str, now: float) -> list[dict[str, object]]:
        """``link show``'s ``addresses`` for one endpoint."""
        return [entry.as_dict(now) for entry in self.entries(name, now)]
