"""The command line: every form of SPEC 4, its errors and exit codes, help, and output."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from typing import Any

import pytest

from pymacvtap import cli
from pymacvtap.cli import Command, Daemon, Help, ShowVersion, parse

from .fakes import RunningServer

ADD = ["link", "add", "link", "eth0", "name", "vm0", "type", "macvtap"]


def cmd(line: str) -> Command:
    _opts, parsed = parse(line.split())
    assert isinstance(parsed, Command), parsed
    return parsed


@pytest.mark.parametrize(
    ("line", "verb", "args"),
    [
        ("link show", "link.show", {}),
        ("link", "link.show", {}),
        ("link show vm0", "link.show", {"name": "vm0"}),
        ("link show dev vm0", "link.show", {"name": "vm0"}),
        ("link list", "link.show", {}),
        ("link ls vm0", "link.show", {"name": "vm0"}),
        ("l sh vm0", "link.show", {"name": "vm0"}),
        ("-j -s link show", "link.show", {}),
        ("link del vm0", "link.del", {"name": "vm0"}),
        ("link delete dev vm0", "link.del", {"name": "vm0"}),
        ("link set vm0 up", "link.set", {"name": "vm0", "changes": {"up": True}}),
        ("link set dev vm0 down", "link.set", {"name": "vm0", "changes": {"up": False}}),
        (
            "link set vm0 address 02:00:00:00:00:09 mtu 9000 mode bridge spoofchk on",
            "link.set",
            {
                "name": "vm0",
                "changes": {
                    "address": "02:00:00:00:00:09",
                    "mtu": 9000,
                    "mode": "bridge",
                    "spoofchk": True,
                },
            },
        ),
        (
            "link set vm0 macaddr add 02:00:00:00:00:01 02:00:00:00:00:02 up",
            "link.set",
            {
                "name": "vm0",
                "changes": {
                    "macaddr": {
                        "op": "add",
                        "addresses": ["02:00:00:00:00:01", "02:00:00:00:00:02"],
                    },
                    "up": True,
                },
            },
        ),
        (
            "link set vm0 macaddr flush",
            "link.set",
            {"name": "vm0", "changes": {"macaddr": {"op": "flush", "addresses": []}}},
        ),
        (
            "link set vm0 macaddr set",
            "link.set",
            {"name": "vm0", "changes": {"macaddr": {"op": "set", "addresses": []}}},
        ),
        (
            "link set vm0 spoofchk off macaddr del 02:00:00:00:00:01",
            "link.set",
            {
                "name": "vm0",
                "changes": {
                    "spoofchk": False,
                    "macaddr": {"op": "del", "addresses": ["02:00:00:00:00:01"]},
                },
            },
        ),
        (
            "link add link eth0 name vm0 type macvlan",
            "link.add",
            {"link": "eth0", "name": "vm0", "type": "macvlan"},
        ),
        (
            "link add vm0 link eth0 type macvtap",
            "link.add",
            {"link": "eth0", "name": "vm0", "type": "macvtap"},
        ),
        (
            "link add link eth0 dev vm0 type macvtap",
            "link.add",
            {"link": "eth0", "name": "vm0", "type": "macvtap"},
        ),
        (
            "link add type macvtap name vm0 link eth0 mode passthru nopromisc",
            "link.add",
            {
                "link": "eth0",
                "name": "vm0",
                "type": "macvtap",
                "mode": "passthru",
                "nopromisc": True,
            },
        ),
        (
            "link add link eth0 name vm0 type macvtap mode source address 02:00:00:00:00:05"
            " netns /proc/1/ns/net ifname tap5 frontend dgram path /run/vm0.sock"
            " peer /run/vm0-qemu.sock owner 1000 group 1001 queues 1 mtu 1400 bcqueuelen 50"
            " spoofchk on",
            "link.add",
            {
                "link": "eth0",
                "name": "vm0",
                "type": "macvtap",
                "mode": "source",
                "address": "02:00:00:00:00:05",
                "netns": "/proc/1/ns/net",
                "ifname": "tap5",
                "frontend": "dgram",
                "path": "/run/vm0.sock",
                "peer": "/run/vm0-qemu.sock",
                "owner": 1000,
                "group": 1001,
                "queues": 1,
                "mtu": 1400,
                "bcqueuelen": 50,
                "spoofchk": True,
            },
        ),
        (
            "link add link eth0 name vm0 type macvtap owner root group root",
            "link.add",
            {"link": "eth0", "name": "vm0", "type": "macvtap", "owner": 0, "group": 0},
        ),
        (
            "link add link eth0 name vm0 type macvtap frontend vhost-user queues 4",
            "link.add",
            {
                "link": "eth0",
                "name": "vm0",
                "type": "macvtap",
                "frontend": "vhost-user",
                "queues": 4,
            },
        ),
        ("monitor", "monitor", {}),
        ("-j monitor", "monitor", {}),
        ("monitor link", "monitor", {}),
    ],
)
def test_parse_forms(line: str, verb: str, args: dict[str, Any]) -> None:
    parsed = cmd(line)
    assert parsed.verb == verb
    assert parsed.args == args


def test_global_options() -> None:
    opts, _parsed = parse(["-j", "-s", "--socket", "/x.sock", "link", "show"])
    assert (opts.json, opts.stats, opts.socket) == (True, True, "/x.sock")
    opts, _ = parse(["-js", "--socket=/y", "link", "show"])
    assert (opts.json, opts.stats, opts.socket) == (True, True, "/y")
    opts, _ = parse(["-d", "-p", "-j", "link"])
    assert opts.pretty and opts.json
    assert isinstance(parse(["-V"])[1], ShowVersion)
    assert parse(["version"])[1] == ShowVersion(ask_daemon=True)


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("", "no command given"),
        ("lnik show", 'unknown command "lnik" (did you mean link?)'),
        ("-x link show", 'option "-x": unknown'),
        ("--socket", '"--socket" needs a PATH'),
        ("link frob", 'link: unknown subcommand "frob"'),
        ("link show -j", 'link show: "-j": global options go before the command'),
        ("link show vm0 extra", 'link show: "extra": unexpected word after NAME vm0'),
        ("link show dev", 'link show: "dev" needs a NAME'),
        ("link del", "link del: which endpoint? give its NAME"),
        ("link del vm0 now", 'link del vm0: "now": unexpected word'),
        ("link add link eth0 type macvtap", 'link add: "name NAME" is missing'),
        ("link add name vm0 type macvtap", 'link add vm0: "link LOWER" is missing'),
        ("link add link eth0 name vm0", 'link add vm0: "type macvlan|macvtap" is missing'),
        ("link add link eth0 name vm0 type macvtab", 'type "macvtab": expected macvlan or macvtap'),
        (
            "link add link eth0 name vm0 type macvtap mode fast",
            'link add vm0: mode "fast": expected one of private, vepa, bridge, passthru, source',
        ),
        (
            "link add link eth0 name vm0 type macvtap frontend vhost",
            'frontend "vhost": expected one of tap, stream, dgram, vhost-user',
        ),
        (
            "link add link eth0 name vm0 type macvtap mtu big",
            'link add vm0: mtu "big": not a number',
        ),
        ("link add link eth0 name vm0 type macvtap queues", '"queues" needs a value (N)'),
        (
            "link add link eth0 name vm0 type macvtap spoofchk yes",
            'spoofchk "yes": expected on or off',
        ),
        (
            "link add link eth0 name vm0 type macvtap moed bridge",
            '"moed": unknown word (did you mean mode?)',
        ),
        ("link add link eth0 nmae vm0 type macvtap", 'write "name nmae"'),
        ("link add link eth0 name vm0 name vm1 type macvtap", '"name" given twice'),
        ("link add vm0 vm1 link eth0 type macvtap", 'link add vm0: "vm1": unknown word'),
        ("link set", "link set: which endpoint? give its NAME"),
        ("link set vm0", "link set vm0: nothing to change"),
        ("link set vm0 up down", '"up" and "down" together'),
        ("link set vm0 mtu 1500 mtu 1400", '"mtu" given twice'),
        ("link set vm0 mtu", '"mtu" needs a value (N)'),
        ("link set vm0 macaddr", '"macaddr" needs add, del, set or flush'),
        ("link set vm0 macaddr zap", 'macaddr "zap": expected one of add, del, set, flush'),
        ("link set vm0 macaddr add", '"macaddr add" needs at least one MAC'),
        ("link set vm0 macaddr flush 02:00:00:00:00:01", '"macaddr flush" takes no MAC'),
        ("link set vm0 upp", 'link set vm0: "upp": unknown word (did you mean up?)'),
        ("monitor now", 'monitor: "now": unexpected word'),
        ("daemon --sokcet /x", 'daemon: "--sokcet": unknown option (did you mean --socket?)'),
        ("daemon --state-dir", 'daemon: "--state-dir" needs a value'),
        ("daemon --metrics localhost", '--metrics "localhost": expected ADDR:PORT'),
        ("version now", 'version: "now": unexpected word'),
    ],
)
def test_usage_errors(line: str, fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(line.split()) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("pymacvtap: ")
    assert captured.err.count("\n") == 1, captured.err
    assert fragment in captured.err


def test_unknown_owner_is_a_failure(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([*ADD, "owner", "no-such-user-xyz"]) == 1
    assert (
        capsys.readouterr().err == "pymacvtap: link add vm0: owner no-such-user-xyz: no such user\n"
    )
    assert cli.main([*ADD, "group", "no-such-group-xyz"]) == 1
    assert "group no-such-group-xyz: no such group" in capsys.readouterr().err


# -- help ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "title"),
    [
        ("--help", "pymacvtap - "),
        ("-h", "pymacvtap - "),
        ("help", "pymacvtap - "),
        ("link --help", "pymacvtap link - "),
        ("link help", "pymacvtap link - "),
        ("help link", "pymacvtap link - "),
        ("link show --help", "pymacvtap link show - "),
        ("link add --help", "pymacvtap link add - "),
        ("link add link eth0 --help", "pymacvtap link add - "),
        ("link add help", "pymacvtap link add - "),
        ("help link add", "pymacvtap link add - "),
        ("link set --help", "pymacvtap link set - "),
        ("link del --help", "pymacvtap link del - "),
        ("monitor --help", "pymacvtap monitor - "),
        ("daemon --help", "pymacvtap daemon - "),
        ("help daemon", "pymacvtap daemon - "),
    ],
)
def test_help_everywhere(line: str, title: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(line.split()) == 0
    out = capsys.readouterr().out
    assert out.startswith(title)
    assert "SYNOPSIS" in out
    assert "{" + "default}" not in out


ADD_OPTIONS = [
    "link LOWER", "name NAME", "type macvlan", "type macvtap", "mode MODE", "address MAC",
    "netns NS", "ifname IFNAME", "frontend FE", "path PATH", "peer PATH", "owner UID",
    "group GID", "queues N", "mtu N", "bcqueuelen N", "spoofchk on|off", "nopromisc",
    "private", "vepa", "bridge", "passthru", "source", "tap", "stream", "dgram", "vhost-user",
]  # fmt: skip
SET_OPTIONS = ["up, down", "address MAC", "mtu N", "mode MODE", "spoofchk on|off",
               "macaddr add", "macaddr del", "macaddr set", "macaddr flush"]  # fmt: skip
DAEMON_OPTIONS = ["--socket PATH", "--state-dir DIR", "--admin-group GROUP", "--metrics ADDR:PORT"]
TOP_OPTIONS = ["-j, --json", "-s, --stats", "-p, --pretty", "--socket PATH", "-V, --version",
               "-h, --help", "PYMACVTAP_SOCKET", "EXIT STATUS", "EXAMPLES"]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "options"),
    [
        (cli.HELP_ADD, ADD_OPTIONS),
        (cli.HELP_SET, SET_OPTIONS),
        (cli._fill(cli.HELP_DAEMON), DAEMON_OPTIONS),
        (cli._fill(cli.HELP_TOP), TOP_OPTIONS),
        (cli.HELP_SHOW, ["-s ", "-j ", "stats64", "dev NAME"]),
        (cli.HELP_DEL, ["dev"]),
        (cli.HELP_MONITOR, ["-j "]),
    ],
)
def test_help_explains_every_option(text: str, options: list[str]) -> None:
    for option in options:
        assert re.search(r"^\s+" + re.escape(option), text, re.M) or option in text, option
    assert "EXAMPLES" in text
    assert max(len(line) for line in text.splitlines()) <= 100


# -- against a server -------------------------------------------------------------------------


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
    line = "--socket /g.sock daemon --state-dir /s --admin-group netadm --metrics 127.0.0.1:9100"
    assert cli.main(line.split()) == 0
    (args,) = seen
    assert vars(args) == {
        "socket": "/g.sock",
        "state_dir": "/s",
        "admin_group": "netadm",
        "metrics": "127.0.0.1:9100",
    }
    _, parsed = parse(["daemon", "--socket=/d.sock"])
    assert isinstance(parsed, Daemon)
    assert vars(parsed.args) == {
        "socket": "/d.sock",
        "state_dir": None,
        "admin_group": None,
        "metrics": None,
    }
    assert isinstance(parse(["daemon", "-h"])[1], Help)


# -- monitor as a process: flushing, Ctrl-C, a closed pipe ---------------------------------------


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
