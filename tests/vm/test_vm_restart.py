"""SPEC 5 with real VMs: the daemon is SIGKILLed under running VMs and started again.

The lab of test_vm_endpoints.py (switch ``sw`` with a hairpin port, ``host`` with the lower and
the daemon, ``ext`` with an address), and one VM per kind of frontend, each pinging ``ext``:

==========  ========================================================  ==========================
path        QEMU netdev                                               across the restart
==========  ========================================================  ==========================
exec        ``pymacvtap exec NAME queues 2 -- qemu … tap,fds=3:4``    QEMU keeps its queue fds
                                                                      on the persistent tap; the
                                                                      daemon reattaches to its
                                                                      netdev side
vhost-user  ``vhost-user,chardev=c0,queues=2``, ``reconnect=1`` on    QEMU reconnects and sets
            the chardev                                               the session up again; the
                                                                      guest's link comes back
dgram       ``dgram,local…,remote.path=SOCK`` (endpoint ``peer``)     the daemon binds SOCK again
                                                                      and can send first
stream      ``stream,server=off,addr.path=SOCK``                      QEMU 7.2 does not
                                                                      reconnect: a new netdev and
                                                                      a NIC on it are hot-plugged
                                                                      through QMP
==========  ========================================================  ==========================

While the daemon is dead nothing gets through (the data path is in the daemon); the VMs are not
touched (same QEMU processes, no command but the pings) except the stream VM's repair.
"""

from __future__ import annotations

import contextlib
import json
import pwd
import socket
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lab import Lab, ip
from lab.daemon import SYSTEM_PYTHON, DaemonProcess, public_package_copy
from lab.vm.image import VmImage
from lab.vm.qemu import Nic, Vm, boot_vm, new_mac, open_dir, temporary_user

SUBNET = "10.97.0"
EXT_IP = f"{SUBNET}.100"
LOWER_MAC = bytes.fromhex("020000000d01")
PATHS = ("exec", "vhost-user", "dgram", "stream")
ENDPOINT = {"exec": "rsexec", "vhost-user": "rsvhost", "dgram": "rsdgram", "stream": "rsstream"}
ADDRESS = {path: f"{SUBNET}.{31 + i}" for i, path in enumerate(PATHS)}
QUEUES = {"exec": 2, "vhost-user": 2}  # two queue pairs (and two guest CPUs) on these
T = TypeVar("T")


