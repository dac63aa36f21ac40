"""``pymacvtap``: the iproute2-style command line (SPEC 4), as a package of parts.

- :mod:`~pymacvtap.cli.parser` and :mod:`~pymacvtap.cli.link`: words → a parsed command
  (:mod:`~pymacvtap.cli.parsed`), with the word readers in :mod:`~pymacvtap.cli.words`;
- :mod:`~pymacvtap.cli.help`: the help texts, with the ``-j`` fields written from the JSON
  schema by :mod:`~pymacvtap.cli.fields`;
- :mod:`~pymacvtap.cli.output`: text and ``-j`` output;
- :mod:`~pymacvtap.cli.commands`: running a command over the control client;
- :mod:`~pymacvtap.cli.capture`: ``capture`` and its pcap writer;
- :mod:`~pymacvtap.cli.errors`: usage errors (exit 2) and failures (exit 1);
- :mod:`~pymacvtap.cli.entry`: :func:`main`, the ``pymacvtap`` entry point.
"""

from __future__ import annotations

from pymacvtap.cli.entry import main, run
from pymacvtap.cli.errors import Failure, UsageError
from pymacvtap.cli.output import format_event, format_link
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
from pymacvtap.cli.parser import parse

__all__ = [
    "Capture",
    "Command",
    "Exec",
    "Failure",
    "Help",
    "Options",
    "Parsed",
    "RunDaemon",
    "ShowVersion",
    "UsageError",
    "format_event",
    "format_link",
    "main",
    "parse",
    "run",
]
