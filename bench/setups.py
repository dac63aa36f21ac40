"""The two setups under test, in one lab: kernel macvlan and pymacvtap, VEPA on a hairpin.

::

    sw:    br0 --- sw-lowk (hairpin) ---- lowk (host) -- kernel macvlan vepa -> k-c1, k-c2, ...
               |-- sw-lowp (hairpin) ---- lowp (host) -- pymacvtap daemon    -> p-c1, p-c2, ...
               `-- sw-ext ------------------------------ eth0 (ext) 10.97.0.100

Each setup has its own lower, so the daemon's AF_PACKET socket never sees the kernel
setup's frames.  The switch learns nothing (the lab turns learning off); every endpoint
MAC gets a static fdb entry towards its lower's port, so endpoint→endpoint frames are
reflected by the hairpin port instead of being flooded to every port.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lab import Lab, delete_netns, ip, ip_batch, mac_str
from lab.daemon import DaemonProcess

SUBNET = "10.97.0"
EXT_ADDRESS = f"{SUBNET}.100"
# "pymacvtap" is the Python data path, "fastpath" the same daemon code with --datapath ebpf.
LOWERS = {"kernel": ("lowk", 0x0B01), "pymacvtap": ("lowp", 0x0B02), "fastpath": ("lowf", 0x0B03)}
FIRST_HOST = {"kernel": 11, "pymacvtap": 21, "fastpath": 61}  # c1 of kernel is .11, ...
TAGS = {"kernel": ("k", 0x0A), "pymacvtap": ("p", 0x0B), "fastpath": ("f", 0x0C)}


def new_lab() -> Lab:
    lab = Lab(ext_ip=f"{EXT_ADDRESS}/24")
    try:
        for name, low in LOWERS.values():
            lab.add_lower(name, bytes.fromhex("02000000") + low.to_bytes(2, "big"), hairpin=True)
    except BaseException:
        lab.close()
        raise
    return lab


class BenchDaemon(DaemonProcess):
    """The lab's daemon, optionally under ``python -m cProfile -o PROFILE``.

    SIGTERM (``stop``) makes the daemon return from main, and cProfile then
    writes the profile.
    """

    def __init__(
        self, netns: str, workdir: Path, *, profile: Path | None = None, datapath: str = "python"
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        interpreter = ["-m", "cProfile", "-o", str(profile)] if profile is not None else []
        super().__init__(netns, workdir, interpreter=interpreter, datapath=datapath)
        self.profile = profile

    def stop(self, timeout: float = 60.0) -> int | None:
        # Writing a profile of a long run takes a moment.
        return super().stop(timeout)


@dataclass
class Container:
    role: str  # "c1"
    netns: str
    address: str
    mac: bytes


@dataclass
class Setup:
    """Endpoints of one kind on their own lower, each in a container namespace as eth0."""

    kind: str  # "kernel" or "pymacvtap"
    lab: Lab
    daemon: BenchDaemon | None = None
    containers: dict[str, Container] = field(default_factory=dict)

    @property
    def lower(self) -> str:
        return LOWERS[self.kind][0]

    @property
    def daemon_pid(self) -> int | None:
        return self.daemon.pid if self.daemon is not None else None

    def add_container(self, role: str) -> Container:
        index = len(self.containers)
        tag, byte = TAGS[self.kind]
        netns = self.lab.add_netns(f"{tag}-{role}")
        mac = bytes([0x02, 0, 0, 0x01, byte, index + 1])
        address = f"{SUBNET}.{FIRST_HOST[self.kind] + index}"
        name = f"{tag}{role}"
        if self.daemon is None:
            ip(self.lab.host, "link", "add", "link", self.lower, "name", name,
               "address", mac_str(mac), "type", "macvlan", "mode", "vepa")  # fmt: skip
            ip(self.lab.host, "link", "set", name, "netns", netns)
            ip(netns, "link", "set", name, "name", "eth0")
        else:
            self.daemon.cli(
                "link", "add", "link", self.lower, "name", name, "type", "macvlan",
                "mode", "vepa", "address", mac_str(mac), "netns", netns, "ifname", "eth0",
            )  # fmt: skip
            self.daemon.cli("link", "set", name, "up")
        ip_batch(netns, [f"addr add {address}/24 dev eth0", "link set eth0 up"])
        self.lab.fdb_static(mac, self.lab.lowers[self.lower].port)
        container = Container(role, netns, address, mac)
        self.containers[role] = container
        return container

    def remove_containers(self) -> None:
        tag = TAGS[self.kind][0]
        for role, c in list(self.containers.items()):
            if self.daemon is not None:
                self.daemon.run_cli("link", "del", f"{tag}{role}")
            delete_netns(c.netns)
            if c.netns in self.lab.namespaces:
                self.lab.namespaces.remove(c.netns)
            del self.containers[role]
