"""Real VMs on pymacvtap's macvtap endpoints, one per attach path, through a VEPA hairpin switch.

The lab of SPEC 8 (switch ``sw`` with a hairpin port, ``host`` with the lower and the daemon,
``ext`` with an address) plus one container endpoint ``c1`` on the same lower. Each VM is a
tiny TCG guest (tests/vm) on one attach path of SPEC 3:

==========  ================================================================  =======
path        QEMU netdev                                                       queues
==========  ================================================================  =======
helper      ``tap,br=NAME,helper=pymacvtap-qemu-helper``                      1
exec        ``pymacvtap exec NAME queues 2 -- qemu … tap,fds=3:4``             2
ifname      ``tap,ifname=NAME,script=no,downscript=no`` (opens /dev/net/tun)   1
stream      ``stream,server=off,addr.type=unix,addr.path=SOCK``                1
dgram       ``dgram,local.type=unix,…,remote.type=unix,remote.path=SOCK``      1
vhost-user  ``vhost-user,chardev=c0,queues=2`` (shared guest memory)           2
==========  ================================================================  =======

Every VM pings the outside host and the container; the stream VM also pings the dgram VM;
every VM sends the container 3 MiB over TCP, which must arrive whole with nothing refused.
All of it crosses the lower twice (VEPA: endpoint → switch → hairpin → endpoint), and the
daemon's per-endpoint counters must equal the guest's own NIC counters. QEMU runs as an
unprivileged user the test creates (for ``ifname=`` too, with /dev/net/tun opened to it for
that test only); a second unprivileged user is refused on every frontend.

The QEMU command lines and the libvirt XML of docs/vms.md are checked against what these
tests run (``test_docs_*``).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lab import Lab, ip
from lab.daemon import SYSTEM_PYTHON, DaemonProcess, as_user_argv, public_package_copy
from lab.readme import code_blocks, readme_section
from lab.transfer import DigestReceiver
from lab.vm.image import VmImage
from lab.vm.qemu import Nic, Vm, boot_vm, new_mac, open_dir, temporary_user

SUBNET = "10.96.0"
EXT_IP = f"{SUBNET}.100"
CONTAINER_IP = f"{SUBNET}.11"
LOWER_MAC = bytes.fromhex("020000000c01")
TUN = Path("/dev/net/tun")
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000

# The attach paths, in the order of docs/vms.md. `fleet` boots all but `ifname` together.
FLEET = ("helper", "exec", "stream", "dgram", "vhost-user")
QUEUES = {"exec": 2, "vhost-user": 2}
ENDPOINT = {
    "helper": "vmhelper",
    "exec": "vmexec",
    "ifname": "vmifname",
    "stream": "vmstream",
    "dgram": "vmdgram",
    "vhost-user": "vmvhost",
}
ADDRESS = {path: f"{SUBNET}.{21 + i}" for i, path in enumerate(ENDPOINT)}
# One pair of VMs talks to each other (through the switch, like everything else).
VM_PEERS = {"stream": ["dgram"]}


# --------------------------------------------------------------------------------- the lab


@dataclass
class Site:
    """The module's lab, daemon, users and shared files."""

    lab: Lab
    daemon: DaemonProcess
    owner: pwd.struct_passwd  # owns the VM endpoints and runs QEMU
    other: pwd.struct_passwd  # another unprivileged user: refused everywhere
    public: Path  # world-readable: the helper wrapper, the endpoints' sockets
    vmside: Path  # owned by `owner`: the dgram VM's own socket
    container_ns: str
    macs: dict[str, str] = field(default_factory=dict)

    @property
    def helper(self) -> Path:
        return self.public / "pymacvtap-qemu-helper"

    @property
    def dgram_vm_sock(self) -> str:
        return str(self.vmside / f"{ENDPOINT['dgram']}.vm.sock")

    def sock(self, path: str) -> str:
        return str(self.public / f"{ENDPOINT[path]}.sock")

    def add_endpoint(self, path: str) -> str:
        """``pymacvtap link add … type macvtap`` for this attach path; returns the MAC."""
        name = ENDPOINT[path]
        mac = new_mac()
        args = ["link", "add", "link", "low0", "name", name, "type", "macvtap", "mode", "vepa"]
        frontend = path if path in ("stream", "dgram", "vhost-user") else "tap"
        args += ["frontend", frontend, "address", mac]
        if frontend != "tap":
            args += ["path", self.sock(path)]
        if frontend == "dgram":
            # Where the VM's own socket is: frames can reach it before it has sent anything.
            args += ["peer", self.dgram_vm_sock]
        args += ["owner", str(self.owner.pw_uid), "group", str(self.owner.pw_gid)]
        args += ["queues", str(QUEUES.get(path, 1))]
        self.daemon.cli(*args)
        self.macs[path] = mac
        return mac

    def stats(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = self.daemon.show(ENDPOINT[path], stats=True)
        return entry

    def as_other(
        self, argv: list[str], *, netns: str | None = None, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` as the second user (in `netns`), with the public copy of the package
        importable and ``PYMACVTAP_SOCKET`` naming the daemon."""
        env = dict(os.environ, PYTHONPATH=str(public_package_copy()))
        env["PYMACVTAP_SOCKET"] = str(self.daemon.socket)
        argv = as_user_argv(self.other.pw_uid, self.other.pw_gid, argv)
        if netns is not None:
            argv = ["ip", "netns", "exec", netns, *argv]
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
            env=env,
            cwd="/",
            **kw,
        )


def helper_wrapper(public_copy: Path) -> str:
    """The helper QEMU runs: any user can execute it; the checkout need not be readable."""
    return (
        f'#!/bin/sh\nPYTHONPATH={public_copy} exec {SYSTEM_PYTHON} -m pymacvtap.qemu_helper "$@"\n'
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with contextlib.ExitStack() as stack:
        owner = stack.enter_context(temporary_user("pmvtown"))
        other = stack.enter_context(temporary_user("pmvtoth"))
        public = open_dir(stack, "pmvt-vmpublic-")
        vmside = open_dir(stack, "pmvt-vmside-", owner)
        helper = public / "pymacvtap-qemu-helper"
        helper.write_text(helper_wrapper(public_package_copy()))
        helper.chmod(0o755)

        lab = stack.enter_context(Lab(ext_ip=f"{EXT_IP}/24"))
        lab.add_lower("low0", LOWER_MAC, hairpin=True)
        daemon = DaemonProcess(lab.host, tmp_path_factory.mktemp("vm-daemon"))
        daemon.start()

        def stop_daemon() -> None:
            daemon.cleanup()
            print(daemon.log())  # shown by pytest only when a test failed

        stack.callback(stop_daemon)

        container_ns = lab.add_netns("c1")
        daemon.cli(
            "link", "add", "link", "low0", "name", "c1", "type", "macvlan", "mode", "vepa",
            "netns", container_ns, "ifname", "eth0",
        )  # fmt: skip
        ip(container_ns, "addr", "add", f"{CONTAINER_IP}/24", "dev", "eth0")
        ip(container_ns, "link", "set", "eth0", "up")
        yield Site(lab, daemon, owner, other, public, vmside, container_ns)


# --------------------------------------------------------------------------------- the VMs


def netdev(site: Site, path: str) -> Nic:
    """The NIC of a VM on `path` (QEMU's -netdev/-device, as in docs/vms.md)."""
    name, mac, ipaddr = ENDPOINT[path], site.macs.get(path), f"{ADDRESS[path]}/24"
    mq = "mq=on,vectors=6"
    if path == "helper":
        return Nic(f"tap,br={name},helper={site.helper}", ip=ipaddr, mac=mac)
    if path == "exec":
        return Nic("tap,fds=3:4", ip=ipaddr, mac=mac, device_opts=mq)
    if path == "ifname":
        return Nic(f"tap,ifname={name},script=no,downscript=no", ip=ipaddr, mac=mac)
    if path == "stream":
        return Nic(
            f"stream,server=off,addr.type=unix,addr.path={site.sock(path)}", ip=ipaddr, mac=mac
        )
    if path == "dgram":
        return Nic(
            f"dgram,local.type=unix,local.path={site.dgram_vm_sock},remote.type=unix,"
            f"remote.path={site.sock(path)}",
            ip=ipaddr,
            mac=mac,
        )
    assert path == "vhost-user"
    # vectors=0 (no MSI-X): QEMU 7.2 under TCG segfaults starting a vhost-user NIC with MSI-X
    # (vhost_net_start -> msix_set_vector_notifiers), before any message reaches the back-end's
    # data path. With KVM, or QEMU >= 8, the default vectors work.
    return Nic("vhost-user,chardev=c0,queues=2", ip=ipaddr, mac=mac, device_opts="mq=on,vectors=0")


def start_vm(site: Site, image: VmImage, path: str) -> Vm:
    """Create the endpoint, then boot its VM as the owner (returns at once)."""
    site.add_endpoint(path)
    nic = netdev(site, path)
    kw: dict[str, Any] = {"user": site.owner.pw_name, "stay": True, "name": ENDPOINT[path]}
    if path == "helper":
        # QEMU passes its environment to the helper: this names the daemon's socket.
        kw["env"] = {"PYMACVTAP_SOCKET": str(site.daemon.socket)}
    elif path == "exec":
        kw["env"] = {"PYTHONPATH": str(public_package_copy())}
        kw["argv_prefix"] = [
            SYSTEM_PYTHON, "-m", "pymacvtap", "--socket", str(site.daemon.socket),
            "exec", ENDPOINT[path], "queues", "2", "--",
        ]  # fmt: skip
    elif path == "ifname":
        kw["netns"] = site.lab.host  # where the tap lives
    elif path == "vhost-user":
        kw["shared_memory"] = True
        kw["extra_args"] = ["-chardev", f"socket,id=c0,path={site.sock(path)}"]
    if QUEUES.get(path, 1) > 1:
        kw["smp"] = 2  # the guest uses as many queue pairs as it has CPUs
    return boot_vm(image, nic, **kw)


@pytest.fixture(scope="module")
def fleet(site: Site, image: VmImage) -> Iterator[dict[str, Vm]]:
    """The VMs of every path but ``ifname``, booted together and ready for commands."""
    with contextlib.ExitStack() as stack:
        vms = {path: stack.enter_context(start_vm(site, image, path)) for path in FLEET}
        for vm in vms.values():
            vm.wait_for_marker("PMVT-READY", timeout=120)
        yield vms


# --------------------------------------------------------------------------------- checks


def guest_counters(vm: Vm) -> tuple[int, int]:
    """(tx_packets, rx_packets) of the guest's eth0, read through the serial console."""
    base = "/sys/class/net/eth0/statistics"
    rc, out = vm.run(f"cat {base}/tx_packets {base}/rx_packets")
    assert rc == 0, out
    tx, rx = (int(v) for v in out.split())
    return tx, rx


@dataclass(frozen=True)
class Snapshot:
    guest: tuple[int, int]  # tx, rx as the guest counts them
    daemon: tuple[int, int]  # tx (from the VM), rx (delivered to it) as the daemon counts them
    entry: dict[str, Any]

    @property
    def offset(self) -> tuple[int, int]:
        return self.daemon[0] - self.guest[0], self.daemon[1] - self.guest[1]


def snapshot(
    site: Site, vm: Vm, path: str, offset: tuple[int, int] | None = None, timeout: float = 20.0
) -> Snapshot:
    """Counters of both sides at a quiet moment: the daemon's did not move while the guest's
    were read, so no frame was in flight between them. With `offset`, wait until the daemon's
    exceed the guest's by exactly that much (a stray ARP probe may be on its way for a moment;
    a frame lost or miscounted never catches up, and then this fails)."""
    deadline = time.monotonic() + timeout
    while True:
        before = site.stats(path)
        guest = guest_counters(vm)
        after = site.stats(path)
        d = (after["stats64"]["tx"]["packets"], after["stats64"]["rx"]["packets"])
        snap = Snapshot(guest, d, after)
        quiet = before["stats64"] == after["stats64"]
        if quiet and (offset is None or snap.offset == offset):
            return snap
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{path}: guest (tx, rx) = {guest}, daemon (tx, rx) = {d}, wanted the daemon "
                f"ahead by {offset} (daemon quiet during the read: {quiet}); {json.dumps(after)}"
            )
        time.sleep(0.3)


def ping(vm: Vm, target: str, count: int = 3) -> None:
    rc, out = vm.run(f"pmvt_ping {target} {count} 20", timeout=60)
    assert rc == 0, f"{vm.name}: ping {target}: {out}\n{vm.output}"


def pings_from_both_cpus(vm: Vm, target: str, count: int = 8) -> None:
    """Pings pinned to CPU 0 and CPU 1 at once: the guest sends on queue 0 and queue 1 (XPS)."""
    rc, out = vm.run(
        f"taskset 1 ping -q -c {count} -i 0.1 -W 2 {target} > /tmp/p0 & "
        f"taskset 2 ping -q -c {count} -i 0.1 -W 2 {target} > /tmp/p1; wait; cat /tmp/p0 /tmp/p1",
        timeout=60,
    )
    assert rc == 0 and out.count(f"{count} packets received") == 2, f"{vm.name}: {out}"


def switch_port_rx(site: Site) -> int:
    """Frames the switch received from the lower (what the daemon put on the wire)."""
    return site.lab.link_stats(site.lab.sw)["sw-low0"]["rx"]["packets"]


def qemu_uid(vm: Vm) -> int:
    out = subprocess.run(
        ["ps", "-o", "uid=", "-p", str(vm.proc.pid)], capture_output=True, text=True, check=True
    ).stdout
    return int(out)


def exercise(site: Site, vm: Vm, path: str, peers: dict[str, Vm]) -> None:
    """The pings of one VM, with the counters of both sides compared around them."""
    assert qemu_uid(vm) == site.owner.pw_uid, "QEMU must run as the unprivileged owner"
    wire = switch_port_rx(site)
    start = snapshot(site, vm, path)
    # Everything the guest ever sent reached the daemon: the endpoint existed before the VM
    # booted, and a guest sends nothing before its driver is up. Frames delivered to the
    # endpoint before then may be lost on the way (a tap with no queue attached drops them, a
    # stream socket with no VM connected too); there are none in this lab, but only the frames
    # received from here on must match one for one.
    assert start.offset[0] == 0, (path, start)
    ping(vm, EXT_IP)
    ping(vm, CONTAINER_IP)
    for peer in VM_PEERS.get(path, ()):
        ping(vm, ADDRESS[peer])
        assert peers[peer].proc.poll() is None
    if QUEUES.get(path, 1) > 1:
        pings_from_both_cpus(vm, EXT_IP)
        pings_from_both_cpus(vm, CONTAINER_IP)
    end = snapshot(site, vm, path, offset=start.offset)
    sent = end.guest[0] - start.guest[0]
    received = end.guest[1] - start.guest[1]
    print(
        f"{path}: guest sent {sent}, received {received}; (tx, rx) guest {start.guest} -> "
        f"{end.guest}, daemon {start.daemon} -> {end.daemon}"
    )
    # VEPA: everything the VM sent left through the lower to the switch (and came back, by the
    # hairpin, for the container and the other VM).
    assert switch_port_rx(site) - wire >= sent
    # Echo requests, replies and ARP, in both directions: all of it counted by both sides.
    assert sent >= 8 and received >= 8, (path, start, end)
    s = end.entry["stats64"]
    assert s["tx"]["errors"] == s["tx"]["dropped"] == 0, s
    assert s["rx"]["errors"] == s["rx"]["dropped"] == 0, s


def tx_per_queue(entry: dict[str, Any]) -> list[int]:
    """Frames the guest sent, per queue (pair), from ``link show -s``'s ``queue_stats``."""
    stats = entry["queue_stats"]
    if entry["frontend"] == "vhost-user":
        return [q["frames"] for q in stats if q["direction"] == "tx"]
    return [q["tx_packets"] for q in stats]


# --------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("path", FLEET)
def test_vm_reaches_the_outside_a_container_and_a_vm(
    site: Site, fleet: dict[str, Vm], path: str
) -> None:
    vm = fleet[path]
    exercise(site, vm, path, fleet)
    entry = site.stats(path)
    assert entry["operstate"] == "UP" and entry["queues"] == QUEUES.get(path, 1)
    print(f"{path}: queue_stats {entry.get('queue_stats')}")
    if QUEUES.get(path, 1) > 1:
        per_queue = tx_per_queue(entry)
        assert len(per_queue) == 2, entry["queue_stats"]
        if entry["datapath"] == "python":
            assert all(n > 0 for n in per_queue), entry["queue_stats"]
            assert sum(per_queue) == entry["stats64"]["tx"]["packets"], entry["queue_stats"]
        else:
            # Per queue is what the daemon read; the programs' unicast has no queue count.
            assert sum(per_queue) <= entry["stats64"]["tx"]["packets"], entry["queue_stats"]


TRANSFER_BYTES = 3 * 1024 * 1024


@pytest.mark.parametrize("path", FLEET)
def test_tcp_from_the_vm_arrives_whole_and_nothing_is_dropped(
    site: Site, fleet: dict[str, Vm], path: str
) -> None:
    """A TCP transfer VM → container: offloaded super-frames from the guest (tap and
    vhost-user carry them whole) must neither be dropped nor corrupted on the way."""
    vm = fleet[path]
    port = 7100 + FLEET.index(path)
    before = site.stats(path)["stats64"]
    # The guest's busybox nc does not close when its input ends: the receiver stops
    # after the bytes sent, and busybox has md5sum for the sender's digest.
    with DigestReceiver(
        site.container_ns, port, algorithm="md5", limit=TRANSFER_BYTES, python=SYSTEM_PYTHON
    ) as receiver:
        _rc, out = vm.run(  # nc's status: the receiver closing first may look like an error
            f"dd if=/dev/urandom of=/tmp/blob bs=64k count={TRANSFER_BYTES // 65536} "
            f"2>/dev/null; md5sum /tmp/blob; timeout 90 nc {CONTAINER_IP} {port} < /tmp/blob",
            timeout=120,
        )
        received, digest = receiver.result()
    sent_digest = out.split()[0]
    assert (received, digest) == (TRANSFER_BYTES, sent_digest), out
    after = site.stats(path)["stats64"]
    assert after["tx"]["packets"] > before["tx"]["packets"]
    # Nothing the VM sent was refused (a super-frame taken for oversize is a tx error).
    assert after["tx"]["errors"] == before["tx"]["errors"], (before, after)
    assert after["tx"]["dropped"] == before["tx"]["dropped"], (before, after)


@contextlib.contextmanager
def tun_open_to_everyone() -> Iterator[None]:
    """/dev/net/tun mode 0666 for the body (it is 0600 here and in CI), then as it was."""
    st = TUN.stat()
    try:
        TUN.chmod(0o666)
        yield
    finally:
        TUN.chmod(stat.S_IMODE(st.st_mode))
        os.chown(TUN, st.st_uid, st.st_gid)


def test_vm_on_tap_by_ifname(site: Site, image: VmImage) -> None:
    """QEMU opens the endpoint's tap itself (-netdev tap,ifname=), as the tap's owner, in the
    daemon's namespace; another user may open /dev/net/tun but not that tap."""
    before = stat.S_IMODE(TUN.stat().st_mode)
    with tun_open_to_everyone(), start_vm(site, image, "ifname") as vm:
        vm.wait_for_marker("PMVT-READY", timeout=120)
        exercise(site, vm, "ifname", {})
        refused = site.as_other(
            [SYSTEM_PYTHON, "-c", TUNSETIFF_PROBE, ENDPOINT["ifname"]], netns=site.lab.host
        )
        assert refused.stdout.strip() == "EPERM", refused.stdout + refused.stderr
    assert stat.S_IMODE(TUN.stat().st_mode) == before


# Run by the second user: try to attach to a tap by name, print the errno name (or "opened").
TUNSETIFF_PROBE = f"""
import errno, fcntl, os, struct, sys
fd = os.open("/dev/net/tun", os.O_RDWR)
try:
    flags = {IFF_TAP | IFF_NO_PI | IFF_VNET_HDR}
    fcntl.ioctl(fd, {TUNSETIFF}, struct.pack("16sH", sys.argv[1].encode(), flags))
    print("opened")
except OSError as e:
    print(errno.errorcode[e.errno])
"""

# Run by the second user: connect to a frontend's socket, print the errno name (or "connected").
CONNECT_PROBE = """
import errno, socket, sys
kind = socket.SOCK_DGRAM if sys.argv[2] == "dgram" else socket.SOCK_STREAM
s = socket.socket(socket.AF_UNIX, kind)
try:
    s.connect(sys.argv[1])
    print("connected")
except OSError as e:
    print(errno.errorcode[e.errno])
"""


def test_a_second_user_is_refused_on_every_frontend(site: Site, fleet: dict[str, Vm]) -> None:
    # Tap: neither QEMU's bridge helper nor `pymacvtap exec` hands the other user a queue.
    for path in ("helper", "exec"):
        left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with left, right:
            proc = site.as_other(
                [
                    str(site.helper),
                    "--use-vnet",
                    f"--fd={right.fileno()}",
                    f"--br={ENDPOINT[path]}",
                ],
                pass_fds=(right.fileno(),),
            )
            assert proc.returncode != 0, proc
            assert "permission denied" in proc.stderr, proc.stderr
            left.setblocking(False)
            with pytest.raises(BlockingIOError):
                socket.recv_fds(left, 16, 4)  # nothing was sent
        cli = [SYSTEM_PYTHON, "-m", "pymacvtap", "exec", ENDPOINT[path], "--", "true"]
        proc = site.as_other(cli)
        assert proc.returncode == 1, proc
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stderr.startswith(f"pymacvtap: exec {ENDPOINT[path]}: permission denied"), (
            proc.stderr
        )
    # Socket frontends: the sockets are 0660 owner:group, the kernel refuses the connect.
    for path in ("stream", "dgram", "vhost-user"):
        sock = site.sock(path)
        st = os.stat(sock)
        assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (
            0o660,
            site.owner.pw_uid,
            site.owner.pw_gid,
        )
        proc = site.as_other([SYSTEM_PYTHON, "-c", CONNECT_PROBE, sock, path])
        assert proc.stdout.strip() == "EACCES", (path, proc.stdout, proc.stderr)
    # And the other user does not even see the endpoints.
    shown = site.as_other([SYSTEM_PYTHON, "-m", "pymacvtap", "-j", "link", "show"])
    assert shown.returncode == 0 and json.loads(shown.stdout) == [], shown
    # An endpoint's owner may use it, but is no admin: no `link add`.
    add = site.daemon.run_cli(
        "link", "add", "link", "low0", "name", "vmx", "type", "macvtap",
        user=(site.owner.pw_uid, site.owner.pw_gid),
    )  # fmt: skip
    assert add.returncode == 1, add
    assert add.stderr.startswith("pymacvtap: link add vmx: permission denied"), add.stderr
    assert "vmx" not in {e["ifname"] for e in site.daemon.show()}
    # None of this disturbed the VMs.
    for vm in fleet.values():
        assert vm.proc.poll() is None


# ------------------------------------------------------------------------------ docs/vms.md

VMS_DOC = "docs/vms.md"


def option_shape(value: str) -> tuple[str, frozenset[str]]:
    """``"tap,id=n0,br=vm0,helper=/x"`` -> ``("tap", {"br", "helper"})``: values and id left out."""
    kind, *opts = value.split(",")
    return kind, frozenset(o.split("=", 1)[0] for o in opts if o.split("=", 1)[0] != "id")


def test_docs_show_the_qemu_command_lines_the_tests_run(site: Site) -> None:
    """Each -netdev the tests use appears in docs/vms.md with the same options (values aside),
    and so do the devices' extra options (multi-queue) and how the exec path starts QEMU."""
    text = readme_section("QEMU command lines", doc=VMS_DOC).replace("\\\n", " ")
    shown = {option_shape(v) for v in re.findall(r"-netdev\s+(\S+)", text)}
    for path in ENDPOINT:
        nic = netdev(site, path)
        assert option_shape(nic.netdev) in shown, f"{path}: -netdev {nic.netdev} not in {VMS_DOC}"
        if nic.device_opts:
            device = f"-device virtio-net-pci,netdev=n0,{nic.device_opts},mac="
            assert device in text, f"{path}: {device} not in {VMS_DOC}"
    assert re.search(r"pymacvtap exec \S+ queues 2 -- qemu-system-x86_64 -smp 2 ", text)
    assert "-chardev socket,id=c0,path=" in text
    memory = r"-object memory-backend-memfd,id=mem,size=\S+,share=on -machine memory-backend=mem"
    assert re.search(memory, text)


def test_docs_libvirt_xml_is_valid() -> None:
    """The libvirt domains of docs/vms.md (tap, vhost-user) pass libvirt's own schema check."""
    validate = shutil.which("virt-xml-validate")
    assert validate, "virt-xml-validate missing: apt-get install libvirt-clients libxml2-utils"
    blocks = code_blocks("libvirt", "xml", doc=VMS_DOC)
    kinds = []
    for block in blocks:
        m = re.search(r"<interface type='(\w+)'>", block)
        assert m, block
        kinds.append(m[1])
        with tempfile.NamedTemporaryFile("w", suffix=".xml") as f:
            f.write(block)
            f.flush()
            proc = subprocess.run(
                [validate, f.name, "domain"], capture_output=True, text=True, check=False
            )
        assert proc.returncode == 0, f"{proc.stdout}{proc.stderr}\n{block}"
    assert sorted(kinds) == ["ethernet", "vhostuser"], kinds
    tap = blocks[kinds.index("ethernet")]
    assert re.search(r"<target dev='\w+' managed='no'/>", tap), tap
    vhost = blocks[kinds.index("vhostuser")]
    assert "<source type='memfd'/>" in vhost and "<access mode='shared'/>" in vhost, vhost
    assert "mode='client'" in vhost and "queues='2'" in vhost, vhost


# --------------------------------------------------------------------------------- the end


def test_the_daemon_outlives_its_vms(site: Site, fleet: dict[str, Vm]) -> None:
    """QEMU killed on every path: the daemon ends those sessions and keeps serving the rest."""
    for vm in fleet.values():
        vm.close()
    time.sleep(1.0)  # the daemon sees the sockets close and the taps lose their queues
    assert site.daemon.proc is not None and site.daemon.proc.poll() is None, site.daemon.log()
    assert "Traceback" not in site.daemon.log(), site.daemon.log()
    names = {e["ifname"] for e in site.daemon.show()}
    assert {ENDPOINT[path] for path in FLEET} <= names, names
    alive = subprocess.run(
        ["ip", "netns", "exec", site.container_ns, "ping", "-c", "2", "-i", "0.2", "-W", "2",
         EXT_IP],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    assert alive.returncode == 0, alive.stdout + alive.stderr
