"""Reading one word at a time, the way iproute2 does: prefixes, enums, numbers, on/off.

The small readers every part of the parser shares; each either returns the value or
raises the usage error that names the word.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from pymacvtap.cli.errors import PROG, suggest, usage

GLOBAL_FLAGS = {
    "-j": "json",
    "--json": "json",
    "-json": "json",
    "-p": "pretty",
    "--pretty": "pretty",
    "-pretty": "pretty",
    "-s": "stats",
    "--stats": "stats",
    "-stats": "stats",
    "-statistics": "stats",
    "-d": "details",
    "--details": "details",
    "-details": "details",
}
HELP_WORDS = ("-h", "--help", "-help")


def match(word: str, choices: Sequence[str]) -> str | None:
    """iproute2's matches(): the first choice that ``word`` is a prefix of."""
    if not word:
        return None
    for choice in choices:
        if choice.startswith(word):
            return choice
    return None


def prefix_of(word: str, choices: Sequence[str]) -> list[str]:
    """The choices ``word`` abbreviates: the one it spells out, else all it is a prefix of.

    Command words are read this way (``cap`` is capture): a prefix counts only when it is
    unique, so that a word that could mean two commands is refused rather than guessed.
    """
    if not word:
        return []
    if word in choices:
        return [word]
    return [choice for choice in choices if choice.startswith(word)]


def wants_help(words: list[str]) -> bool:
    """``help`` first, or ``-h``/``--help`` anywhere."""
    return bool(words) and (words[0] == "help" or any(w in HELP_WORDS for w in words))


def flag_names(word: str) -> list[str] | None:
    """The global flags ``word`` sets (``-j`` → json; the cluster ``-js`` → json, stats)."""
    flag = GLOBAL_FLAGS.get(word)
    if flag is not None:
        return [flag]
    if len(word) > 2 and word[0] == "-" and word[1] != "-":
        names = [GLOBAL_FLAGS.get("-" + c) for c in word[1:]]
        if all(names):
            return [str(name) for name in names]
    return None


def global_option(words: Sequence[str]) -> list[str] | None:
    """The global option at the front of ``words``, with its PATH if it takes one, as typed."""
    word = words[0]
    if word == "--socket":
        return [word, words[1]] if len(words) > 1 else [word]
    if word.startswith("--socket=") or flag_names(word) is not None:
        return [word]
    return None


def refuse_global(where: str, words: Sequence[str]) -> None:
    """A global option at the front of ``words``, after the command: say where it goes.

    Global options are the program's, not a command's, and go before the command only, as
    in `ip -j link show` (iproute2 refuses `ip link show -j` too).  Accepting them after
    the command would make words that are values ambiguous: exec's COMMAND may take `-s`, a
    socket PATH may begin with `-`.  The refusal shows the option as it has to be written,
    its PATH included, so that the corrected command is one edit away.
    """
    option = global_option(words)
    if option is not None:
        typed = " ".join(option)
        usable = option if option != ["--socket"] else ["--socket", "PATH"]
        before = shlex.join([PROG, *usable]) + f" {where} ..."
        usage(where, f'"{typed}": global options go before the command ({before})')


def global_misplaced(where: str, words: Sequence[str], help_cmd: str) -> None:
    """An option at the front of ``words`` where the command takes none: refuse it."""
    refuse_global(where, words)
    if words[0].startswith("-"):
        usage(where, f'"{words[0]}": unknown option', help_cmd)


def take_name(where: str, words: list[str], help_cmd: str) -> tuple[str | None, list[str]]:
    """``[dev] NAME`` at the front of ``words``."""
    if not words:
        return None, []
    if words[0] == "dev":
        if len(words) < 2:
            usage(where, '"dev" needs a NAME', help_cmd)
        return words[1], words[2:]
    global_misplaced(where, words, help_cmd)
    return words[0], words[1:]


def enum(where: str, key: str, value: str, choices: Sequence[str], help_cmd: str) -> str:
    """``value`` if it is one of ``choices``, else a usage error listing them."""
    if value not in choices:
        usage(
            where,
            f'{key} "{value}": expected {_alternatives(choices)}{suggest(value, choices)}',
            help_cmd,
        )
    return value


def _alternatives(choices: Sequence[str]) -> str:
    if len(choices) == 2:
        return f"{choices[0]} or {choices[1]}"
    return "one of " + ", ".join(choices)


def onoff(where: str, key: str, value: str, help_cmd: str) -> bool:
    """``on`` → True, ``off`` → False."""
    return enum(where, key, value, ("on", "off"), help_cmd) == "on"


def integer(where: str, key: str, value: str, help_cmd: str) -> int:
    """A decimal number, or a usage error saying it is not one."""
    try:
        return int(value, 10)
    except ValueError:
        usage(where, f'{key} "{value}": not a number', help_cmd)
