"""The lab with one lower and a daemon on it: what most daemon tests start from."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from lab.daemon import DaemonProcess
from lab.netns import ip
from lab.topology import Lab

# The one lab the daemon tests share: the outside host is SUBNET.100.
SUBNET = "10.97.0"
EXT_IP = f"{SUBNET}.100"
LOWER_MAC = bytes.fromhex("020000000c01")


@contextlib.contextmanager
def lab_with_lower(subnet: str, lower_mac: bytes, lower: str = "low0") -> Iterator[Lab]:
    """SPEC 8's lab: the outside host at ``subnet``.100/24, one hairpin lower."""
    with Lab(ext_ip=f"{subnet}.100/24") as lab:
        lab.add_lower(lower, lower_mac, hairpin=True)
        yield lab


@contextlib.contextmanager
def running_daemon(
    lab: Lab,
    workdir: Path,
    *,
    must_survive: bool = False,
    announce_rounds: int | None = 0,
    datapath: str | None = None,
) -> Iterator[DaemonProcess]:
    """A started daemon in the lab's host namespace, stopped and cleaned up afterwards.

    Its log is printed at the end (pytest shows it only for a failed test);
    ``must_survive`` fails the test if the daemon died during it.
    """
    proc = DaemonProcess(lab.host, workdir, announce_rounds=announce_rounds, datapath=datapath)
    proc.start()
    try:
        yield proc
        if must_survive:
            assert proc.proc is not None and proc.proc.poll() is None, proc.log()
    finally:
        proc.cleanup()
        print(proc.log())


class Containers:
    """Container endpoints: a namespace each, with the endpoint as eth0 and an address."""

    def __init__(self, lab: Lab, daemon: DaemonProcess) -> None:
        self.lab = lab
        self.daemon = daemon
        self.netns: dict[str, str] = {}
        self.address: dict[str, str] = {"ext": EXT_IP}
        self._next = 11

    def add(self, name: str, mode: str, *, lower: str = "low0", extra: tuple[str, ...] = ()) -> str:
        ns = self.lab.add_netns(name)
        self.daemon.cli(
            "link", "add", "link", lower, "name", name, "type", "macvlan", "mode", mode,
            "netns", ns, "ifname", "eth0", *extra,
        )  # fmt: skip
        address = f"{SUBNET}.{self._next}"
        self._next += 1
        ip(ns, "addr", "add", f"{address}/24", "dev", "eth0")
        ip(ns, "link", "set", "eth0", "up")
        self.netns[name] = ns
        self.address[name] = address
        return ns

    def ns_of(self, name: str) -> str:
        return self.lab.ext if name == "ext" else self.netns[name]

    def ping(self, src: str, dst: str, count: int = 2) -> bool:
        """True when every echo request of ``src`` to ``dst`` was answered."""
        proc = subprocess.run(
            ["ip", "netns", "exec", self.ns_of(src), "ping", "-c", str(count), "-i", "0.2",
             "-W", "1", self.address[dst]],
            capture_output=True,
            check=False,
        )  # fmt: skip
        return proc.returncode == 0
