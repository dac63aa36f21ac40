"""Issue 16's CLI consistency: every command takes help the same way, abbreviates the same way,
is named by the same table, refuses a misplaced global option with the usage it needs, and the
`-j` help lists the fields the JSON schema defines."""

from __future__ import annotations

import json
import re
from importlib import resources
from typing import Any

import pytest

from pymacvtap import cli
from pymacvtap.cli import Capture, Command, Exec, Help, RunDaemon, ShowVersion, parse
from pymacvtap.cli.help import HELP_SHOW, HELP_TOP, fill
from pymacvtap.cli.parser import COMMANDS
from pymacvtap.cli.words import prefix_of

TITLES = {
    "link": "pymacvtap link - ",
    "link show": "pymacvtap link show - ",
    "link add": "pymacvtap link add - ",
    "link set": "pymacvtap link set - ",
    "link del": "pymacvtap link del - ",
    "lower": "pymacvtap lower show - ",
    "lower show": "pymacvtap lower show - ",
    "monitor": "pymacvtap monitor - ",
    "exec": "pymacvtap exec - ",
    "capture": "pymacvtap capture - ",
    "version": "pymacvtap version - ",
    "daemon": "pymacvtap daemon - ",
    "help": "pymacvtap - ",
}


def usage_error(line: str, capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(line.split()) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured
    return captured.err


def help_title(line: str) -> str:
    _opts, parsed = parse(line.split())
    assert isinstance(parsed, Help), (line, parsed)
    assert "SYNOPSIS" in parsed.text
    assert "{default}" not in parsed.text and "{json_option}" not in parsed.text
    return parsed.text.split("\n", 1)[0]


# --- 1. help: `CMD --help`, `CMD -h`, `CMD help` and `help CMD` for every command


@pytest.mark.parametrize("command", list(TITLES))
@pytest.mark.parametrize("form", ["{} --help", "{} -h", "{} help", "help {}"])
def test_every_command_takes_help_the_same_way(command: str, form: str) -> None:
    if command == "help" and form == "help {}":
        form = "{}"
    assert help_title(form.format(command)).startswith(TITLES[command])


def test_the_table_is_the_list_helped_above() -> None:
    assert set(COMMANDS) == {c for c in TITLES if " " not in c}


@pytest.mark.parametrize(
    ("line", "title"),
    [
        ("version now --help", "version"),
        ("exec vm0 --help", "exec"),
        ("exec vm0 queues 2 -h", "exec"),
        ("capture vm0 -c 3 --help", "capture"),
        ("monitor link -h", "monitor"),
        ("daemon --socket /p --help", "daemon"),
    ],
)
def test_help_after_other_words(line: str, title: str) -> None:
    assert help_title(line).startswith(TITLES[title])


def test_help_after_the_exec_command_is_the_commands() -> None:
    _opts, parsed = parse(["exec", "vm0", "--", "qemu", "--help"])
    assert parsed == Exec("vm0", None, ["qemu", "--help"])


# --- 2. every command word may be abbreviated to a unique prefix


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("cap vm0", Capture("vm0", None, None)),
        ("c vm0 -c 2", Capture("vm0", None, 2)),
        ("mon", Command("monitor", {}, "monitor")),
        ("m", Command("monitor", {}, "monitor")),
        ("ex vm0 -- true", Exec("vm0", None, ["true"])),
        ("ver", ShowVersion(ask_daemon=True)),
        ("l sh vm0", Command("link.show", {"name": "vm0"}, "link show vm0")),
    ],
)
def test_command_prefixes(line: str, expected: object) -> None:
    assert parse(line.split())[1] == expected


def test_daemon_and_help_abbreviate_too() -> None:
    assert isinstance(parse(["dae"])[1], RunDaemon)
    assert help_title("h cap").startswith(TITLES["capture"])
    assert help_title("help ver").startswith(TITLES["version"])


