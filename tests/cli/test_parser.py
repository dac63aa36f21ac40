"""The parser: every form of SPEC 4 → its command, and every wrong word → one line, exit 2."""

from __future__ import annotations

from typing import Any

import pytest

from pymacvtap import cli
from pymacvtap.cli import Command, ShowVersion, parse

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
            "link set c1 macnat on announce",
            "link.set",
            {"name": "c1", "changes": {"macnat": True, "announce": True}},
        ),
        (
            "link add link wlan0 name c1 type macvlan mode bridge macnat on",
            "link.add",
            {"link": "wlan0", "name": "c1", "type": "macvlan", "mode": "bridge", "macnat": True},
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
