"""What the parser hands to the runner: the global options and one parsed command.

Plain data, no behaviour: the parser builds these from words, the runner acts on them,
and the tests compare them without a daemon.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


@dataclasses.dataclass
class Options:
    """The global options given before the command (``-j``, ``-p``, ``-s``, ``--socket``)."""

    json: bool = False
    pretty: bool = False
    stats: bool = False
    socket: str | None = None


@dataclasses.dataclass
class Command:
    """What to ask the daemon: ``verb`` + ``args``; ``target`` prefixes error messages."""

    verb: str
    args: dict[str, Any]
    target: str


@dataclasses.dataclass
class Help:
    """Print ``text`` and exit 0."""

    text: str


@dataclasses.dataclass
class RunDaemon:
    """The parsed ``daemon`` command: run the daemon in this process with ``args``."""

    args: argparse.Namespace


@dataclasses.dataclass
class ShowVersion:
    """Print this program's version, and the daemon's when ``ask_daemon``."""

    ask_daemon: bool


@dataclasses.dataclass
class Capture:
    """The parsed ``capture`` command: record endpoint ``name``'s frames."""

    name: str
    write: str | None
    count: int | None


@dataclasses.dataclass
class Exec:
    """The parsed ``exec`` command: run ``argv`` with endpoint ``name``'s tap queues."""

    name: str
    queues: int | None
    argv: list[str]


Parsed = Command | Help | RunDaemon | ShowVersion | Exec | Capture