@dataclass
class Site:
    lab: Lab
    daemon: DaemonProcess
    owner: pwd.struct_passwd  # owns the endpoints, runs QEMU
    public: Path  # world-readable: the endpoints' sockets
    vmside: Path  # owned by `owner`: the dgram VM's socket, the stream VM's QMP socket
    macs: dict[str, str] = field(default_factory=dict)

    def sock(self, path: str) -> str:
        return str(self.public / f"{ENDPOINT[path]}.sock")

    @property
    def dgram_vm_sock(self) -> str:
        return str(self.vmside / "dgram.vm.sock")

    @property
    def qmp_sock(self) -> str:
        return str(self.vmside / "stream.qmp.sock")

    def stats(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = self.daemon.show(ENDPOINT[path], stats=True)
        return entry

    def tx(self, path: str) -> int:
        """Frames the daemon received from the VM of `path` (since the daemon started)."""
        return int(self.stats(path)["stats64"]["tx"]["packets"])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with contextlib.ExitStack() as stack:
        owner = stack.enter_context(temporary_user("pmvtrst"))
        public = open_dir(stack, "pmvt-rspublic-")
        vmside = open_dir(stack, "pmvt-rsvmside-", owner)
        lab = stack.enter_context(Lab(ext_ip=f"{EXT_IP}/24"))
        lab.add_lower("low0", LOWER_MAC, hairpin=True)
        daemon = DaemonProcess(lab.host, tmp_path_factory.mktemp("vm-restart-daemon"))
        daemon.start()

        def stop_daemon() -> None:
            daemon.cleanup()  # also after a failed restart: stop() ignores a dead daemon
            print(daemon.log())  # shown by pytest only when a test failed

        stack.callback(stop_daemon)
        site = Site(lab, daemon, owner, public, vmside)
        for path in PATHS:
            add_endpoint(site, path)
        yield site


def add_endpoint(site: Site, path: str) -> None:
    mac = new_mac()
    frontend = "tap" if path == "exec" else path
    args = ["link", "add", "link", "low0", "name", ENDPOINT[path], "type", "macvtap"]
    args += ["mode", "vepa", "frontend", frontend, "address", mac]
    if frontend != "tap":
        args += ["path", site.sock(path)]
    if frontend == "dgram":
        args += ["peer", site.dgram_vm_sock]
    args += ["owner", str(site.owner.pw_uid), "group", str(site.owner.pw_gid)]
    args += ["queues", str(QUEUES.get(path, 1))]
    site.daemon.cli(*args)
    site.macs[path] = mac


def stream_netdev(site: Site) -> str:
    return f"stream,server=off,addr.type=unix,addr.path={site.sock('stream')}"


def start_vm(site: Site, image: VmImage, path: str) -> Vm:
    name, mac, ipaddr = ENDPOINT[path], site.macs[path], f"{ADDRESS[path]}/24"
    kw: dict[str, Any] = {"user": site.owner.pw_name, "stay": True, "name": name}
    if path == "exec":
        nic = Nic("tap,fds=3:4", ip=ipaddr, mac=mac, device_opts="mq=on,vectors=6")
        kw["env"] = {"PYTHONPATH": str(public_package_copy())}
        kw["argv_prefix"] = [
            SYSTEM_PYTHON, "-m", "pymacvtap", "--socket", str(site.daemon.socket),
            "exec", name, "queues", "2", "--",
        ]  # fmt: skip
    elif path == "vhost-user":
        # vectors=0: QEMU 7.2 under TCG crashes starting vhost-user with MSI-X (see
        # test_vm_endpoints.py). reconnect=1: QEMU connects again, every second, when the
        # daemon's socket goes away (as docs/vms.md says).
        nic = Nic(
            "vhost-user,chardev=c0,queues=2", ip=ipaddr, mac=mac, device_opts="mq=on,vectors=0"
        )
        kw["shared_memory"] = True
        kw["extra_args"] = ["-chardev", f"socket,id=c0,path={site.sock(path)},reconnect=1"]
    elif path == "dgram":
        nic = Nic(
            f"dgram,local.type=unix,local.path={site.dgram_vm_sock},remote.type=unix,"
            f"remote.path={site.sock(path)}",
            ip=ipaddr,
            mac=mac,
        )
    else:
        nic = Nic(stream_netdev(site), ip=ipaddr, mac=mac)
        kw["extra_args"] = ["-qmp", f"unix:{site.qmp_sock},server=on,wait=off"]
    if path in QUEUES:
        kw["smp"] = 2  # the guest uses as many queue pairs as it has CPUs
    return boot_vm(image, nic, **kw)


@pytest.fixture(scope="module")
def fleet(site: Site, image: VmImage) -> Iterator[dict[str, Vm]]:
    with contextlib.ExitStack() as stack:
        vms = {path: stack.enter_context(start_vm(site, image, path)) for path in PATHS}
        for vm in vms.values():
            vm.wait_for_marker("PMVT-READY", timeout=120)
        yield vms


# --------------------------------------------------------------------------------- helpers


def each(vms: dict[str, Vm], work: Callable[[str, Vm], T]) -> dict[str, T]:
    """`work(path, vm)` for every VM at once (each waits on its own serial console)."""
    with ThreadPoolExecutor(len(vms)) as pool:
        futures = {path: pool.submit(work, path, vm) for path, vm in vms.items()}
        return {path: f.result() for path, f in futures.items()}


def pings(vm: Vm, target: str = EXT_IP, count: int = 3, wait: int = 20) -> tuple[int, str]:
    """pmvt_ping in the guest: wait up to `wait` s for a first reply, then `count` must pass."""
    return vm.run(f"pmvt_ping {target} {count} {wait}", timeout=wait + 30)


def pings_from_both_cpus(vm: Vm, target: str = EXT_IP, count: int = 5) -> tuple[int, str]:
    """Pings pinned to CPU 0 and CPU 1 at once: the guest sends on queue 0 and queue 1 (XPS).
    The first waits (pmvt_wait_reply) until the target answers at all."""
    rc, out = vm.run(
        f"pmvt_wait_reply {target} 20 && {{ taskset 1 ping -q -c {count} -i 0.1 -W 2 {target} "
        f"> /tmp/p0 & taskset 2 ping -q -c {count} -i 0.1 -W 2 {target} > /tmp/p1; wait; }}; "
        "cat /tmp/p0 /tmp/p1",
        timeout=60,
    )
    ok = rc == 0 and out.count(f"{count} packets received") == 2
    return (0 if ok else 1), out


def tx_per_queue(entry: dict[str, Any]) -> list[int]:
    """Frames the guest sent, per queue (pair), from ``link show -s``'s ``queue_stats``."""
    stats = entry["queue_stats"]
    if entry["frontend"] == "vhost-user":
        return [q["frames"] for q in stats if q["direction"] == "tx"]
    return [q["tx_packets"] for q in stats]


def carrier(vm: Vm) -> int:
    rc, out = vm.run("cat /sys/class/net/eth0/carrier")
    assert rc == 0, out
    return int(out)


def no_reply(vm: Vm, target: str = EXT_IP, seconds: int = 3) -> tuple[int, str]:
    return vm.run(f"pmvt_no_reply {target} {seconds}", timeout=seconds + 30)


def ping_from_ext(site: Site, target: str, count: int = 3) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", site.lab.ext, "ping", "-c", str(count), "-i", "0.2", "-W", "2",
         target],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip


