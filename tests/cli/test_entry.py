"""The entry point as a process: monitor's flushing, Ctrl-C, a closed pipe, the daemon gone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

from tests.control.fakes import RunningServer


def start_monitor(
    srv: RunningServer, *flags: str, stdout: Any = subprocess.PIPE
) -> subprocess.Popen[str]:
    before = srv.call(lambda: len(srv.service.subscribers))
    proc = subprocess.Popen(
        [sys.executable, "-m", "pymacvtap", "--socket", srv.path, *flags, "monitor"],
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while srv.call(lambda: len(srv.service.subscribers)) == before:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc


@pytest.mark.timeout(60)
def test_monitor_prints_events_and_stops_on_ctrl_c(running: RunningServer) -> None:
    proc = start_monitor(running, "-j")
    text = start_monitor(running)
    try:
        running.call(
            lambda: running.service.emit({"event": "link.add", "ifname": "vm0", "link": "eth0"})
        )
        running.call(
            lambda: running.service.emit(
                {"event": "link.del", "ifname": "vm0", "reason": "lower eth0 gone"}
            )
        )
        assert proc.stdout is not None and text.stdout is not None
        assert json.loads(proc.stdout.readline()) == {
            "event": "link.add",
            "ifname": "vm0",
            "link": "eth0",
        }
        assert json.loads(proc.stdout.readline())["reason"] == "lower eth0 gone"
        assert text.stdout.readline() == "link.add vm0 link eth0\n"
        assert text.stdout.readline() == 'link.del vm0 reason "lower eth0 gone"\n'
    finally:
        for p in (proc, text):
            p.send_signal(signal.SIGINT)
    for p in (proc, text):
        _out, err = p.communicate(timeout=20)
        assert p.returncode == 0
        assert err == ""


@pytest.mark.timeout(60)
def test_monitor_exits_quietly_when_its_reader_goes(running: RunningServer) -> None:
    r, w = os.pipe()
    proc = start_monitor(running, stdout=w)
    os.close(w)
    os.close(r)  # nobody reads: the next write gets EPIPE
    running.call(lambda: running.service.emit({"event": "x"}))
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert err == ""


@pytest.mark.timeout(60)
def test_monitor_ends_when_the_daemon_stops(make_server: Any) -> None:
    srv = make_server()
    proc = start_monitor(srv)
    srv.stop()
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
