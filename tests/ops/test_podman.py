"""Podman 4 (CNI backend) running containers on pymacvtap-cni, as docs/containers.md says.

Everything Podman keeps is under a temporary directory: its storage (``--root``,
``--runroot``), its containers.conf (``CONTAINERS_CONF``: the CNI backend, the
configuration and plugin directories, runc and the ulimits this kernel needs) and
storage.conf; the conflist is the guide's, written to the test's own CNI
configuration directory.  Podman runs in the lab's host namespace (``nsenter
--net``, so that the namespaces it makes under /run/netns are seen by the daemon),
on a busybox image loaded with ``podman import``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from lab.daemon import DaemonProcess
from lab.dnsmasq import dnsmasq
from lab.fixtures import EXT_IP, SUBNET
from lab.readme import code_blocks
from lab.rootfs import busybox_rootfs

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(120),
]

GUIDE = "docs/containers.md"
CNI_PLUGINS = "/usr/lib/cni"  # Debian's containernetworking-plugins (host-local)
# libcni's cache of results, which Podman 4.3 does not let be moved; emptied at DEL, and
# removed after the test if the test made it.
CNI_CACHE = Path("/var/lib/cni")


class Podman:
    """``podman`` with every path of its own under ``root``, in namespace ``netns``."""

    def __init__(self, netns: str, root: Path) -> None:
        self.netns = netns
        self.root = root
        self.net_dir = root / "net.d"
        self.bin_dir = root / "cni-bin"
        for d in (self.net_dir, self.bin_dir, root / "tmp"):
            d.mkdir(parents=True)
        plugin = self.bin_dir / "pymacvtap-cni"
        plugin.write_text(f'#!/bin/sh\nexec {sys.executable} -m pymacvtap.cni "$@"\n')
        plugin.chmod(0o755)
        (root / "containers.conf").write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'network_config_dir = "{self.net_dir}"\n'
            f'cni_plugin_dirs = ["{self.bin_dir}", "{CNI_PLUGINS}"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{root / "events.log"}"\n'
            f'tmp_dir = "{root / "tmp"}"\n'
            f'static_dir = "{root / "libpod"}"\n'
            f'volume_path = "{root / "volumes"}"\n'
        )
        (root / "storage.conf").write_text(
            f'[storage]\ndriver = "vfs"\ngraphroot = "{root / "storage"}"\n'
            f'runroot = "{root / "run"}"\n'
        )
        self.env = dict(
            os.environ,
            CONTAINERS_CONF=str(root / "containers.conf"),
            CONTAINERS_STORAGE_CONF=str(root / "storage.conf"),
            CONTAINERS_REGISTRIES_CONF=str(root / "registries.conf"),
            TMPDIR=str(root / "tmp"),
        )
        (root / "registries.conf").write_text("unqualified-search-registries = []\n")

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = [
            "nsenter", f"--net=/run/netns/{self.netns}", "podman",
            "--root", str(self.root / "storage"), "--runroot", str(self.root / "run"),
            "--storage-driver", "vfs", *args,
        ]  # fmt: skip
        proc = subprocess.run(
            argv, env=self.env, capture_output=True, text=True, check=False, timeout=90
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {proc.stderr.strip()}")
        return proc


@pytest.fixture
def podman(lab: Lab) -> Iterator[Podman]:
    root = Path(tempfile.mkdtemp(prefix="pmvt-podman-"))
    cache_was_there = CNI_CACHE.exists()
    engine = Podman(lab.host, root)
    try:
        tar = root / "rootfs.tar"
        busybox_rootfs(tar)
        engine.run("import", str(tar), "busybox")
        yield engine
    finally:
        for container in engine.run("ps", "-aq", check=False).stdout.split():
            engine.run("rm", "-f", container, check=False)
        shutil.rmtree(root, ignore_errors=True)
        if not cache_was_there:
            shutil.rmtree(CNI_CACHE, ignore_errors=True)


def guide_example() -> tuple[dict[str, object], list[str]]:
    """The guide's conflist and its ``podman`` command lines."""
    [block] = code_blocks("Podman", "sh", doc=GUIDE)
    m = re.search(r"<<'JSON'\n(.*?\n)JSON\n", block, re.DOTALL)
    assert m, block
    commands = [line for line in block.splitlines() if line.startswith("podman ")]
    return json.loads(m[1]), commands


