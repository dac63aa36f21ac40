"""The user-space switches a user might pick instead: vde_switch and Open vSwitch (userspace).

Each is a :class:`~bench.setups.Setup` whose containers hang off the switch
instead of a lower, so the same measurements run on it (c1→c2 through the
switch; there is no hairpin and no ext behind it).  The switch is started by
the bench itself, without systemd, and stopped at the end; its process is the
one whose CPU is metered.  A switch that cannot start raises :class:`PeerError`
with the reason, which becomes the peer's row.

* ``vde_switch`` (Debian ``vde2``): one ``vde_plug2tap`` per container, a tap
  named eth0 in the container's namespace plugged into the switch.
* Open vSwitch (Debian ``openvswitch-switch``): ``ovsdb-server`` and
  ``ovs-vswitchd`` on a private database, one bridge with
  ``datapath_type=netdev`` (the userspace datapath: no kernel module), a veth
  pair per container whose host end is a port of the bridge.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab import delete_netns, ip, ip_batch, mac_str
from lab.daemon import wait_until

from .measure import netns_argv, stop
from .setups import SUBNET, Container, Setup

PEER_FIRST_HOST = {"vde_switch": 81, "ovs_userspace": 91}  # their own L2: no clash anyway
PEER_TAG = {"vde_switch": ("v", 0x0D), "ovs_userspace": ("o", 0x0E)}
OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")


class PeerError(RuntimeError):
    """The switch could not be started here; the message says why."""


def _need(*programs: str) -> None:
    missing = [p for p in programs if shutil.which(p) is None]
    if missing:
        raise PeerError(f"{', '.join(missing)} not installed")


@dataclass
class PeerSetup(Setup):
    workdir: Path = Path("/tmp")
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    switch: subprocess.Popen[bytes] | None = None

    @property
    def daemon_pid(self) -> int | None:
        return self.switch.pid if self.switch is not None else None

    def start(self) -> None:
        """Start the switch; PeerError says why it cannot be."""
        raise NotImplementedError

    def _spawn(
        self, argv: list[str], log: str, *, console: bool = False
    ) -> subprocess.Popen[bytes]:
        """``console``: give it a stdin that stays open (vde_switch exits at EOF on stdin)."""
        stdin = subprocess.PIPE if console else subprocess.DEVNULL
        with open(self.workdir / log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def _container(self, role: str) -> tuple[str, bytes, str]:
        index = len(self.containers)
        tag, byte = PEER_TAG[self.kind]
        netns = self.lab.add_netns(f"{tag}-{role}")
        mac = bytes([0x02, 0, 0, 0x01, byte, index + 1])
        return netns, mac, f"{SUBNET}.{PEER_FIRST_HOST[self.kind] + index}"

    def _up(self, role: str, netns: str, mac: bytes, address: str) -> Container:
        ip_batch(
            netns,
            [f"link set eth0 address {mac_str(mac)}", f"addr add {address}/24 dev eth0",
             "link set eth0 up"],
        )  # fmt: skip
        container = Container(role, netns, address, mac)
        self.containers[role] = container
        return container

    def remove_containers(self) -> None:
        for c in self.containers.values():
            delete_netns(c.netns)
            if c.netns in self.lab.namespaces:
                self.lab.namespaces.remove(c.netns)
        self.containers.clear()

    def close(self) -> None:
        for proc in reversed(self.procs):
            stop(proc)
        self.procs.clear()


class VdeSetup(PeerSetup):
    def start(self) -> None:
        _need("vde_switch", "vde_plug2tap")
        self.sock = self.workdir / "vde.ctl"
        self.switch = self._spawn(
            netns_argv(self.lab.host, "vde_switch", "-s", str(self.sock)),
            "vde_switch.log",
            console=True,
        )
        if not wait_until(lambda: (self.sock / "ctl").exists(), 5):
            raise PeerError(f"vde_switch did not start: {self._log('vde_switch.log')}")

    def _log(self, name: str) -> str:
        try:
            return (self.workdir / name).read_text(errors="replace")[-300:].strip()
        except FileNotFoundError:
            return ""

    def add_container(self, role: str) -> Container:
        netns, mac, address = self._container(role)
        self._spawn(
            netns_argv(netns, "vde_plug2tap", "-s", str(self.sock), "eth0"), f"plug-{role}.log"
        )
        if not wait_until(lambda: _exists(netns, "eth0"), 5):
            raise PeerError(f"vde_plug2tap did not make eth0: {self._log(f'plug-{role}.log')}")
        return self._up(role, netns, mac, address)


class OvsSetup(PeerSetup):
    def start(self) -> None:
        _need("ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool")
        if not OVS_SCHEMA.exists():
            raise PeerError(f"{OVS_SCHEMA} missing")
        d = self.workdir
        self.db = f"unix:{d / 'db.sock'}"
        subprocess.run(
            ["ovsdb-tool", "create", str(d / "conf.db"), str(OVS_SCHEMA)],
            check=True,
            capture_output=True,
        )
        host = self.lab.host
        self._spawn(
            netns_argv(host, "ovsdb-server", str(d / "conf.db"), f"--remote=p{self.db}",
                       f"--unixctl={d / 'ovsdb.ctl'}", f"--log-file={d / 'ovsdb.log'}"),
            "ovsdb.out",
        )  # fmt: skip
        if not wait_until(lambda: (d / "db.sock").exists(), 5):
            raise PeerError(f"ovsdb-server did not start: {(d / 'ovsdb.out').read_text()[-300:]}")
        self.vsctl("--no-wait", "init")
        self.switch = self._spawn(
            netns_argv(host, "ovs-vswitchd", self.db, f"--unixctl={d / 'vswitchd.ctl'}",
                       f"--log-file={d / 'vswitchd.log'}"),
            "vswitchd.out",
        )  # fmt: skip
        time.sleep(0.5)
        if self.switch.poll() is not None:
            raise PeerError(f"ovs-vswitchd exited: {(d / 'vswitchd.out').read_text()[-300:]}")
        self.vsctl("--timeout=10", "add-br", "pmvbr", "--", "set", "bridge", "pmvbr",
                   "datapath_type=netdev")  # fmt: skip

    def vsctl(self, *args: str) -> str:
        proc = subprocess.run(
            netns_argv(self.lab.host, "ovs-vsctl", f"--db={self.db}", *args),
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if proc.returncode != 0:
            raise PeerError(f"ovs-vsctl {' '.join(args)}: {proc.stderr.strip()}")
        return proc.stdout

    def add_container(self, role: str) -> Container:
        netns, mac, address = self._container(role)
        port = f"ovs-{role}"
        ip(self.lab.host, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", netns)  # fmt: skip
        ip(self.lab.host, "link", "set", port, "up")
        self.vsctl("--timeout=10", "add-port", "pmvbr", port)
        # The userspace datapath takes no TCP super-frames (unless built and told to):
        # the container sends MTU-sized, checksummed frames, as to any user-space switch.
        subprocess.run(
            netns_argv(netns, "ethtool", "-K", "eth0", "tx", "off", "tso", "off", "gso", "off"),
            capture_output=True,
            check=False,
        )
        return self._up(role, netns, mac, address)

    def close(self) -> None:
        for role in list(self.containers):
            subprocess.run(
                netns_argv(self.lab.host, "ip", "link", "del", f"ovs-{role}"),
                capture_output=True,
                check=False,
            )
        super().close()


def _exists(netns: str, ifname: str) -> bool:
    return (
        subprocess.run(
            netns_argv(netns, "ip", "link", "show", ifname), capture_output=True, check=False
        ).returncode
        == 0
    )


PEERS: dict[str, type[PeerSetup]] = {"vde_switch": VdeSetup, "ovs_userspace": OvsSetup}
