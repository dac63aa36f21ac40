"""pymacvtap-docker with a real dockerd: containers on a pymacvtap network, in the lab.

The test starts its own dockerd in the lab's host namespace (where the pymacvtap
daemon and its lower live), with everything under a temporary directory
(``--data-root``, ``--exec-root``, ``--pidfile``, ``-H unix://``), no iptables and
no bridge; the driver's socket has a name of its own in /run/docker/plugins, so
the network driver is ``-d <that name>``.  The image is a busybox rootfs made
here and loaded with ``docker import``.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.daemon import DaemonProcess, wait_until
from lab.dnsmasq import dnsmasq
from lab.fixtures import lab_with_lower, running_daemon
from lab.netns import ip, unique_prefix
from lab.readme import code_blocks
from lab.rootfs import busybox_rootfs

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(240),
]

PLUGIN_DIR = Path("/run/docker/plugins")
SUBNET = "10.77.0"
LOWER_MAC = bytes.fromhex("020000770001")
IMAGE = "pmvt-busybox:latest"


class Dockerd:
    """A private dockerd and the ``docker`` CLI pointed at it."""

    def __init__(self, netns: str, root: Path) -> None:
        self.netns = netns
        self.root = root
        self.host = f"unix://{root / 'docker.sock'}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "dockerd.log"

    def start(self) -> None:
        argv = [
            "nsenter", f"--net=/run/netns/{self.netns}", "dockerd",
            "--iptables=false", "--ip6tables=false", "--ip-masq=false", "--bridge=none",
            "--userland-proxy=false", "--storage-driver=vfs", "--live-restore",
            f"--data-root={self.root / 'data'}", f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'docker.pid'}", "-H", self.host,
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while self.docker("info", check=False).returncode != 0:
            assert self.proc.poll() is None, f"dockerd exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"dockerd did not start:\n{self.log()}"
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def docker(
        self, *args: str, check: bool = True, stdin: bytes | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["docker", "-H", self.host, *args],
            input=stdin.decode("latin-1") if stdin is not None else None,
            capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {proc.stderr.strip()}")
        return proc


@contextlib.contextmanager
def driver_process(name: str, control: Path, state: Path) -> Iterator[Path]:
    socket_path = PLUGIN_DIR / f"{name}.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pymacvtap.docker.server", "--socket", str(socket_path),
         "--state", str(state), "--control", str(control), "-v"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not socket_path.exists():
            assert proc.poll() is None, "pymacvtap-docker exited"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        yield socket_path
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)
        print(out.decode(errors="replace"))
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()


@pytest.fixture
def docker_lab(tmp_path: Path) -> Iterator[tuple[Dockerd, DaemonProcess, str]]:
    root = Path(tempfile.mkdtemp(prefix="pmvt-docker-"))  # short: containerd's socket paths
    name = unique_prefix().rstrip("-")
    try:
        with (
            lab_with_lower(SUBNET, LOWER_MAC) as lab,
            running_daemon(lab, tmp_path) as daemon,
            driver_process(name, daemon.socket, tmp_path / "docker.json"),
        ):
            dockerd = Dockerd(lab.host, root)
            try:
                dockerd.start()
                tar = root / "rootfs.tar"
                busybox_rootfs(tar)
                dockerd.docker("import", str(tar), IMAGE)
                yield dockerd, daemon, name
            finally:
                for container in dockerd.docker("ps", "-aq", check=False).stdout.split():
                    dockerd.docker("rm", "-f", container, check=False)
                dockerd.stop()
                print(dockerd.log()[-4000:])
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_docker_takes_the_driver_answers(
    docker_lab: tuple[Dockerd, DaemonProcess, str], tmp_path: Path
) -> None:
    """What works today: Docker accepts every answer and sets the container up with the
    netdev the daemon made (address, default route from the driver's Join), and removal
    leaves nothing behind in the daemon or the driver's state."""
    dockerd, daemon, driver = docker_lab
    dockerd.docker(
        "network", "create", "-d", driver, "-o", "parent=low0", "-o", "mode=bridge",
        "--subnet", f"{SUBNET}.0/24", "--gateway", f"{SUBNET}.1", "pmvnet",
    )  # fmt: skip
    dockerd.docker(
        "run", "-d", "--name", "c1", "--network", "pmvnet", "--ip", f"{SUBNET}.11",
        IMAGE, "sleep", "600",
    )  # fmt: skip
    addresses = dockerd.docker("exec", "c1", "ip", "-o", "-4", "addr", "show", "eth0").stdout
    assert f"{SUBNET}.11/24" in addresses
    routes = dockerd.docker("exec", "c1", "ip", "route").stdout
    assert f"default via {SUBNET}.1 dev eth0" in routes
    # The MAC the daemon chose is the container's, not one Docker made up.
    (endpoint,) = json.loads((tmp_path / "docker.json").read_text())["endpoints"].values()
    link = dockerd.docker("exec", "c1", "cat", "/sys/class/net/eth0/address").stdout
    assert link.strip() == endpoint["address"]
    dockerd.docker("rm", "-f", "c1")
    dockerd.docker("network", "rm", "pmvnet")
    assert daemon.show() == []
    state = json.loads((tmp_path / "docker.json").read_text())
    assert state == {"networks": {}, "endpoints": {}}


def guide_lines(section: str, driver: str, doc: str = "docs/containers.md") -> list[list[str]]:
    """The ``docker`` commands of a section of docs/containers.md, as argument lists for
    the test's dockerd: its driver name, the lab's lower and the imported image."""
    commands = []
    for block in code_blocks(section, "sh", doc=doc):
        for line in block.replace("\\\n", " ").splitlines():
            for command in line.split("#")[0].split("&&"):
                words = shlex.split(command)
                if words[:1] != ["docker"]:
                    continue
                replaced = {"pymacvtap": driver, "parent=eth0": "parent=low0", "busybox": IMAGE}
                commands.append([replaced.get(w, w) for w in words[1:]])
    return commands


def test_containers_on_a_pymacvtap_network(
    docker_lab: tuple[Dockerd, DaemonProcess, str],
) -> None:
    """The guide's example (docs/containers.md, Docker), with both daemons restarted
    before the containers are removed."""
    dockerd, daemon, driver = docker_lab
    create, run1, run2, ping, rm, network_rm = guide_lines("Docker", driver)
    # The README's example is the guide's beginning: running one runs the other.
    readme = guide_lines("Docker", driver, doc="README.md")
    assert readme == [create, run1]
    assert create[:2] == ["network", "create"] and "macvlan_mode=vepa" in create
    for command in (create, run1, run2):
        dockerd.docker(*command)
    shown = daemon.show()
    assert len(shown) == 2, shown
    assert {e["mode"] for e in shown} == {"vepa"}
    # The other container through the switch's hairpin, and the outside host.
    dockerd.docker(*ping)
    dockerd.docker("exec", "c1", "ping", "-c", "1", "-W", "3", f"{SUBNET}.100")
    # Either side restarted (dockerd with --live-restore keeps the containers running):
    # the daemon finds the netdevs inside the containers again, where they were moved.
    dockerd.stop()
    dockerd.start()
    daemon.stop()
    daemon.start()
    assert len(daemon.show()) == 2
    dockerd.docker("exec", "c2", "ping", "-c", "1", "-W", "3", f"{SUBNET}.11")
    dockerd.docker("exec", "c2", "ping", "-c", "1", "-W", "3", f"{SUBNET}.100")
    dockerd.docker(*rm)
    dockerd.docker(*network_rm)
    assert daemon.show() == []
    # Docker moves the netdevs back out of the containers before DeleteEndpoint: the
    # daemon must delete them then, where they are by then.
    assert not re.search(r": pmv[0-9a-f]{12}[:@]", ip(daemon.netns, "-o", "link", "show"))


def test_dhcp_network_gets_leases_from_the_lan(
    docker_lab: tuple[Dockerd, DaemonProcess, str], tmp_path: Path
) -> None:
    """``-o dhcp=on --ipam-driver null``: the daemon leases each container's address from
    dnsmasq on the outside host, puts it on eth0 inside the container, and releases it
    when the container goes."""
    dockerd, daemon, driver = docker_lab
    outside = daemon.netns.removesuffix("host") + "ext"
    with dnsmasq(
        outside, "eth0", tmp_path, f"{SUBNET}.50", f"{SUBNET}.60", f"{SUBNET}.100"
    ) as server:
        create, run = guide_lines("DHCP", driver)
        assert "--ipam-driver" in create and "dhcp=on" in create
        dockerd.docker(*create)
        addresses = {}
        dockerd.docker(*run)
        dockerd.docker(*[word.replace("d1", "d2") for word in run])
        for name in ("d1", "d2"):
            assert wait_until(
                lambda name=name: (
                    "inet "
                    in dockerd.docker("exec", name, "ip", "-o", "-4", "addr", "show", "eth0").stdout
                ),
                timeout=15,
            ), daemon.log()
            out = dockerd.docker("exec", name, "ip", "-o", "-4", "addr", "show", "eth0").stdout
            addresses[name] = out.split("inet ")[1].split("/")[0]
        assert addresses["d1"] != addresses["d2"]
        assert {lease.address for lease in server.leases()} == set(addresses.values())
        assert f"default via {SUBNET}.100" in dockerd.docker("exec", "d1", "ip", "route").stdout
        dockerd.docker("exec", "d1", "ping", "-c", "1", "-W", "3", addresses["d2"])
        dockerd.docker("exec", "d2", "ping", "-c", "1", "-W", "3", f"{SUBNET}.100")
        dockerd.docker("rm", "-f", "d1", "d2")
        dockerd.docker("network", "rm", "pmvdhcp")
        assert daemon.show() == []
        assert wait_until(lambda: server.leases() == [], timeout=5), server.log()
