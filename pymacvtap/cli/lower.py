"""Parsing `lower show [[dev] LOWER]`: the lowers in use and their own counters."""

from __future__ import annotations

from typing import Any

from pymacvtap.cli.errors import suggest, usage
from pymacvtap.cli.help import HELP_LOWER
from pymacvtap.cli.parsed import Command, Help, Parsed
from pymacvtap.cli.words import HELP_WORDS, global_misplaced, match, take_name, wants_help

_LOWER_SUBCOMMANDS = ("show", "list", "lst", "ls", "help")


def parse_lower(words: list[str]) -> Parsed:
    """The words after ``lower``; none means ``lower show``, as ``link`` alone is link show."""
    if not words:
        return _parse_show([])
    sub = match(words[0], _LOWER_SUBCOMMANDS)
    if sub is None:
        if words[0] in HELP_WORDS:
            return Help(HELP_LOWER)
        usage(
            "lower",
            f'unknown subcommand "{words[0]}"{suggest(words[0], ("show",))} (show)',
            "lower",
        )
    if sub == "help" or wants_help(words[1:]):
        return Help(HELP_LOWER)
    return _parse_show(words[1:])


def _parse_show(words: list[str]) -> Command:
    name, rest = take_name("lower show", words, "lower")
    if rest:
        global_misplaced("lower show", rest, "lower")
        usage("lower show", f'"{rest[0]}": unexpected word after LOWER {name}', "lower")
    args: dict[str, Any] = {"name": name} if name is not None else {}
    return Command("lower.show", args, f"lower show {name}" if name else "lower show")