def test_every_prefix_of_every_command_is_unique_but_l() -> None:
    # `l` is both link and lower; it means link, as in ip (the first in the table).
    for name in COMMANDS:
        for end in range(1, len(name) + 1):
            prefix = name[:end]
            if prefix == "l":
                assert prefix_of(prefix, list(COMMANDS)) == ["link", "lower"]
                continue
            assert prefix_of(prefix, list(COMMANDS)) == [name]


def test_l_is_link_and_lo_is_lower() -> None:
    assert parse(["l"])[1] == Command("link.show", {}, "link show")
    assert parse(["lo"])[1] == Command("lower.show", {}, "lower show")
    assert parse(["low", "sh", "eth0"])[1] == Command(
        "lower.show", {"name": "eth0"}, "lower show eth0"
    )
    assert parse(["lower", "show", "dev", "eth0"])[1] == Command(
        "lower.show", {"name": "eth0"}, "lower show eth0"
    )
    assert help_title("help lo").startswith("pymacvtap lower show")
    assert help_title("lower --help").startswith("pymacvtap lower show")


def test_lower_show_refuses_extra_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert usage_error("lower show eth0 eth1", capsys).strip() == (
        'pymacvtap: lower show: "eth1": unexpected word after LOWER eth0; '
        "see `pymacvtap lower --help`"
    )
    assert usage_error("lower frob", capsys).strip() == (
        'pymacvtap: lower: unknown subcommand "frob" (show); see `pymacvtap lower --help`'
    )


def test_an_ambiguous_prefix_is_no_command() -> None:
    assert prefix_of("l", ["link", "lower"]) == ["link", "lower"]
    assert prefix_of("link", ["link", "linkage"]) == ["link"]
    assert prefix_of("", ["link"]) == []


def test_the_help_documents_abbreviations() -> None:
    top = fill(HELP_TOP)
    assert "unique prefix" in top and "`cap`" in top


def test_a_misspelt_command_gets_a_suggestion_from_the_whole_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert 'unknown command "captrue" (did you mean capture?)' in usage_error("captrue", capsys)
    assert 'unknown command "exce" (did you mean exec?)' in usage_error("exce", capsys)


# --- 3. "no command given" names every command of the table


def test_no_command_given_names_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error("", capsys)
    assert err == (
        "pymacvtap: no command given (link, lower, monitor, exec, capture, version, daemon or "
        "help); see `pymacvtap --help`\n"
    )
    for name in COMMANDS:
        assert name in err
        assert re.search(rf"^    {name}\s", HELP_TOP, re.M), name


# --- 4. a global option after the command: refused, with the usage that would work


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "link show --socket /p",
            'link show: "--socket /p": global options go before the command'
            " (pymacvtap --socket /p link show ...)",
        ),
        (
            "link show vm0 --socket /p",
            'link show: "--socket /p": global options go before the command'
            " (pymacvtap --socket /p link show ...)",
        ),
        (
            "link show --socket",
            'link show: "--socket": global options go before the command'
            " (pymacvtap --socket PATH link show ...)",
        ),
        (
            "link show --socket=/p",
            'link show: "--socket=/p": global options go before the command'
            " (pymacvtap --socket=/p link show ...)",
        ),
        (
            "link show -js",
            'link show: "-js": global options go before the command (pymacvtap -js link show ...)',
        ),
        (
            "link del vm0 --socket /p",
            'link del vm0: "--socket /p": global options go before the command'
            " (pymacvtap --socket /p link del vm0 ...)",
        ),
        (
            "link set vm0 macaddr add -j",
            'link set vm0: "-j": global options go before the command'
            " (pymacvtap -j link set vm0 ...)",
        ),
        (
            "version --socket /p",
            'version: "--socket /p": global options go before the command'
            " (pymacvtap --socket /p version ...)",
        ),
        (
            "monitor -j",
            'monitor: "-j": global options go before the command (pymacvtap -j monitor ...)',
        ),
        (
            "capture vm0 --socket /p",
            'capture vm0: "--socket /p": global options go before the command'
            " (pymacvtap --socket /p capture vm0 ...)",
        ),
        (
            "capture --socket /p vm0",
            'capture: "--socket /p": global options go before the command'
            " (pymacvtap --socket /p capture ...)",
        ),
        (
            "exec vm0 --socket /p -- true",
            'exec vm0: "--socket /p": global options go before the command'
            " (pymacvtap --socket /p exec vm0 ...)",
        ),
        ("exec vm0 -x -- true", 'exec vm0: "-x": unknown option; see `pymacvtap exec --help`'),
        (
            "exec --socket /p vm0 -- true",
            'exec: "--socket /p": global options go before the command'
            " (pymacvtap --socket /p exec ...)",
        ),
    ],
)
def test_a_misplaced_global_option_gets_the_usage_that_works(
    line: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert usage_error(line, capsys) == f"pymacvtap: {message}\n"


def test_a_socket_path_with_spaces_is_quoted_in_the_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["link", "show", "--socket", "/my dir/p"]) == 2
    assert "(pymacvtap --socket '/my dir/p' link show ...)" in capsys.readouterr().err


