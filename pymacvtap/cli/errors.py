"""The command line's two ways to fail, and the one-line usage message that names the bad word.

A :class:`UsageError` (exit 2) says the command line is wrong; a :class:`Failure`
(exit 1) says the request failed.  Either becomes one line on stderr prefixed ``pymacvtap: ``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import NoReturn

PROG = "pymacvtap"


class UsageError(Exception):
    """A wrong command line: exit 2."""


class Failure(Exception):
    """A failed request: exit 1."""


def usage(where: str, message: str, help_cmd: str | None = None) -> NoReturn:
    """Raise the usage error ``where: message; see `pymacvtap HELP_CMD --help```."""
    text = f"{where}: {message}" if where else message
    if help_cmd is not None:
        text += f"; see `{' '.join([PROG, *help_cmd.split(), '--help'])}`"
    raise UsageError(text)


def suggest(word: str, choices: Sequence[str]) -> str:
    """`` (did you mean CHOICE?)`` for a near miss, else nothing."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
