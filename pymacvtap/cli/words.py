"""Reading one word at a time, the way iproute2 does: prefixes, enums, numbers, on/off.

The small readers every part of the parser shares; each either returns the value or
raises the usage error that names the word.
"""

from __future__ import annotations

from collections.abc import Sequence

from pymacvtap.cli.errors import suggest, usage

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


def wants_help(words: list[str]) -> bool:
    """``help`` first, or ``-h``/``--help`` anywhere."""
    return bool(words) and (words[0] == "help" or any(w in HELP_WORDS for w in words))


def global_misplaced(where: str, word: str, help_cmd: str) -> None:
    """An option after the command: say where global options go, or that it is unknown."""
    if word in GLOBAL_FLAGS or word == "--socket":
        usage(
            where,
            f'"{word}": global options go before the command (pymacvtap {word} {where} ...)',
        )
    if word.startswith("-"):
        usage(where, f'"{word}": unknown option', help_cmd)


def take_name(where: str, words: list[str], help_cmd: str) -> tuple[str | None, list[str]]:
    """``[dev] NAME`` at the front of ``words``."""
    if not words:
        return None, []
    if words[0] == "dev":
        if len(words) < 2:
            usage(where, '"dev" needs a NAME', help_cmd)
        return words[1], words[2:]
    global_misplaced(where, words[0], help_cmd)
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