def test_options_before_the_command_still_work() -> None:
    opts, parsed = parse(["--socket", "/p", "-js", "link", "show"])
    assert (opts.socket, opts.json, opts.stats) == ("/p", True, True)
    assert isinstance(parsed, Command)


# --- 5. the -j help lists the schema's fields


def _schema() -> dict[str, Any]:
    path = resources.files("pymacvtap") / "schemas" / "link-show.schema.json"
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def _field_names(node: Any, defs: dict[str, Any]) -> set[str]:
    """Every property name the schema defines for an endpoint, nested ones included."""
    names: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            names |= _field_names(defs[ref.rsplit("/", 1)[1]], defs)
        for key, value in node.items():
            if key == "properties":
                names |= set(value)
            if key not in ("$ref", "allOf"):
                names |= _field_names(value, defs)
    elif isinstance(node, list):
        for item in node:
            names |= _field_names(item, defs)
    return names


def _json_paragraph() -> str:
    text = fill(HELP_SHOW)
    m = re.search(r"^    -j  .*?(?=^    -p )", text, re.M | re.S)
    assert m, text
    return m.group(0)


def test_the_j_help_lists_every_field_of_the_schema() -> None:
    schema = _schema()
    fields = _field_names(schema["$defs"]["endpoint"], schema["$defs"])
    assert {"netdev", "bcqueuelen", "lower_stats", "macaddrs", "queue_stats"} <= fields
    words = set(re.findall(r"[a-z][a-z0-9_]*[a-z0-9]", _json_paragraph()))
    assert fields - words == set()


def test_the_j_help_names_no_field_the_schema_lacks() -> None:
    schema = _schema()
    fields = _field_names(schema["$defs"]["endpoint"], schema["$defs"])
    prose = {"print", "a", "list", "of", "objects", "with", "also", "in", "mode", "source",
             "or", "and", "count", "schema", "pymacvtap", "schemas", "show", "json"}  # fmt: skip
    listed = set(re.findall(r"\b[a-z][a-z0-9_]*[a-z0-9]\b", _json_paragraph()))
    assert listed - fields - prose == set()


def test_the_help_texts_stay_within_100_columns() -> None:
    for name in COMMANDS:
        text = parse([name, "--help"])[1]
        assert isinstance(text, Help)
        assert max(len(line) for line in text.text.splitlines()) <= 100, name
    assert max(len(line) for line in fill(HELP_SHOW).splitlines()) <= 92


# --- Ctrl-C ends monitor and capture normally, however they are spelt


@pytest.mark.parametrize(("line", "status"), [("cap vm0", 0), ("mon", 0), ("link show", 130)])
def test_ctrl_c_status(line: str, status: int, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(argv: Any, out: Any = None) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr("pymacvtap.cli.entry.run", interrupted)
    assert cli.main(line.split()) == status
