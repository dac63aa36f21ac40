"""The test-VM infrastructure itself, without pymacvtap: VMs boot, talk, report and go away."""

from __future__ import annotations

import os
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.vm.image import VmImage
from lab.vm.qemu import Nic, VmError, boot_vm, temporary_user


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh network namespace (IPv6 off), deleted afterwards."""
    name = f"pmvt{os.getpid()}x{secrets.token_hex(3)}-vm"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for key in ("all", "default"):
            subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    name,
                    "sysctl",
                    "-qw",
                    f"net.ipv6.conf.{key}.disable_ipv6=1",
                ],
                check=True,
            )
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def _qemu_pids_in(tmpdir: Path) -> list[str]:
    out = subprocess.run(["pgrep", "-f", str(tmpdir)], capture_output=True, text=True).stdout
    return out.split()


def test_two_vms_over_dgram_sockets_as_unprivileged_user(image: VmImage) -> None:
    """Two VMs joined by QEMU dgram netdevs (Unix sockets) ping each other; QEMU runs as a
    throwaway user that cannot read the checkout."""
    with temporary_user() as user, tempfile.TemporaryDirectory(prefix="pmvt-vmsock-") as d:
        os.chown(d, user.pw_uid, user.pw_gid)
        a, b = f"{d}/a.sock", f"{d}/b.sock"

        def dgram(local: str, remote: str) -> str:
            return f"dgram,local.type=unix,local.path={local},remote.type=unix,remote.path={remote}"

        with (
            boot_vm(
                image,
                Nic(dgram(a, b), ip="10.77.0.1/24"),
                ping=["10.77.0.2"],
                stay=True,
                user=user.pw_name,
                name="vma",
            ) as vm_a,
            boot_vm(
                image,
                Nic(dgram(b, a), ip="10.77.0.2/24"),
                ping=["10.77.0.1"],
                stay=True,
                user=user.pw_name,
                name="vmb",
            ) as vm_b,
        ):
            for vm in (vm_a, vm_b):
                vm.wait_for_marker("PMVT-DONE", timeout=90)
            vm_a.check("ping:10.77.0.2")
            vm_b.check("ping:10.77.0.1")
            rc, out = vm_a.run("ip -o -4 addr show dev eth0")
            assert rc == 0 and "10.77.0.1/24" in out, out
            rc, out = vm_b.run("ping -c 2 -W 2 10.77.0.1")
            assert rc == 0 and "2 packets received" in out, out
            rc, _ = vm_b.run("false")
            assert rc == 1
            uid = subprocess.run(
                ["ps", "-o", "uid=", "-p", str(vm_a.proc.pid)], capture_output=True, text=True
            ).stdout.strip()
            assert uid == str(user.pw_uid)
            print(f"boot to PMVT-BOOTED: {vm_a.booted_after:.1f}s, {vm_b.booted_after:.1f}s")


def test_vm_on_tap_in_netns(image: VmImage, netns: str) -> None:
    """A VM on a kernel tap (in a namespace of ours) pings the namespace; the namespace pings
    the VM while it stays up."""

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", netns, *args], check=True)

    ip("tuntap", "add", "dev", "tvm0", "mode", "tap")
    ip("addr", "add", "10.77.1.1/24", "dev", "tvm0")
    ip("link", "set", "tvm0", "up")
    nic = Nic("tap,ifname=tvm0,script=no,downscript=no", ip="10.77.1.2/24")
    with boot_vm(image, nic, ping=["10.77.1.1"], stay=True, netns=netns, name="vmtap") as vm:
        vm.wait_for_marker("PMVT-DONE", timeout=90)
        vm.check("ping:10.77.1.1")
        ping = subprocess.run(
            ["ip", "netns", "exec", netns, "busybox", "ping", "-c", "3", "-W", "2", "10.77.1.2"],
            capture_output=True,
            text=True,
        )
        assert ping.returncode == 0, ping.stdout + ping.stderr + vm.output
        rc, out = vm.run(f"cat /sys/class/net/eth0/address; echo {nic.mac}")
        lines = vm.nics[0].mac
        assert rc == 0 and out.splitlines()[0] == lines, out


def test_script_results_poweroff_and_cleanup(image: VmImage) -> None:
    """A script's results and exit status come back, the guest powers off by itself, and a VM
    that misses its marker is killed with nothing left behind."""
    script = "pmvt_result first ok\npmvt_mark half way\npmvt_result second fail because\nexit 3\n"
    with boot_vm(image, script=script, name="vmscript") as vm:
        results = vm.wait(timeout=90)
        assert vm.proc.returncode == 0
        assert results["first"].ok
        assert results["second"].status == "fail" and results["second"].detail == "because"
        assert results["script"].detail == "rc=3"
        assert vm.wait_for_marker("PMVT-MARK", timeout=1) == "PMVT-MARK half way"

    vm = boot_vm(image, stay=True, name="vmkill")
    try:
        with pytest.raises(VmError, match="no 'never printed'"):
            vm.wait_for_marker("never printed", timeout=2)
    finally:
        tmpdir = vm.tmpdir
        vm.close()
    assert vm.proc.returncode is not None
    assert not _qemu_pids_in(tmpdir)
    assert not tmpdir.exists()
