"""The pymacvtap demo: VEPA, private and bridge endpoints in a namespace lab.

Builds the lab of SPEC section 8 (a Linux bridge with hairpin ports as the
external VEPA switch, an outside host), starts the daemon in the host
namespace, creates container endpoints with the CLI, shows who can reach whom,
shows the counters, and removes everything again.  Run it as root with
``make demo`` (``python -m demo.demo`` from the repository root).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from lab import Lab, ip
from lab.daemon import DaemonProcess

SUBNET = "10.99.0"
EXT_IP = f"{SUBNET}.100"
# name, mode, address, where: container namespaces get the endpoint as eth0;
# "host" is a bridge-mode endpoint in the daemon's own namespace, the usual
# way to let the host talk to its macvlan containers.
ENDPOINTS = [
    ("vepa1", "vepa", f"{SUBNET}.11", "container"),
    ("vepa2", "vepa", f"{SUBNET}.12", "container"),
    ("priv1", "private", f"{SUBNET}.21", "container"),
    ("priv2", "private", f"{SUBNET}.22", "container"),
    ("hostbr", "bridge", f"{SUBNET}.1", "host"),
]
CHECKS = [
    ("vepa1", "vepa2", "container to container, through the switch's hairpin"),
    ("vepa1", "ext", "container to the outside host"),
    ("priv1", "ext", "private container to the outside host"),
    ("priv1", "priv2", "private to private: ARP never reaches the sibling"),
    ("hostbr", "vepa1", "host (own bridge endpoint) to a container"),
]


def say(text: str = "") -> None:
    try:
        print(text, flush=True)
    except BrokenPipeError:
        # Nobody reads any more (`make demo | head`): go on quietly and clean up.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


class Demo:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.daemon = DaemonProcess(lab.host, workdir)
        self.netns: dict[str, str] = {}
        self.addresses: dict[str, str] = {"ext": EXT_IP}

    def cli(self, *args: str, check: bool = True) -> str:
        """Run the pymacvtap CLI as a user would, echoing the command."""
        say(f"  $ pymacvtap {' '.join(args)}")
        proc = self.daemon.run_cli(*args)
        if check and proc.returncode != 0:
            raise RuntimeError(proc.stderr.strip())
        return proc.stdout

    def build(self) -> None:
        say("The lab: a Linux bridge with hairpin ports plays the external VEPA switch;")
        say(f"an outside host has {EXT_IP}; the daemon owns the lower 'low0'.")
        self.lab.add_lower("low0", bytes.fromhex("020000000a01"), hairpin=True)
        self.daemon.start()
        say()
        say("Endpoints (the CLI speaks to the daemon's control socket):")
        for name, mode, address, where in ENDPOINTS:
            args = ["link", "add", "link", "low0", "name", name, "type", "macvlan", "mode", mode]
            if where == "container":
                ns = self.lab.add_netns(name)
                self.netns[name] = ns
                args += ["netns", ns, "ifname", "eth0"]
                dev = "eth0"
            else:
                ns = self.lab.host
                self.netns[name] = ns
                dev = name
            self.cli(*args)
            self.cli("link", "set", name, "up")
            ip(ns, "addr", "add", f"{address}/24", "dev", dev)
            self.addresses[name] = address
        self.netns["ext"] = self.lab.ext

    def ping(self, src: str, dst: str) -> bool:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.netns[src], "ping", "-c", "2", "-i", "0.2", "-W", "1",
             self.addresses[dst]],
            capture_output=True,
            check=False,
        )  # fmt: skip
        return proc.returncode == 0

    def reachability(self) -> None:
        say()
        say("Reachability (ping):")
        say(f"  {'from':<8} {'to':<8} {'result':<8} why")
        for src, dst, why in CHECKS:
            ok = self.ping(src, dst)
            say(f"  {src:<8} {dst:<8} {'reached' if ok else 'no':<8} {why}")
        say()
        say("Hairpin off on the switch port: VEPA siblings lose each other, bridge mode")
        say("endpoints would still talk directly.")
        self.lab.set_hairpin("low0", False)
        ok = self.ping("vepa1", "vepa2")
        say(f"  {'vepa1':<8} {'vepa2':<8} {'reached' if ok else 'no':<8} hairpin off")
        self.lab.set_hairpin("low0", True)

    def show(self) -> None:
        say()
        say("Counters:")
        for line in self.cli("-s", "link", "show").splitlines():
            say(f"    {line}")

    def teardown(self) -> None:
        # The daemon is stopped even when the report cannot be printed (a closed
        # pipe, `make demo | head`): no daemon may outlive the demo.
        try:
            say()
            say("Cleaning up:")
            for name, *_ in ENDPOINTS:
                self.cli("link", "del", name, check=False)
        finally:
            self.daemon.cleanup()


def main() -> int:
    if os.geteuid() != 0:
        print("demo: needs root (network namespaces)", file=sys.stderr)
        return 1
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            print(f"demo: {tool} is missing (make demo installs it)", file=sys.stderr)
            return 1
    workdir = Path(tempfile.mkdtemp(prefix="pymacvtap-demo-"))
    with Lab(ext_ip=f"{EXT_IP}/24") as lab:
        demo = Demo(lab, workdir)
        try:
            demo.build()
            demo.reachability()
            demo.show()
        except Exception as exc:
            print(f"demo: {exc}", file=sys.stderr)
            print(demo.daemon.log(), file=sys.stderr)
            return 1
        finally:
            demo.teardown()
    shutil.rmtree(workdir, ignore_errors=True)
    say("Done: namespaces, endpoints and the daemon are gone.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
