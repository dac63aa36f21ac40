"""Words → (options, a parsed command): the top of the grammar (SPEC 4).

Global options, then the command; `link` is handed to :mod:`pymacvtap.cli.link`.  Plain
functions from words to data, so the tests check every form without a daemon.  A wrong
word raises :class:`~pymacvtap.cli.errors.UsageError` naming it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pymacvtap.cli.errors import suggest, usage
from pymacvtap.cli.help import (
    HELP_CAPTURE,
    HELP_DAEMON,
    HELP_EXEC,
    HELP_LINK,
    HELP_MONITOR,
    HELP_TOP,
    fill,
)
from pymacvtap.cli.link import link_help, parse_link
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
    GLOBAL_FLAGS,
    HELP_WORDS,
    global_misplaced,
    integer,
    match,
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
        flag = GLOBAL_FLAGS.get(word)
        if flag is None and len(word) > 2 and word[1] != "-":
            # clustered short flags: -js, -sj
            names = [GLOBAL_FLAGS.get("-" + c) for c in word[1:]]
            if all(names):
                for name in names:
                    _set_flag(opts, str(name))
                continue
        if flag is None:
            usage(
                "",
                f'option "{word}": unknown (global options: -j, -p, -s, -d, --socket PATH, '
                "-V, --help)",
            )
        _set_flag(opts, flag)
    if not words:
        usage("", "no command given (link, monitor, version or daemon)", "")
    obj, rest = words[0], words[1:]
    if obj == "daemon":
        return opts, _parse_daemon(rest, opts)
    name = match(obj, ("link", "monitor", "help", "version"))
    if name == "link":
        return opts, parse_link(rest)
    if name == "monitor":
        return opts, _parse_monitor(rest)
    if name == "version":
        if rest:
            usage("version", f'"{rest[0]}": unexpected word')
        return opts, ShowVersion(ask_daemon=True)
    if name == "help":
        return opts, _help_for(rest)
    if obj == "exec":
        return opts, _parse_exec(rest)
    if obj == "capture":
        return opts, _parse_capture(rest)
    usage(
        "", f'unknown command "{obj}"{suggest(obj, ("link", "monitor", "daemon", "version"))}', ""
    )


def _parse_exec(words: list[str]) -> Parsed:
    if not words or words[0] in HELP_WORDS:
        if words:
            return Help(HELP_EXEC)
        usage("exec", "NAME is missing", "exec")
    name, rest = words[0], words[1:]
    queues: int | None = None
    if rest and rest[0] == "queues":
        if len(rest) < 2:
            usage(f"exec {name}", '"queues" needs a number', "exec")
        queues = integer(f"exec {name}", "queues", rest[1], "exec")
        if not 1 <= queues <= 256:
            usage(f"exec {name}", f"queues {queues}: must be 1..256", "exec")
        rest = rest[2:]
    if rest and rest[0] == "--":
        rest = rest[1:]
    if not rest:
        usage(f"exec {name}", "COMMAND is missing (pymacvtap exec NAME -- COMMAND ...)", "exec")
    return Exec(name, queues, rest)


def _parse_capture(words: list[str]) -> Parsed:
    if not words or words[0] in HELP_WORDS:
        if words:
            return Help(HELP_CAPTURE)
        usage("capture", "NAME is missing", "capture")
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
            usage(where, f'"{word}": unexpected word (-w FILE, -c COUNT)', "capture")
    return Capture(name, write, count)


def _set_flag(opts: Options, flag: str) -> None:
    if flag != "details":
        setattr(opts, flag, True)


def _help_for(words: list[str]) -> Help:
    if not words:
        return Help(fill(HELP_TOP))
    if words[0] == "daemon":
        return Help(fill(HELP_DAEMON))
    if words[0] == "exec":
        return Help(HELP_EXEC)
    if words[0] == "capture":
        return Help(HELP_CAPTURE)
    if match(words[0], ("monitor",)):
        return Help(HELP_MONITOR)
    if match(words[0], ("link",)):
        if len(words) > 1:
            return link_help(words[1]) or Help(HELP_LINK)
        return Help(HELP_LINK)
    usage("help", f'"{words[0]}": no such command')


def _parse_monitor(words: list[str]) -> Parsed:
    if wants_help(words):
        return Help(HELP_MONITOR)
    for word in words:
        if word not in ("link", "all"):
            global_misplaced("monitor", word, "monitor")
            usage("monitor", f'"{word}": unexpected word', "monitor")
    return Command("monitor", {}, "monitor")


_DAEMON_OPTIONS = {
    "--socket": "socket",
    "--state-dir": "state_dir",
    "--admin-group": "admin_group",
    "--metrics": "metrics",
}


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
    if values["socket"] is None:
        values["socket"] = opts.socket
    return RunDaemon(argparse.Namespace(**values))
