"""Commands against a control server: link verbs, version, one-line errors, `daemon`."""

from __future__ import annotations

import json
import os
import sys
import types
from typing import Any

import pytest

from pymacvtap import cli
from pymacvtap.cli import Help, RunDaemon, parse
from tests.control.fakes import RunningServer


def run_cli(
    srv: RunningServer, line: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    status = cli.main(["--socket", srv.path, *line.split()])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_link_commands_end_to_end(
    running: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(
        running, "link add link eth0 name vm0 type macvtap owner 1000 group 1000", capsys
    ) == (0, "", "")
    assert run_cli(running, "link add link eth0 name c1 type macvlan mode bridge", capsys)[0] == 0
    status, out, err = run_cli(running, "link show", capsys)
    assert status == 0 and err == ""
    assert out.splitlines()[:4] == [
        "vm0@eth0: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500 state UP",
        "    link/ether 02:00:00:00:00:01",
        "    macvtap mode vepa spoofchk off",
        "    frontend tap owner 1000 group 1000 queues 1",
    ]
    assert "c1@eth0: <BROADCAST,MULTICAST> mtu 1500 state DOWN" in out
    status, out, _ = run_cli(running, "-j link show", capsys)
    entries = json.loads(out)
    assert [e["ifname"] for e in entries] == ["vm0", "c1"]
    for key in ("ifname", "link", "type", "mode", "address", "mtu", "operstate", "frontend",
                "path", "netns", "owner", "group", "queues", "spoofchk"):  # fmt: skip
        assert key in entries[0]
    assert "stats64" not in entries[0]
    status, out, _ = run_cli(running, "-j -s link show vm0", capsys)
    (entry,) = json.loads(out)
    assert set(entry["stats64"]["rx"]) == {"bytes", "packets", "errors", "dropped", "multicast"}
    assert set(entry["stats64"]["tx"]) == {"bytes", "packets", "errors", "dropped"}
    status, out, _ = run_cli(running, "-s link show vm0", capsys)
    lines = out.splitlines()
    assert lines[4].split() == ["RX:", "bytes", "packets", "errors", "dropped", "mcast"]
    assert lines[5].split() == ["0"] * 5
    assert lines[6].split() == ["TX:", "bytes", "packets", "errors", "dropped"]
    assert run_cli(running, "link set vm0 down mtu 9000", capsys) == (0, "", "")
    assert running.service.endpoints["vm0"]["mtu"] == 9000
    assert run_cli(running, "link del dev c1", capsys) == (0, "", "")
    status, out, _ = run_cli(running, "version", capsys)
    assert out == "pymacvtap 0.1.0\ndaemon 0.1.0 (protocol 1)\n"


def test_daemon_errors_are_one_line(
    running: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    run_cli(running, "link add link eth0 name vm0 type macvtap", capsys)
    assert run_cli(running, "link add link eth0 name vm0 type macvtap", capsys) == (
        1, "", "pymacvtap: link add vm0: an endpoint of that name exists\n",
    )  # fmt: skip
    assert run_cli(running, "link del vm7", capsys) == (
        1, "", "pymacvtap: link del vm7: no such endpoint\n",
    )  # fmt: skip
    status, _, err = run_cli(
        running, "link add link eth0 name vm1 type macvtap address 01:00:5e:00:00:01", capsys
    )
    assert status == 1 and err.startswith("pymacvtap: link add vm1: ") and err.count("\n") == 1
    status, _, err = run_cli(running, "link add link eth0 name boom type macvtap", capsys)
    assert (status, err) == (1, "pymacvtap: link add boom: internal error: RuntimeError: kaboom\n")


def test_daemon_not_running(
    sockdir: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = os.path.join(sockdir, "none.sock")
    monkeypatch.setenv("PYMACVTAP_SOCKET", path)
    assert cli.main(["link", "show"]) == 1
    assert capsys.readouterr().err == (
        f"pymacvtap: cannot reach the daemon at {path}: No such file or directory "
        "(is `pymacvtap daemon` running?)\n"
    )


def test_environment_socket(
    running: RunningServer, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYMACVTAP_SOCKET", running.path)
    assert cli.main(["-j", "link", "show"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_daemon_command_calls_daemon_main(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    fake = types.ModuleType("pymacvtap.daemon")

    def fake_main(args: Any) -> int:
        seen.append(args)
        return 0

    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pymacvtap.daemon", fake)
    line = (
        "--socket /g.sock daemon --state-dir /s --admin-group netadm --metrics 127.0.0.1:9100"
        " --announce-rounds 3"
    )
    assert cli.main(line.split()) == 0
    (args,) = seen
    assert vars(args) == {
        "socket": "/g.sock",
        "state_dir": "/s",
        "admin_group": "netadm",
        "metrics": "127.0.0.1:9100",
        "announce_rounds": "3",
        "datapath": "auto",
    }
    _, parsed = parse(["daemon", "--socket=/d.sock"])
    assert isinstance(parsed, RunDaemon)
    assert vars(parsed.args) == {
        "socket": "/d.sock",
        "state_dir": None,
        "admin_group": None,
        "metrics": None,
        "announce_rounds": None,
        "datapath": "auto",
    }
    assert isinstance(parse(["daemon", "-h"])[1], Help)


@pytest.mark.parametrize("choice", ["auto", "ebpf", "python"])
def test_daemon_datapath_option(monkeypatch: pytest.MonkeyPatch, choice: str) -> None:
    seen: list[Any] = []
    fake = types.ModuleType("pymacvtap.daemon")
    fake.main = lambda args: seen.append(args) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pymacvtap.daemon", fake)
    assert cli.main(["daemon", "--datapath", choice]) == 0
    assert seen[0].datapath == choice


def test_daemon_datapath_option_refuses_other_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["daemon", "--datapath", "epbf"]) != 0
    err = capsys.readouterr().err
    assert '--datapath "epbf": expected one of auto, ebpf, python (did you mean ebpf?)' in err
