"""Help: `--help` everywhere it may be asked, and every option explained."""

from __future__ import annotations

import re

import pytest

from pymacvtap import cli
from pymacvtap.cli.help import (
    HELP_ADD,
    HELP_DAEMON,
    HELP_DEL,
    HELP_MONITOR,
    HELP_SET,
    HELP_SHOW,
    HELP_TOP,
    fill,
)


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
    "group GID", "queues N", "mtu N", "bcqueuelen N", "spoofchk on|off", "macnat on|off",
    "nopromisc",
    "private", "vepa", "bridge", "passthru", "source", "tap", "stream", "dgram", "vhost-user",
]  # fmt: skip
SET_OPTIONS = ["up, down", "address MAC", "mtu N", "mode MODE", "spoofchk on|off",
               "macnat on|off", "announce", "macaddr add", "macaddr del", "macaddr set",
               "macaddr flush"]  # fmt: skip
DAEMON_OPTIONS = [
    "--socket PATH",
    "--state-dir DIR",
    "--admin-group GROUP",
    "--metrics ADDR:PORT",
    "--announce-rounds N",
]
TOP_OPTIONS = ["-j, --json", "-s, --stats", "-p, --pretty", "--socket PATH", "-V, --version",
               "-h, --help", "PYMACVTAP_SOCKET", "EXIT STATUS", "EXAMPLES"]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "options"),
    [
        (HELP_ADD, ADD_OPTIONS),
        (HELP_SET, SET_OPTIONS),
        (fill(HELP_DAEMON), DAEMON_OPTIONS),
        (fill(HELP_TOP), TOP_OPTIONS),
        (fill(HELP_SHOW), ["-s ", "-j ", "stats64", "netdev", "lower_stats", "dev NAME"]),
        (HELP_DEL, ["dev"]),
        (HELP_MONITOR, ["-j "]),
    ],
)
def test_help_explains_every_option(text: str, options: list[str]) -> None:
    for option in options:
        assert re.search(r"^\s+" + re.escape(option), text, re.M) or option in text, option
    assert "EXAMPLES" in text
    assert max(len(line) for line in text.splitlines()) <= 100
