"""`pymacvtap capture`: an endpoint's frames as pcap, read back by tcpdump."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lab.daemon import DaemonProcess
from lab.fixtures import Containers
from lab.users import temporary_user


def start_capture(daemon: DaemonProcess, *args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "pymacvtap", "--socket", str(daemon.socket), "capture", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    line = proc.stderr.readline()  # printed once the daemon has accepted the capture
    assert line.startswith(f"pymacvtap: capturing on {args[0]}"), line + proc.stderr.read()
    return proc


def test_capture_writes_pcap_that_tcpdump_reads(
    daemon: DaemonProcess, containers: Containers, tmp_path: Path
) -> None:
    containers.add("c1", "vepa")
    containers.add("c2", "vepa")
    assert containers.ping("c1", "c2", count=1)  # ARP settled: only ICMP below
    pcap = tmp_path / "c2.pcap"
    capture = start_capture(daemon, "c2", "-w", str(pcap), "-c", "6")
    assert containers.ping("c1", "c2", count=3)
    _, err = capture.communicate(timeout=10)
    assert capture.returncode == 0, err
    text = subprocess.run(
        ["tcpdump", "-n", "-e", "-r", str(pcap)], capture_output=True, text=True, check=True
    ).stdout
    lines = text.strip().splitlines()
    assert len(lines) == 6
    c1, c2 = containers.address["c1"], containers.address["c2"]
    # Both directions: requests c2 received (rx) and replies c2 sent (tx).
    assert sum(f"{c1} > {c2}: ICMP echo request" in line for line in lines) == 3
    assert sum(f"{c2} > {c1}: ICMP echo reply" in line for line in lines) == 3


def test_capture_summary_lines_and_direction(daemon: DaemonProcess, containers: Containers) -> None:
    containers.add("c1", "vepa")
    containers.add("c2", "vepa")
    assert containers.ping("c1", "c2", count=1)
    capture = start_capture(daemon, "c1", "-c", "2")
    assert containers.ping("c1", "c2", count=1)
    out, err = capture.communicate(timeout=10)
    assert capture.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 2
    c1_mac = daemon.show("c1")["address"]
    c2_mac = daemon.show("c2")["address"]
    assert f" tx {c1_mac} > {c2_mac}, ethertype 0x0800" in lines[0]
    assert f" rx {c2_mac} > {c1_mac}, ethertype 0x0800" in lines[1]


def test_capture_is_refused_to_strangers(daemon: DaemonProcess, containers: Containers) -> None:
    containers.add("c1", "vepa")
    with temporary_user() as user:
        proc = daemon.run_cli("capture", "c1", "-c", "1", user=(user.pw_uid, user.pw_gid))
    assert proc.returncode == 1
    assert proc.stderr.startswith("pymacvtap: capture c1: permission denied"), proc.stderr
