"""Isolation: frames only where the kernel would put them; refusals; the daemon's capabilities."""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from pathlib import Path

from lab import Lab, PacketSocket, drain, ip
from lab.daemon import SYSTEM_PYTHON, DaemonProcess, as_user_argv, wait_until
from lab.fixtures import Containers
from lab.users import temporary_user
from pymacvtap.io.caps import CAP_BITS, DAEMON_CAPABILITIES
from tests.reliability.helpers import (
    BROADCAST,
    ETH_P_TEST,
    StreamVM,
    add_vm,
    frame,
    mac_of,
    proc_status,
    public_dir,
    record,
    stats,
)


def _is_test(data: bytes) -> bool:
    return len(data) >= 14 and int.from_bytes(data[12:14], "big") == ETH_P_TEST


def test_frames_only_where_the_kernel_would_deliver(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    lab.add_lower("low1", bytes.fromhex("020000000c02"), hairpin=True)
    # The other lower's wire leads nowhere: a frame that reaches its endpoint
    # came through the daemon.
    ip(lab.sw, "link", "set", "sw-low1", "nomaster")
    lab.set_hairpin("low0", False)
    for name, mode in (("v1", "vepa"), ("v2", "vepa"), ("p1", "private"), ("p2", "private"),
                       ("b1", "bridge"), ("dn", "bridge")):  # fmt: skip
        containers.add(name, mode)
    containers.add("o1", "vepa", lower="low1")
    ip(containers.netns["dn"], "link", "set", "eth0", "down")
    assert wait_until(lambda: daemon.show("dn")["operstate"] == "DOWN")
    names = ["v1", "v2", "p1", "p2", "b1", "dn", "o1"]
    mac = {n: mac_of(daemon, n) for n in names}
    socks = {n: PacketSocket(containers.netns[n], "eth0") for n in names}
    sent = 0

    def send(src: str, dst: bytes, tag: bytes) -> dict[str, int]:
        nonlocal sent
        for s in socks.values():
            s.flush()
        socks[src].send(frame(dst, mac[src], tag))
        sent += 1
        got = drain(socks, interesting=lambda d: _is_test(d) and tag in d)
        return {n: len(f) for n, f in got.items() if f}

    try:
        # Hairpin off: VEPA and private endpoints cannot reach each other at all.
        assert send("v1", mac["v2"], b"A1") == {}
        assert send("p1", mac["p2"], b"A2") == {}
        assert send("v1", BROADCAST, b"A3") == {}
        assert send("b1", mac["dn"], b"A4") == {}  # down: not even a bridge peer
        assert send("b1", BROADCAST, b"A5") == {}  # the only other bridge endpoint is down
        assert send("v1", mac["o1"], b"A6") == {}  # another lower
        lab.set_hairpin("low0", True)
        # Hairpin on: what macvlan.c does with the reflected frames.
        assert send("v1", mac["v2"], b"B1") == {"v2": 1}
        assert send("p1", mac["p2"], b"B2") == {"p2": 1}  # unicast is matched on dst only
        assert send("p1", BROADCAST, b"B3") == {"p1": 1}  # back to the sender only
        assert send("v1", BROADCAST, b"B4") == {"v2": 1, "b1": 1}
        assert send("b1", BROADCAST, b"B5") == {"v1": 1, "v2": 1}
        assert send("v2", mac["dn"], b"B6") == {}
        assert send("v1", mac["o1"], b"B7") == {}
    finally:
        for s in socks.values():
            s.close()
    record("isolation probes (kernel rules)", sent)


def test_spoofchk_drops_and_counts_forged_sources(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    ns = containers.add("c1", "vepa", extra=("spoofchk", "on"))
    me = mac_of(daemon, "c1")
    ext = lab.ext_socket()
    raw = PacketSocket(ns, "eth0")
    try:
        before = stats(daemon, "c1")["stats64"]["tx"]["dropped"]
        for i in range(50):
            raw.send(frame(lab.ext_mac, bytes([2, 0xBA, 0xD0, 0, 0, i]), b"forged"))
        raw.send(frame(lab.ext_mac, lab.ext_mac, b"forged"))  # someone else's address
        got = drain({"ext": ext}, interesting=lambda d: b"forged" in d)
        assert got["ext"] == []
        assert wait_until(lambda: stats(daemon, "c1")["stats64"]["tx"]["dropped"] - before == 51, 3)
        assert stats(daemon, "c1")["drops"] == {"spoofed": 51}  # and why, by reason
        text = daemon.cli("-s", "link", "show", "c1")
        assert text.splitlines()[-1].split() == ["drops", "spoofed", "51"], text
        raw.send(frame(lab.ext_mac, me, b"genuine"))
        got = drain({"ext": ext}, interesting=lambda d: b"genuine" in d)
        assert len(got["ext"]) == 1
    finally:
        ext.close()
        raw.close()
    record("forged source frames dropped and counted", 51)


def _as_user(user: tuple[int, int], code: str, netns: str | None = None) -> str:
    argv = as_user_argv(user[0], user[1], [SYSTEM_PYTHON, "-c", code])
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")
    return (proc.stdout + proc.stderr).strip()


CONNECT = (
    "import socket,sys\n"
    "kind=socket.SOCK_DGRAM if sys.argv[2]=='dgram' else socket.SOCK_STREAM\n"
    "s=socket.socket(socket.AF_UNIX,kind)\n"
    "try:\n"
    "    s.connect(sys.argv[1]);print('CONNECTED')\n"
    "except OSError as e: print('REFUSED',e.errno)\n"
)
TUNSETIFF = (
    "import fcntl,os,struct,sys\n"
    "try:\n"
    "    fd=os.open('/dev/net/tun',os.O_RDWR)\n"
    "    for mq in (0, 0x0100):  # single or multi-queue, whichever the tap is\n"
    "        req=struct.pack('16sH',sys.argv[1].encode(),0x0002|0x1000|0x4000|mq)\n"
    "        try:\n"
    "            fcntl.ioctl(fd,0x400454ca,req);print('ATTACHED');break\n"
    "        except OSError as e:\n"
    "            if e.errno!=22 or mq: raise\n"
    "except OSError as e: print('REFUSED',e.errno)\n"
)


def test_refusals_for_every_verb_and_frontend(lab: Lab, daemon: DaemonProcess) -> None:
    sockdir = public_dir()
    daemon.cli("link", "add", "link", "low0", "name", "c1", "type", "macvlan")
    add_vm(daemon, "vt", "tap", None)
    for kind in ("stream", "dgram", "vhost-user"):
        add_vm(daemon, f"v-{kind}", kind, sockdir / f"{kind}.sock")
    endpoints = ["c1", "vt", "v-stream", "v-dgram", "v-vhost-user"]
    before = daemon.show()
    refused = 0
    with temporary_user() as stranger, temporary_user() as owner:
        who = (stranger.pw_uid, stranger.pw_gid)
        add_vm(daemon, "mine", "stream", sockdir / "mine.sock", "owner", str(owner.pw_uid))
        for name in [*endpoints, "mine"]:
            for argv in (
                ("link", "add", "link", "low0", "name", name + "x", "type", "macvlan"),
                ("link", "set", name, "down"),
                ("link", "set", name, "address", "02:00:00:00:99:99"),
                ("link", "del", name),
                ("link", "show", name),
                ("capture", name, "-c", "1"),
                ("exec", name, "--", "true"),
            ):
                proc = daemon.run_cli(*argv, user=who)
                assert proc.returncode != 0, (argv, proc.stdout)
                assert "permission denied" in proc.stderr, (argv, proc.stderr)
                assert len(proc.stderr.strip().splitlines()) == 1
                refused += 1
        mon = daemon.run_cli("monitor", user=who)
        assert mon.returncode != 0 and "permission denied" in mon.stderr
        lowers = daemon.run_cli("lower", "show", user=who)  # the host's devices: admins only
        assert lowers.returncode != 0 and "permission denied" in lowers.stderr, lowers.stderr
        refused += 1
        assert daemon.run_cli("-j", "link", "show", user=who).stdout.strip() == "[]"
        assert daemon.run_cli("version", user=who).returncode == 0  # open to all
        refused += 1
        # The frontends themselves: sockets are 0660 root:root, taps root's.
        for kind in ("stream", "dgram", "vhost-user"):
            out = _as_user(who, CONNECT.replace("sys.argv[1]", repr(str(sockdir / f"{kind}.sock")))
                           .replace("sys.argv[2]", repr(kind)))  # fmt: skip
            assert out.startswith("REFUSED 13"), (kind, out)
            refused += 1
        out = _as_user(who, TUNSETIFF.replace("sys.argv[1]", "'vt'"), lab.host)
        assert out in ("REFUSED 1", "REFUSED 13"), out  # EPERM, or EACCES on /dev/net/tun
        refused += 1
        # The owner of "mine" may see it and use its socket, and nothing else.
        own = (owner.pw_uid, owner.pw_gid)
        assert daemon.run_cli("link", "show", "mine", user=own).returncode == 0
        assert "permission denied" in daemon.run_cli("link", "del", "mine", user=own).stderr
        assert "permission denied" in daemon.run_cli("link", "show", "vt", user=own).stderr
        out = _as_user(own, CONNECT.replace("sys.argv[1]", repr(str(sockdir / "mine.sock")))
                       .replace("sys.argv[2]", "'stream'"))  # fmt: skip
        assert out == "CONNECTED", out
        daemon.cli("link", "del", "mine")
    assert daemon.show() == before
    record("unauthorized requests refused", refused)


def test_daemon_keeps_only_the_capabilities_it_needs(lab: Lab, daemon: DaemonProcess) -> None:
    pid = daemon.pid
    wanted = sum(1 << CAP_BITS[c] for c in DAEMON_CAPABILITIES)
    assert int(proc_status(pid, "CapEff"), 16) == wanted, proc_status(pid, "CapEff")
    assert int(proc_status(pid, "CapPrm"), 16) == wanted
    assert int(proc_status(pid, "CapBnd"), 16) == wanted
    assert int(proc_status(pid, "CapInh"), 16) == 0
    assert int(proc_status(pid, "CapAmb"), 16) == 0
    assert proc_status(pid, "NoNewPrivs") == "1"
    # ... and with only those, every verb and frontend still works.
    sockdir = public_dir()
    with temporary_user() as user, contextlib.ExitStack() as cleanup:
        uid = str(user.pw_uid)
        ns = lab.add_netns("cap1")
        daemon.cli("link", "add", "link", "low0", "name", "c1", "type", "macvlan", "netns", ns,
                   "ifname", "eth0")  # fmt: skip
        # In this process's own namespace (the host's, in CI): a name no one else uses,
        # removed even if the test fails.
        host_netdev = f"pmvtcap{os.getpid()}"[:15]
        cleanup.callback(ip, None, "link", "del", host_netdev, check=False)
        daemon.cli("link", "add", "link", "low0", "name", "c2", "type", "macvlan",
                   "netns", f"/proc/{os.getpid()}/ns/net", "ifname", host_netdev,
                   "mode", "bridge")  # fmt: skip
        add_vm(daemon, "vt", "tap", None, "owner", uid, "queues", "2")
        add_vm(daemon, "vs", "stream", sockdir / "vs.sock", "owner", uid, "group", uid)
        # A VM user's dgram socket (srwxr-xr-x, owned by the user): the daemon sends to it.
        vmdir = Path(tempfile.mkdtemp(prefix="pmvt-vm-"))
        os.chown(vmdir, user.pw_uid, user.pw_gid)
        add_vm(daemon, "vd", "dgram", sockdir / "vd.sock", "owner", uid,
               "peer", str(vmdir / "vm.sock"))  # fmt: skip
        add_vm(daemon, "vh", "vhost-user", sockdir / "vh.sock", "owner", uid)
        daemon.cli("link", "set", "c1", "up", "address", "02:00:00:00:aa:01", "mtu", "1400")
        daemon.cli("link", "set", "c1", "mode", "bridge", "spoofchk", "on")
        daemon.cli("link", "set", "vt", "down")
        daemon.cli("link", "set", "vt", "up")
        out = daemon.cli("exec", "vt", "--", "sh", "-c", "ls /proc/self/fd")
        assert {"3", "4"} <= set(out.split())
        with open(os.devnull, "wb") as devnull:
            cap = subprocess.Popen(
                ["pymacvtap", "--socket", str(daemon.socket), "capture", "vs", "-c", "1"],
                stdout=devnull, stderr=subprocess.PIPE, executable=_cli(),
            )  # fmt: skip
        vm = StreamVM(sockdir / "vs.sock")
        # The dgram "VM" runs as the user: its socket is the user's, mode 0755.
        peer = subprocess.Popen(
            as_user_argv(user.pw_uid, user.pw_gid, [SYSTEM_PYTHON, "-c",
                "import socket,time\n"
                "s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM)\n"
                f"s.bind({str(vmdir / 'vm.sock')!r})\n"
                "s.settimeout(10);print(len(s.recv(70000)),flush=True)\n"]),
            stdout=subprocess.PIPE, text=True, cwd="/",
        )  # fmt: skip
        try:
            assert cap.stderr is not None
            assert b"capturing on vs" in cap.stderr.readline()  # no frame missed from here
            vm.send(frame(BROADCAST, mac_of(daemon, "vs"), b"cap"))
            assert cap.wait(10) == 0, cap.stderr.read() if cap.stderr else ""
            ext = lab.ext_socket()
            try:
                ext.send(frame(BROADCAST, lab.ext_mac, b"to all"))
            finally:
                ext.close()
            out_peer, _ = peer.communicate(timeout=15)
            assert int(out_peer.strip()) >= 60, "the daemon could not send to the VM's socket"
        finally:
            vm.close()
            for p in (cap, peer):
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for name in ("c1", "c2", "vt", "vs", "vd", "vh"):
            daemon.cli("link", "del", name)
    assert daemon.show() == []
    assert int(proc_status(pid, "CapEff"), 16) == wanted


def _cli() -> str:
    import sys

    return str(Path(sys.executable).parent / "pymacvtap")
