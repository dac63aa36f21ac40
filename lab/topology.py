"""The lab of SPEC section 8: a switch namespace, a host with lowers, an outside machine.

::

    netns <prefix>sw    br0 (stp off, multicast_snooping off)
                         |-- sw-<lower>   (hairpin on|off, learning off)  <-veth->  <lower> in host
                         `-- sw-ext       (hairpin off, learning off)     <-veth->  eth0 in ext
    netns <prefix>host  the lowers; kernel macvlan endpoints on them (or the daemon)
    netns <prefix>ext   eth0, the outside machine
    netns <prefix>cN    optional per-endpoint namespaces

Usage::

    with Lab() as lab:
        low = lab.add_lower("low0", mac=b"\\x02...", hairpin=True)
        lab.add_macvlan("c1", "low0", "vepa", mac=..., up=True)
        ...

Everything is deleted on ``close()`` (also on error), and at interpreter exit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .capture import PacketSocket
from .netns import (
    bridge,
    cleanup_leftovers,
    create_netns,
    delete_netns,
    ip,
    ip_batch,
    ip_json,
    unique_prefix,
)


def mac_str(mac: bytes) -> str:
    return mac.hex(":")


def mac_bytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


@dataclass
class Lower:
    """A lower in the host namespace and its switch port (a veth pair)."""

    name: str  # device in the host namespace
    port: str  # its peer, a port of br0 in the switch namespace
    mac: bytes
    hairpin: bool


@dataclass
class Lab:
    """The namespaces and the switch; see the module docstring."""

    prefix: str = field(default_factory=unique_prefix)
    ext_mac: bytes = b"\x02\x00\x00\x00\xee\x01"
    ext_ip: str | None = None  # e.g. "10.99.0.100/24" to give ext an address
    lowers: dict[str, Lower] = field(default_factory=dict)
    namespaces: list[str] = field(default_factory=list)

    sw: str = ""
    host: str = ""
    ext: str = ""
    ext_dev: str = "eth0"
    ext_port: str = "sw-ext"

    def __post_init__(self) -> None:
        cleanup_leftovers()
        try:
            self.sw = self.add_netns("sw")
            self.host = self.add_netns("host")
            self.ext = self.add_netns("ext")
            ip_batch(
                self.sw,
                [
                    "link add br0 type bridge stp_state 0 mcast_snooping 0",
                    "link set br0 up",
                ],
            )
            ip(
                self.ext,
                "link", "add", self.ext_dev, "address", mac_str(self.ext_mac),
                "type", "veth", "peer", "name", self.ext_port, "netns", self.sw,
            )  # fmt: skip
            self._attach_port(self.ext_port, hairpin=False)
            ip(self.ext, "link", "set", self.ext_dev, "up")
            if self.ext_ip:
                ip(self.ext, "addr", "add", self.ext_ip, "dev", self.ext_dev)
            self.fdb_static(self.ext_mac, self.ext_port)
        except BaseException:
            self.close()
            raise

    # -- namespaces ---------------------------------------------------------------

    def add_netns(self, role: str) -> str:
        """Create ``<prefix><role>`` (IPv6 off) and remember it for teardown."""
        name = self.prefix + role
        create_netns(name)
        self.namespaces.append(name)
        return name

    def close(self) -> None:
        for name in reversed(self.namespaces):
            delete_netns(name)
        self.namespaces.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- switch ---------------------------------------------------------------------

    def _attach_port(self, port: str, *, hairpin: bool) -> None:
        ip_batch(
            self.sw,
            [
                f"link set {port} master br0",
                f"link set {port} type bridge_slave hairpin {'on' if hairpin else 'off'}"
                " learning off",
                f"link set {port} up",
            ],
        )

    def set_hairpin(self, lower: str, on: bool) -> None:
        """Reflective relay on the switch port facing ``lower``."""
        low = self.lowers[lower]
        if low.hairpin != on:
            ip(self.sw, "link", "set", low.port, "type", "bridge_slave", "hairpin",
               "on" if on else "off")  # fmt: skip
            low.hairpin = on

    def fdb_static(self, mac: bytes, port: str) -> None:
        """A static switch table entry: frames for ``mac`` leave by ``port``."""
        bridge(self.sw, "fdb", "replace", mac_str(mac), "dev", port, "master", "static")

    def fdb_static_many(self, entries: dict[bytes, str]) -> None:
        for mac, port in entries.items():
            self.fdb_static(mac, port)

    # -- lowers and endpoints ----------------------------------------------------------

    def add_lower(self, name: str, mac: bytes, *, hairpin: bool = True, mtu: int = 1500) -> Lower:
        """A veth ``name`` in host whose peer ``sw-<name>`` is a br0 port."""
        port = f"sw-{name}"
        ip(
            self.host,
            "link", "add", name, "address", mac_str(mac), "mtu", str(mtu),
            "type", "veth", "peer", "name", port, "netns", self.sw,
        )  # fmt: skip
        ip(self.sw, "link", "set", port, "mtu", str(mtu))
        self._attach_port(port, hairpin=hairpin)
        ip(self.host, "link", "set", name, "up")
        low = Lower(name, port, mac, hairpin)
        self.lowers[name] = low
        return low

    def add_macvlan(
        self,
        name: str,
        lower: str,
        mode: str,
        *,
        mac: bytes | None = None,
        up: bool = True,
        kind: str = "macvlan",
        groups: tuple[bytes, ...] = (),
        allmulti: bool = False,
        netns: str | None = None,
    ) -> str:
        """A kernel macvlan/macvtap endpoint; returns the namespace it lives in.

        ``groups`` are joined (``ip maddr add``) before the endpoint goes up.  With
        ``netns`` (a full namespace name, e.g. from :meth:`add_netns`) it is moved there.
        """
        args = ["link", "add", "link", lower, "name", name]
        if mac is not None and mode != "passthru":
            args += ["address", mac_str(mac)]
        ip(self.host, *args, "type", kind, "mode", mode)
        where = self.host
        if netns is not None:
            ip(self.host, "link", "set", name, "netns", netns)
            where = netns
        # One `ip maddr add` per group: iproute2 6.1 applies only the first
        # `maddr add` line of a batch, silently.
        for group in groups:
            ip(where, "maddr", "add", mac_str(group), "dev", name)
        cmds = []
        if allmulti:
            cmds.append(f"link set {name} allmulticast on")
        if up:
            cmds.append(f"link set {name} up")
        if cmds:
            ip_batch(where, cmds)
        return where

    def delete_link(self, name: str, netns: str | None = None) -> None:
        ip(netns or self.host, "link", "del", name, check=False)

    def set_up(self, name: str, up: bool, netns: str | None = None) -> None:
        ip(netns or self.host, "link", "set", name, "up" if up else "down")

    def macaddr(self, name: str, op: str, macs: list[bytes], netns: str | None = None) -> None:
        """``ip link set NAME type macvlan macaddr add|del|set|flush ...`` (source mode).

        ``add``/``del`` take one address per command in iproute2: one command each.
        """
        base = f"link set {name} type macvlan macaddr {op}"
        if op in ("add", "del"):
            ip_batch(netns or self.host, [f"{base} {mac_str(m)}" for m in macs])
        else:
            ip_batch(netns or self.host, [" ".join([base, *(mac_str(m) for m in macs)])])

    def join_group(self, name: str, group: bytes, netns: str | None = None) -> None:
        ip(netns or self.host, "maddr", "add", mac_str(group), "dev", name)

    def groups(self, name: str, netns: str | None = None) -> set[bytes]:
        """Link-layer multicast addresses on ``name`` (``ip maddr show``)."""
        out = ip(netns or self.host, "maddr", "show", "dev", name)
        found = set()
        for line in out.splitlines():
            words = line.split()
            if len(words) >= 2 and words[0] == "link":
                found.add(mac_bytes(words[1]))
        return found

    def link_stats(self, netns: str | None = None) -> dict[str, dict[str, dict[str, int]]]:
        """ifname -> ``stats64`` ({"rx": {...}, "tx": {...}}) for every link in ``netns``."""
        return {
            link["ifname"]: link["stats64"]
            for link in ip_json(netns or self.host, "-s", "link", "show")
        }

    def link_info(self, name: str, netns: str | None = None) -> dict[str, object]:
        """``ip -d -j link show NAME`` (one link)."""
        info: dict[str, object] = ip_json(netns or self.host, "-d", "link", "show", "dev", name)[0]
        return info

    # -- sockets -------------------------------------------------------------------------

    def endpoint_socket(self, name: str, netns: str | None = None) -> PacketSocket:
        """An AF_PACKET socket on an endpoint (sending on it enters macvlan_start_xmit)."""
        return PacketSocket(netns or self.host, name)

    def wire_socket(self, lower: str) -> PacketSocket:
        """A socket on the switch port facing ``lower``: its ingress is what the lower sent."""
        return PacketSocket(self.sw, self.lowers[lower].port)

    def ext_socket(self) -> PacketSocket:
        """A socket on ext's interface: send to inject from outside, ingress = what ext got."""
        return PacketSocket(self.ext, self.ext_dev)