def write_conflist(podman: Podman, conflist: dict[str, object], daemon: DaemonProcess,
                   ipam: dict[str, object]) -> None:  # fmt: skip
    """The guide's conflist but for the lab: the lower, the daemon's socket, the IPAM."""
    (plugin,) = conflist["plugins"]  # type: ignore[misc]
    plugin = dict(plugin, master="low0", socket=str(daemon.socket), ipam=ipam)
    text = json.dumps(dict(conflist, plugins=[plugin]))
    (podman.net_dir / f"20-{conflist['name']}.conflist").write_text(text)


def run_line(podman: Podman, line: str) -> subprocess.CompletedProcess[str]:
    words = shlex.split(line)
    assert words[0] == "podman"
    return podman.run(*words[1:])


def test_the_guides_podman_network(
    lab: Lab, daemon: DaemonProcess, podman: Podman, tmp_path: Path
) -> None:
    conflist, commands = guide_example()
    (plugin,) = conflist["plugins"]  # type: ignore[misc]
    assert (plugin["type"], plugin["master"], plugin["mode"]) == ("pymacvtap-cni", "eth0", "vepa")
    ipam = dict(plugin["ipam"], dataDir=str(tmp_path / "ipam"))
    write_conflist(podman, conflist, daemon, ipam)
    run, ping, remove = commands[:2], commands[2], commands[3]
    for line in run:
        run_line(podman, line)
    shown = daemon.show()
    assert len(shown) == 2, shown
    assert {e["mode"] for e in shown} == {"vepa"}
    run_line(podman, ping)  # the outside host
    address = podman.run("exec", "p2", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    p2 = address.split("inet ")[1].split("/")[0]
    podman.run("exec", "p1", "ping", "-c", "1", "-W", "3", p2)  # the hairpin
    # The daemon restarted: the containers' netdevs are found again and forward.
    daemon.stop()
    daemon.start()
    assert len(daemon.show()) == 2
    podman.run("exec", "p2", "ping", "-c", "1", "-W", "3", EXT_IP)
    run_line(podman, remove)
    assert daemon.show() == []


def test_podman_with_dhcp_ipam(
    lab: Lab, daemon: DaemonProcess, podman: Podman, tmp_path: Path
) -> None:
    """``"ipam": {"type": "pymacvtap-dhcp"}``: leases from dnsmasq, the container's name as
    the host name, released when the containers go."""
    conflist, _ = guide_example()
    write_conflist(podman, conflist, daemon, {"type": "pymacvtap-dhcp"})
    name = conflist["name"]
    with dnsmasq(lab.ext, lab.ext_dev, tmp_path, f"{SUBNET}.50", f"{SUBNET}.60", EXT_IP) as server:
        for container in ("q1", "q2"):
            podman.run("run", "-d", "--name", container, "--network", str(name), "busybox",
                       "sleep", "600")  # fmt: skip
        leases = {lease.hostname: lease.address for lease in server.leases()}
        assert set(leases) == {"q1", "q2"} and leases["q1"] != leases["q2"]
        inside = podman.run("exec", "q1", "ip", "-o", "-4", "addr", "show", "eth0").stdout
        assert f"{leases['q1']}/24" in inside
        podman.run("exec", "q1", "ping", "-c", "1", "-W", "3", leases["q2"])
        podman.run("rm", "-f", "q1", "q2")
        assert daemon.show() == []
        assert server.leases() == []
