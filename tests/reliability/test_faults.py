"""Faults injected under a running daemon (SPEC 5, 6): each ends with traffic flowing again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from lab import Lab, ip
from lab.daemon import DaemonProcess, wait_until
from lab.fixtures import LOWER_MAC, Containers
from lab.monitor import EventMonitor
from lab.transfer import DigestReceiver
from pymacvtap.daemon.state import StateStore
from tests.reliability.helpers import (
    SCALE,
    DgramVM,
    StreamVM,
    add_vm,
    frame,
    mac_of,
    public_dir,
    record,
)


def test_lower_down_up_and_deleted_recreated(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "vepa")
    containers.add("c2", "vepa")
    assert containers.ping("c1", "c2")
    with EventMonitor(daemon.socket) as monitor:
        ip(lab.host, "link", "set", "low0", "down")
        monitor.wait_event(lambda e: e.get("event") == "lower.carrier" and not e["carrier"])
        assert daemon.show("c1")["operstate"] == "LOWERLAYERDOWN"
        assert not containers.ping("c1", "ext", count=1)
        ip(lab.host, "link", "set", "low0", "up")
        monitor.wait_event(lambda e: e.get("event") == "lower.carrier" and e["carrier"])
        assert wait_until(lambda: containers.ping("c1", "c2", count=1), 8)
        assert containers.ping("c2", "ext")
        record("faults injected: lower down/up")

        ip(lab.host, "link", "del", "low0")
        monitor.wait_event(lambda e: e.get("event") == "lower.del")
    assert wait_until(lambda: daemon.show() == [])
    lab.lowers.pop("low0")
    lab.add_lower("low0", LOWER_MAC, hairpin=True)
    containers.add("c3", "vepa")
    containers.add("c4", "bridge")
    assert containers.ping("c3", "c4") and containers.ping("c3", "ext")
    record("faults injected: lower deleted and re-created")


def test_netns_deleted_under_its_endpoint(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    ns1 = containers.add("c1", "vepa")
    containers.add("c2", "vepa")
    assert containers.ping("c1", "c2")
    with EventMonitor(daemon.socket) as monitor:
        started = time.monotonic()
        ip(None, "netns", "del", ns1)
        lab.namespaces.remove(ns1)
        event = monitor.wait_event(lambda e: e.get("event") == "link.del", timeout=6)
        took = time.monotonic() - started
    assert event["ifname"] == "c1" and "netns" in event["reason"], event
    assert took < 5, took
    assert [e["ifname"] for e in daemon.show()] == ["c2"]
    assert containers.ping("c2", "ext")
    record("faults injected: endpoint netns deleted")


def _tcp_transfer(containers: Containers, size: int) -> tuple[DigestReceiver, list[str]]:
    receiver = DigestReceiver(containers.netns["c2"], 5301)
    client = [
        "ip", "netns", "exec", containers.netns["c1"], sys.executable, "-c",
        "import socket,hashlib,os,sys,time\n"
        f"c=socket.create_connection(('{containers.address['c2']}',5301),timeout=60)\n"
        f"blob=bytes(range(256))*({size}//256);print(hashlib.sha256(blob).hexdigest(),flush=True)\n"
        "for i in range(0,len(blob),1<<16):\n"
        "    c.sendall(blob[i:i+(1<<16)]);time.sleep(0.002)\n"
        "c.close()\n",
    ]  # fmt: skip
    return receiver, client


def test_daemon_sigkilled_mid_transfer_and_restarted(
    daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "vepa")
    containers.add("c2", "bridge")
    assert containers.ping("c1", "c2")
    receiver, client_argv = _tcp_transfer(containers, 24 << 20)
    client = subprocess.Popen(client_argv, stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        digest = client.stdout.readline().strip()
        time.sleep(0.5)  # mid-transfer
        assert client.poll() is None
        daemon.kill()
        time.sleep(1.0)  # TCP retransmits into the void meanwhile
        daemon.start()
        assert client.wait(90) == 0
        size, got = receiver.result()
    finally:
        client.kill()
        client.wait()
        receiver.close()
    assert size == 24 << 20 and got == digest
    assert containers.ping("c1", "ext")
    record("faults injected: daemon SIGKILLed mid-transfer")


def test_corrupt_state_file_uses_the_last_good_copy(
    daemon: DaemonProcess, containers: Containers
) -> None:
    containers.add("c1", "vepa")
    containers.add("c2", "bridge")
    containers.add("c3", "vepa")
    state = daemon.state_dir / "state.json"
    expected = sorted(e["ifname"] for e in daemon.show())
    assert expected == ["c1", "c2", "c3"]
    # Stopping writes a snapshot; the last good copy is the previous snapshot and the
    # journal of changes that followed it, which together hold the same endpoints.
    daemon.stop()
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])  # truncated: a full disk, a crash, an editor
    daemon.start()
    assert "is corrupt" in daemon.log() and "restored the last good state" in daemon.log()
    assert sorted(e["ifname"] for e in daemon.show()) == expected
    assert containers.ping("c1", "ext")
    # Garbage instead of JSON, and a wrong document: the same.
    for bad in (os.urandom(300), b'{"version": 99}', b"[]"):
        daemon.stop()
        state.write_bytes(bad)
        daemon.start()
        assert sorted(e["ifname"] for e in daemon.show()) == expected
    record("faults injected: corrupt state file", 4)


def state_files(directory: Path) -> dict[str, bytes]:
    """The state dir's files and their contents (the test's filler and the lock aside)."""
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.name not in ("filler", "lock")}


def test_disk_full_while_saving(lab: Lab, tmp_path: Path, containers: Containers) -> None:
    # A daemon of its own whose state dir is a tiny tmpfs this test fills.
    del containers
    proc = DaemonProcess(lab.host, tmp_path / "full")
    (tmp_path / "full").mkdir()
    proc.state_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(proc.state_dir)],
                   check=True)  # fmt: skip
    try:
        proc.start()
        c = Containers(lab, proc)
        c.add("c1", "vepa")
        # A restart leaves a snapshot and no journal (stop and start each write one),
        # so the first change after the disk is full needs a block of its own; an
        # append to a journal could still fit in its last block.
        proc.stop()
        proc.start()
        saved = state_files(proc.state_dir)
        assert set(saved) == {"state.json", "state.json.bak"}
        with EventMonitor(proc.socket) as monitor:
            filler = proc.state_dir / "filler"
            try:
                with open(filler, "wb") as f:
                    while True:
                        f.write(b"\0" * 4096)
                        f.flush()
            except OSError:
                pass  # ENOSPC: full
            c.add("c2", "bridge")  # the change is live
            event = monitor.wait_event(lambda e: e.get("event") == "state.error")
            # c2's netdev going up is a second change, saved (or not) by then too.
            assert wait_until(lambda: proc.show("c2")["operstate"] == "UP")
        assert "No space" in event["message"] or "space" in event["message"], event
        assert state_files(proc.state_dir) == saved  # the previous files intact
        assert "cannot save state" in proc.log()
        assert c.ping("c1", "c2") and c.ping("c2", "ext")
        filler.unlink()
        proc.cli("link", "set", "c2", "mtu", "1400")  # space again: the next change is saved
        restored = StateStore(str(proc.state_dir)).load()  # what a restart would restore
        assert sorted((cfg.name, cfg.mtu) for cfg in restored) == [("c1", 1500), ("c2", 1400)]
        assert proc.proc is not None and proc.proc.poll() is None
    finally:
        proc.cleanup()
        subprocess.run(["umount", "-l", str(proc.state_dir)], check=False)
        print(proc.log())
    record("faults injected: disk full while saving")


def test_vm_clients_killed_mid_transfer_and_restarted(lab: Lab, daemon: DaemonProcess) -> None:
    """Stand-in for a VM SIGKILLed mid-transfer: stream and dgram client processes."""
    sockdir = public_dir()
    add_vm(daemon, "vs", "stream", sockdir / "vs.sock")
    add_vm(daemon, "vd", "dgram", sockdir / "vd.sock")
    macs = {"vs": mac_of(daemon, "vs"), "vd": mac_of(daemon, "vd")}
    blaster = (
        "import socket,struct,sys,time\n"
        "kind,path,local,dst,src=sys.argv[1:6]\n"
        "f=bytes.fromhex(dst)+bytes.fromhex(src)+b'\\x88\\xb5'+bytes(1000)\n"
        "if kind=='stream':\n"
        "    s=socket.socket(socket.AF_UNIX,socket.SOCK_STREAM);s.connect(path)\n"
        "    send=lambda: s.sendall(struct.pack('>I',len(f))+f)\n"
        "else:\n"
        "    s=socket.socket(socket.AF_UNIX,socket.SOCK_DGRAM);s.bind(local)\n"
        "    send=lambda: s.sendto(f,path)\n"
        "print('go',flush=True)\n"
        "while True:\n"
        "    send()\n"
    )
    ext = lab.ext_socket()
    try:
        for name, kind in (("vs", "stream"), ("vd", "dgram")):
            local = sockdir / f"{name}-vm.sock"
            proc = subprocess.Popen(
                [sys.executable, "-c", blaster, kind, str(sockdir / f"{name}.sock"), str(local),
                 lab.ext_mac.hex(), macs[name].hex()],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
                time.sleep(0.5)
                proc.kill()  # mid-transfer, possibly mid-frame
                proc.wait()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            assert stats(daemon, name)["stats64"]["tx"]["packets"] > 0
            time.sleep(0.3)
            ext.flush()
            # The "VM" comes back: traffic resumes both ways.
            if kind == "stream":
                assert wait_until(lambda: _try_stream(sockdir / "vs.sock"), 5)
                vm: StreamVM | DgramVM = StreamVM(sockdir / "vs.sock")
            else:
                local.unlink()
                vm = DgramVM(local, sockdir / "vd.sock")
            try:
                vm.send(frame(lab.ext_mac, macs[name], b"back " + name.encode()))
                assert wait_until(
                    lambda n=name: any(b"back " + n.encode() in c.data for c in ext.read_all()), 3
                )
                ext.send(frame(macs[name], lab.ext_mac, b"hello " + name.encode()))
                assert vm.wait_for(lambda f, n=name: b"hello " + n.encode() in f)
            finally:
                vm.close()
            record("faults injected: VM client SIGKILLed mid-transfer")
    finally:
        ext.close()


def stats(daemon: DaemonProcess, name: str) -> dict[str, object]:
    entry: dict[str, object] = daemon.show(name, stats=True)
    return entry


def _try_stream(path: Path) -> bool:
    try:
        vm = StreamVM(path, timeout=0.3)
    except OSError:
        return False
    try:
        try:
            return vm.sock.recv(1) != b""
        except TimeoutError:
            return True
    finally:
        vm.close()


# -- state faults at restart (issue 16): nothing configured is ever lost -----------------


def _names(daemon: DaemonProcess) -> list[str]:
    return sorted(e["ifname"] for e in daemon.show())


def _all_created(daemon: DaemonProcess) -> bool:
    return all(e["operstate"] != "WAITING" for e in daemon.show())


def _saved(daemon: DaemonProcess) -> list[str]:
    return sorted(cfg.name for cfg in StateStore(str(daemon.state_dir)).load())


def test_restart_faults_never_lose_the_configuration(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    """A second daemon, a renamed lower, a missing lower, a missing netns: each round."""
    containers.add("c1", "vepa")
    ns2 = containers.add("c2", "bridge")
    expected = ["c1", "c2"]
    for _ in range(SCALE):
        # A second daemon on the same state dir is refused and changes nothing.
        second = subprocess.run(
            ["ip", "netns", "exec", lab.host, sys.executable, "-m", "pymacvtap", "daemon",
             "--socket", str(daemon.state_dir.parent / "second.sock"),
             "--state-dir", str(daemon.state_dir)],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert second.returncode == 1 and f"pid {daemon.pid}" in second.stderr
        assert _names(daemon) == expected and _saved(daemon) == expected
        record("faults injected: second daemon on the state dir")

        # The lower renamed while the daemon is down, then renamed back.
        daemon.stop()
        ip(lab.host, "link", "set", "low0", "down")
        ip(lab.host, "link", "set", "low0", "name", "low0r")
        daemon.start()
        assert {e["operstate"] for e in daemon.show()} == {"WAITING"}
        assert _saved(daemon) == expected
        ip(lab.host, "link", "set", "low0r", "name", "low0")
        ip(lab.host, "link", "set", "low0", "up")
        assert wait_until(lambda: _all_created(daemon))
        assert wait_until(lambda: containers.ping("c1", "c2", count=1), 8)
        record("faults injected: lower renamed while the daemon was down")

        # The lower deleted while the daemon is down (a driver not loaded yet), then back.
        daemon.stop()
        lab.delete_link("low0")
        lab.lowers.pop("low0")
        daemon.start()
        assert daemon.show("c1")["waiting"] == "lower low0 missing"
        lab.add_lower("low0", LOWER_MAC, hairpin=True)
        assert wait_until(lambda: _all_created(daemon))
        assert wait_until(lambda: containers.ping("c2", "ext", count=1), 8)
        record("faults injected: lower missing at start")

        # c2's namespace missing at start; it comes back (a new, empty one).
        daemon.stop()
        ip(None, "netns", "del", ns2)
        daemon.start()
        assert daemon.show("c2")["waiting"] == f"netns {ns2} missing"
        assert _saved(daemon) == expected
        ip(None, "netns", "add", ns2)
        assert wait_until(lambda: _all_created(daemon))
        ip(ns2, "addr", "add", f"{containers.address['c2']}/24", "dev", "eth0")
        ip(ns2, "link", "set", "eth0", "up")
        assert wait_until(lambda: containers.ping("c1", "c2", count=1), 8)
        record("faults injected: netns missing at start")
    assert _names(daemon) == expected and _saved(daemon) == expected


def test_power_loss_between_the_journal_write_and_the_snapshot(
    tmp_path: Path, daemon: DaemonProcess, containers: Containers
) -> None:
    """Every point a compaction can be cut at loads as the state with the journal's change.

    The change is in the journal (fdatasync'd) when the daemon dies; the files a
    compaction leaves at each of its steps are laid out by hand, as a power loss
    would leave them, and a daemon is started on each.
    """
    containers.add("c1", "vepa")
    containers.add("c2", "bridge")
    daemon.stop()
    daemon.start()  # a fresh snapshot, no journal
    assert wait_until(lambda: all(e["operstate"] == "UP" for e in daemon.show()))
    daemon.cli("link", "set", "c1", "mtu", "1400")  # only in the journal
    daemon.kill()  # power loss: nothing more written
    state = daemon.state_dir
    old = {p.name: p.read_bytes() for p in state.iterdir() if p.name.startswith("state")}
    assert set(old) >= {"state.json", "state.journal"}
    # The snapshot that compaction would have written, made in a copy of the files.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for name, data in old.items():
        (scratch / name).write_bytes(data)
    store = StateStore(str(scratch))
    store.save_all(store.load())
    new_snapshot = (scratch / "state.json").read_bytes()

    def lay_out(files: dict[str, bytes]) -> None:
        for path in state.iterdir():
            if path.name.startswith("state"):
                path.unlink()
        for name, data in files.items():
            (state / name).write_bytes(data)

    snapshot, journal = old["state.json"], old["state.journal"]
    cut_points = {
        "tmp written": {"state.json": snapshot, "state.journal": journal,
                        "state.json.tmp": new_snapshot[: len(new_snapshot) // 2]},
        "snapshot moved to .bak": {"state.json.bak": snapshot, "state.journal": journal,
                                   "state.json.tmp": new_snapshot},
        "journal moved to .bak": {"state.json.bak": snapshot, "state.journal.bak": journal,
                                  "state.json.tmp": new_snapshot},
        "new snapshot in place": {"state.json.bak": snapshot, "state.journal.bak": journal,
                                  "state.json": new_snapshot},
    }  # fmt: skip
    for point, files in cut_points.items():
        lay_out(files)
        daemon.start()
        shown = {e["ifname"]: e["mtu"] for e in daemon.show()}
        assert shown == {"c1": 1400, "c2": 1500}, (point, shown)
        daemon.kill()
        record("faults injected: power loss during a compaction")
    daemon.start()
    assert containers.ping("c1", "c2")
