"""Words → (options, a parsed command): the top of the grammar (SPEC 4).

Global options, then the command, looked up in :data:`COMMANDS`; `link` is handed to
:mod:`pymacvtap.cli.link`.  Plain functions from words to data, so the tests check every
form without a daemon.  A wrong word raises :class:`~pymacvtap.cli.errors.UsageError`
naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Sequence

from pymacvtap.cli.errors import suggest, usage
from pymacvtap.cli.help import (
    HELP_CAPTURE,
    HELP_DAEMON,
    HELP_EXEC,
    HELP_LINK,
    HELP_LOWER,
    HELP_MONITOR,
    HELP_TOP,
    HELP_VERSION,
    fill,
)
from pymacvtap.cli.link import link_help, parse_link
from pymacvtap.cli.lower import parse_lower
from pymacvtap.cli.parsed import (
    Capture,
    Command,
    Exec,
    Help,
    Options,
    Parsed,
    RunDaemon,
    ShowVersion,
)
from pymacvtap.cli.words import (
    HELP_WORDS,
    flag_names,
    global_misplaced,
    integer,
    prefix_of,
    refuse_global,
    wants_help,
)


def parse(argv: Sequence[str]) -> tuple[Options, Parsed]:
    """Words → (options, what to do).  Raises UsageError naming the bad word."""
    opts = Options()
    words = list(argv)
    while words and words[0].startswith("-") and words[0] != "-":
        word = words.pop(0)
        if word in HELP_WORDS:
            return opts, Help(fill(HELP_TOP))
        if word in ("-V", "--version", "-Version"):
            return opts, ShowVersion(ask_daemon=False)
        if word == "--socket" or word.startswith("--socket="):
            if "=" in word:
                opts.socket = word.split("=", 1)[1]
            elif words:
                opts.socket = words.pop(0)
            else:
                usage("", '"--socket" needs a PATH', "")
            if not opts.socket:
                usage("", '"--socket" needs a PATH', "")
            continue
        names = flag_names(word)
        if names is None:
            usage(
                "",
                f'option "{word}": unknown (global options: -j, -p, -s, -d, --socket PATH, '
                "-V, --help)",
            )
        for name in names:
            _set_flag(opts, name)
    if not words:
        usage("", f"no command given ({_or(list(COMMANDS))})", "")
    obj, rest = words[0], words[1:]
    command = COMMANDS[_command(obj)]
    # The same help words after every command, whatever else it reads (`exec help`, `cap -h`).
    if rest and (rest[0] == "help" or rest[0] in HELP_WORDS):
        return opts, Help(fill(command.help))
    return opts, command.parse(rest, opts)


def _command(word: str) -> str:
    """The command ``word`` names or uniquely abbreviates (``cap`` → capture).

    One letter shared by several commands means the first in the table, as in ``ip``:
    ``l`` is link (not lower).  A longer ambiguous prefix is refused.
    """
    found = prefix_of(word, list(COMMANDS))
    if len(found) == 1 or (found and len(word) == 1):
        return found[0]
    if found:
        usage("", f'command "{word}" is ambiguous ({_or(found)})', "")
    usage("", f'unknown command "{word}"{suggest(word, list(COMMANDS))}', "")


def _or(words: list[str]) -> str:
    """``a, b or c``."""
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else "".join(words)


def _parse_version(words: list[str], _opts: Options) -> Parsed:
    if wants_help(words):
        return Help(HELP_VERSION)
    if words:
        global_misplaced("version", words, "version")
        usage("version", f'"{words[0]}": unexpected word', "version")
    return ShowVersion(ask_daemon=True)


def _parse_exec(words: list[str], _opts: Options) -> Parsed:
    if not words:
        usage("exec", "NAME is missing", "exec")
    refuse_global("exec", words)
    name, rest = words[0], words[1:]
    queues: int | None = None
    if rest and rest[0] == "queues":
        if len(rest) < 2:
            usage(f"exec {name}", '"queues" needs a number', "exec")
        queues = integer(f"exec {name}", "queues", rest[1], "exec")
        if not 1 <= queues <= 256:
            usage(f"exec {name}", f"queues {queues}: must be 1..256", "exec")
        rest = rest[2:]
    if rest and rest[0] in HELP_WORDS:
        return Help(HELP_EXEC)
    if rest and rest[0] != "--":
        # A COMMAND does not begin with "-": this is an option, misplaced or unknown.
        global_misplaced(f"exec {name}", rest, "exec")
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest:
        usage(f"exec {name}", "COMMAND is missing (pymacvtap exec NAME -- COMMAND ...)", "exec")
    return Exec(name, queues, rest)


def _parse_capture(words: list[str], _opts: Options) -> Parsed:
    if not words:
        usage("capture", "NAME is missing", "capture")
    refuse_global("capture", words)
    name, rest = words[0], words[1:]
    write: str | None = None
    count: int | None = None
    where = f"capture {name}"
    while rest:
        word = rest.pop(0)
        if word in ("-w", "-c") and not rest:
            usage(where, f'"{word}" needs a value', "capture")
        if word == "-w":
            write = rest.pop(0)
        elif word == "-c":
            count = integer(where, "-c", rest.pop(0), "capture")
            if count < 1:
                usage(where, f"-c {count}: must be at least 1", "capture")
        elif word in HELP_WORDS:
            return Help(HELP_CAPTURE)
        else:
            refuse_global(where, [word, *rest])
            usage(where, f'"{word}": unexpected word (-w FILE, -c COUNT)', "capture")
    return Capture(name, write, count)


def _set_flag(opts: Options, flag: str) -> None:
    if flag != "details":
        setattr(opts, flag, True)


def _parse_help(words: list[str], _opts: Options) -> Help:
    if not words:
        return Help(fill(HELP_TOP))
    found = prefix_of(words[0], list(COMMANDS))
    if not found or (len(found) > 1 and len(words[0]) > 1):
        usage("help", f'"{words[0]}": no such command')
    if found[0] == "link" and len(words) > 1:
        return link_help(words[1]) or Help(HELP_LINK)
    return Help(fill(COMMANDS[found[0]].help))


def _parse_monitor(words: list[str], _opts: Options) -> Parsed:
    if wants_help(words):
        return Help(HELP_MONITOR)
    for i, word in enumerate(words):
        if word not in ("link", "all"):
            global_misplaced("monitor", words[i:], "monitor")
            usage("monitor", f'"{word}": unexpected word', "monitor")
    return Command("monitor", {}, "monitor")


_DAEMON_OPTIONS = {
    "--socket": "socket",
    "--state-dir": "state_dir",
    "--admin-group": "admin_group",
    "--metrics": "metrics",
    "--announce-rounds": "announce_rounds",
    "--datapath": "datapath",
}
DATAPATHS = ("auto", "ebpf", "python")


def _parse_daemon(words: list[str], opts: Options) -> Parsed:
    if wants_help(words):
        return Help(fill(HELP_DAEMON))
    values: dict[str, str | None] = dict.fromkeys(_DAEMON_OPTIONS.values())
    i = 0
    while i < len(words):
        word = words[i]
        opt, eq, inline = word.partition("=")
        key = _DAEMON_OPTIONS.get(opt)
        if key is None:
            choices = list(_DAEMON_OPTIONS)
            usage("daemon", f'"{word}": unknown option{suggest(opt, choices)}', "daemon")
        if eq:
            value = inline
            i += 1
        elif i + 1 < len(words):
            value = words[i + 1]
            i += 2
        else:
            usage("daemon", f'"{opt}" needs a value', "daemon")
        if not value:
            usage("daemon", f'"{opt}" needs a value', "daemon")
        values[key] = value
    metrics = values["metrics"]
    if metrics is not None:
        host, colon, port = metrics.rpartition(":")
        if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
            usage("daemon", f'--metrics "{metrics}": expected ADDR:PORT', "daemon")
        del host
    rounds = values["announce_rounds"]
    if rounds is not None and not (rounds.isdigit() and int(rounds) <= 100):
        usage("daemon", f'--announce-rounds "{rounds}": expected 0..100', "daemon")
    datapath = values["datapath"]
    if datapath is None:
        values["datapath"] = "auto"
    elif datapath not in DATAPATHS:
        usage(
            "daemon",
            f'--datapath "{datapath}": expected one of {", ".join(DATAPATHS)}'
            f"{suggest(datapath, list(DATAPATHS))}",
            "daemon",
        )
    if values["socket"] is None:
        values["socket"] = opts.socket
    return RunDaemon(argparse.Namespace(**values))


@dataclasses.dataclass(frozen=True)
class CommandWord:
    """One command: how the words after it are read, and its help."""

    parse: Callable[[list[str], Options], Parsed]
    help: str


# Every command, once: the parser, the "no command given" list, the suggestions for a
# misspelt command and `help COMMAND` all read this table, so none of them can forget one.
COMMANDS: dict[str, CommandWord] = {
    "link": CommandWord(lambda words, _opts: parse_link(words), HELP_LINK),
    # After link: `l` stays link (see _command).
    "lower": CommandWord(lambda words, _opts: parse_lower(words), HELP_LOWER),
    "monitor": CommandWord(_parse_monitor, HELP_MONITOR),
    "exec": CommandWord(_parse_exec, HELP_EXEC),
    "capture": CommandWord(_parse_capture, HELP_CAPTURE),
    "version": CommandWord(_parse_version, HELP_VERSION),
    "daemon": CommandWord(_parse_daemon, HELP_DAEMON),
    "help": CommandWord(_parse_help, HELP_TOP),
}