class Qmp:
    """A minimal QMP client on the VM's ``-qmp unix:PATH,server=on,wait=off`` socket."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.file = self.sock.makefile("rwb")
        json.loads(self.file.readline())  # the greeting
        self.execute("qmp_capabilities")

    def execute(self, command: str, **arguments: Any) -> Any:
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self.file.write(json.dumps(msg).encode() + b"\n")
        self.file.flush()
        while True:
            reply = json.loads(self.file.readline())
            if "return" in reply:
                return reply["return"]
            if "error" in reply:
                raise AssertionError(f"QMP {command} {arguments}: {reply['error']}")
            # an event: skip

    def close(self) -> None:
        self.file.close()
        self.sock.close()


# --------------------------------------------------------------------------------- the test

ENDPOINT_PATH = {name: path for path, name in ENDPOINT.items()}


def test_vms_across_a_daemon_sigkill_and_restart(site: Site, fleet: dict[str, Vm]) -> None:
    daemon = site.daemon
    pids = {path: vm.proc.pid for path, vm in fleet.items()}

    # Before: every VM reaches the outside host.
    before = each(fleet, lambda path, vm: pings(vm))
    assert all(rc == 0 for rc, _ in before.values()), before

    # SIGKILL: nothing is cleaned up, and nothing gets through the daemon; on the fast
    # path the programs go on forwarding the tap's unicast with the last tables (SPEC 7).
    datapath = {ENDPOINT_PATH[e["ifname"]]: e["datapath"] for e in daemon.show()}
    daemon.kill()
    dead = each(fleet, lambda path, vm: pings(vm) if datapath[path] == "ebpf" else no_reply(vm))
    assert all(rc == 0 for rc, _ in dead.values()), dead
    # vhost-user: QEMU saw its back-end go and took the guest's link down; the others' links
    # stay up (a tap, a socket), the frames just go nowhere.
    links = each(fleet, lambda path, vm: carrier(vm))
    assert links == {"exec": 1, "vhost-user": 0, "dgram": 1, "stream": 1}, links
    # The tap outlived the daemon, with its address and the VM's queues (QEMU holds the fds).
    tap = json.loads(ip(site.lab.host, "-j", "link", "show", "dev", ENDPOINT["exec"]))[0]
    assert tap["address"] == site.macs["exec"], tap

    # Restart: the endpoints come back from the state dir; the VMs are the same processes.
    daemon.start()
    assert {e["ifname"] for e in daemon.show()} == set(ENDPOINT.values())
    for path, vm in fleet.items():
        assert vm.proc.poll() is None and vm.proc.pid == pids[path], path

    # dgram: the daemon bound its socket again and, having `peer`, sends first: ext pings the
    # VM before the VM has sent anything to the new daemon.
    assert site.tx("dgram") == 0
    from_ext = ping_from_ext(site, ADDRESS["dgram"])
    assert from_ext.returncode == 0, from_ext.stdout + from_ext.stderr + fleet["dgram"].output

    # vhost-user: QEMU reconnects (reconnect=1), negotiates the session again and puts the
    # guest's link back up.
    rc, out = fleet["vhost-user"].run(
        "i=0; while [ $(cat /sys/class/net/eth0/carrier) != 1 ] && [ $i -lt 100 ]; do "
        "sleep 0.2; i=$((i+1)); done; cat /sys/class/net/eth0/carrier"
    )
    assert (rc, out) == (0, "1"), f"{out}\n{fleet['vhost-user'].output}"
    new_session = (
        f"pymacvtap[{daemon.pid}]: vhost-user {site.sock('vhost-user')}: front-end connected"
    )
    assert new_session in daemon.log(), daemon.log()

    # tap, vhost-user, dgram: the guests reach the outside again, untouched — on both queues
    # where there are two.
    resumed = each(
        {p: fleet[p] for p in ("exec", "vhost-user", "dgram")},
        lambda path, vm: pings_from_both_cpus(vm) if path in QUEUES else pings(vm),
    )
    assert all(rc == 0 for rc, _ in resumed.values()), resumed
    for path in ("exec", "vhost-user", "dgram"):
        entry = site.stats(path)
        s = entry["stats64"]
        assert s["tx"]["packets"] >= 3 and s["rx"]["packets"] >= 3, entry
        assert s["tx"]["errors"] == s["rx"]["errors"] == 0, entry
        if path in QUEUES and entry["datapath"] == "python":
            # (On the fast path the daemon reads, and counts per queue, only what the
            # programs leave it.)
            per_queue = tx_per_queue(entry)
            assert len(per_queue) == 2 and all(n > 0 for n in per_queue), entry["queue_stats"]

    # stream on QEMU 7.2: the netdev saw the connection close and does not connect again.
    vm = fleet["stream"]
    rc, out = no_reply(vm)
    assert rc == 0, out
    assert site.tx("stream") == 0
    # The repair, through QMP: the dead netdev deleted, a new one added (QEMU connects to the
    # restarted daemon), and a NIC hot-plugged on it — QEMU cannot point the old NIC at a new
    # netdev, not even one with the old id. The guest moves its address to the new NIC (eth1).
    qmp = Qmp(site.qmp_sock)
    try:
        qmp.execute("netdev_del", id="n0")
        qmp.execute(
            "netdev_add",
            type="stream",
            id="n1",
            server=False,
            addr={"type": "unix", "path": site.sock("stream")},
        )
        # A netdev alone does not do: the old NIC stays bound to the deleted one.
        rc, out = no_reply(vm, seconds=2)
        assert rc == 0, out
        qmp.execute(
            "device_add",
            driver="virtio-net-pci",
            id="nic1",
            netdev="n1",
            mac=site.macs["stream"],
            romfile="",
        )
    finally:
        qmp.close()
    rc, out = vm.run(
        "i=0; while [ ! -e /sys/class/net/eth1 ] && [ $i -lt 100 ]; do sleep 0.2; i=$((i+1)); "
        "done; ip addr flush dev eth0 && ip link set eth0 down && ip link set eth1 up && "
        f"ip addr add {ADDRESS['stream']}/24 dev eth1"
    )
    assert rc == 0, f"{out}\n{vm.output}"
    rc, out = pings(vm)
    assert rc == 0, f"{out}\n{vm.output}"
    assert site.tx("stream") >= 3

    assert "Traceback" not in daemon.log(), daemon.log()
