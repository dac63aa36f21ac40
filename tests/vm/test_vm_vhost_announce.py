"""QMP ``announce-self`` on a vhost-user VM: QEMU asks the back-end (VHOST_USER_SEND_RARP,
net/vhost-user.c, because we offer VHOST_USER_PROTOCOL_F_RARP and no GUEST_ANNOUNCE) and the
RARP for the guest's MAC must appear on the wire, at the outside host.

The daemon's own announcements are off (``--announce-rounds 0``), so every RARP seen came
through SEND_RARP.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import Lab
from lab.capture import PacketSocket
from lab.daemon import DaemonProcess
from lab.fixtures import LOWER_MAC, lab_with_lower, running_daemon
from lab.vm.image import VmImage
from lab.vm.qemu import Nic, boot_vm, new_mac

SUBNET = "10.95.0"
ETH_P_RARP = b"\x80\x35"


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[Lab, DaemonProcess]]:
    with lab_with_lower(SUBNET, LOWER_MAC) as lab, running_daemon(lab, tmp_path) as daemon:
        yield lab, daemon


def qmp(path: Path, *commands: dict[str, object]) -> list[dict[str, object]]:
    """Run QMP commands on QEMU's monitor socket; their replies, in order."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        stream = sock.makefile("rw")
        json.loads(stream.readline())  # the greeting
        replies = []
        for command in [{"execute": "qmp_capabilities"}, *commands]:
            stream.write(json.dumps(command) + "\n")
            stream.flush()
            while True:
                reply = json.loads(stream.readline())
                if "event" not in reply:
                    break
            assert "return" in reply, reply
            replies.append(reply)
        return replies[1:]


def test_announce_self_makes_a_rarp_on_the_wire(
    site: tuple[Lab, DaemonProcess], image: VmImage, tmp_path: Path
) -> None:
    lab, daemon = site
    mac = new_mac()
    sock_path = tmp_path / "vm.sock"
    daemon.cli("link", "add", "link", "low0", "name", "vmv", "type", "macvtap",
               "frontend", "vhost-user", "path", str(sock_path), "address", mac)  # fmt: skip
    qmp_path = tmp_path / "qmp.sock"
    nic = Nic("vhost-user,chardev=c0", ip=f"{SUBNET}.21/24", mac=mac, device_opts="vectors=0")
    with boot_vm(
        image,
        nic,
        stay=True,
        shared_memory=True,
        name="vmannounce",
        extra_args=[
            "-chardev",
            f"socket,id=c0,path={sock_path}",
            "-qmp",
            f"unix:{qmp_path},server=on,wait=off",
        ],
    ) as vm:
        vm.wait_for_marker("PMVT-READY", timeout=120)
        wire_mac = bytes.fromhex(mac.replace(":", ""))
        with PacketSocket(lab.ext, "eth0") as ext:
            ext.flush()
            qmp(qmp_path, {"execute": "announce-self", "arguments": {
                "initial": 50, "max": 550, "rounds": 3, "step": 100}})  # fmt: skip
            deadline = time.monotonic() + 5
            rarps: list[bytes] = []
            while time.monotonic() < deadline and len(rarps) < 3:
                time.sleep(0.1)
                rarps += [
                    c.data
                    for c in ext.read_all()
                    if c.data[12:14] == ETH_P_RARP and c.data[6:12] == wire_mac
                ]
        assert len(rarps) == 3, vm.output()[-2000:]
        # A RARP "request reverse" (op 3) for the guest's MAC, broadcast.
        assert all(f[0:6] == b"\xff" * 6 and f[20:22] == b"\x00\x03" for f in rarps)
        assert all(f[22:28] == wire_mac and f[32:38] == wire_mac for f in rarps)
