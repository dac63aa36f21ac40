"""The ``pymacvtap`` entry point: parse, hand the command to its runner, map errors to exit status.

Exit status: 0 success, 1 the request failed (one line on stderr:
``pymacvtap: link add vm0: <cause>``), 2 the command line is wrong (one line
naming the bad word).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TextIO

from pymacvtap.cli.capture import run_capture
from pymacvtap.cli.commands import run_command, run_daemon, run_exec, version
from pymacvtap.cli.errors import PROG, Failure, UsageError
from pymacvtap.cli.parsed import Capture, Command, Exec, Help, RunDaemon, ShowVersion
from pymacvtap.cli.parser import parse


def run(argv: Sequence[str], out: TextIO | None = None) -> int:
    """Parse and execute; errors are raised (UsageError → 2, Failure → 1)."""
    out = out or sys.stdout
    opts, parsed = parse(argv)
    if isinstance(parsed, Help):
        out.write(parsed.text)
        return 0
    if isinstance(parsed, ShowVersion):
        return version(opts, parsed.ask_daemon, out)
    if isinstance(parsed, RunDaemon):
        return run_daemon(parsed)
    if isinstance(parsed, Exec):
        return run_exec(opts, parsed)
    if isinstance(parsed, Capture):
        return run_capture(opts, parsed, out)
    return run_command(opts, parsed, out)


def main(argv: Sequence[str] | None = None) -> int:
    """The ``pymacvtap`` entry point: exit status 0, 1 (failed) or 2 (usage)."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    except Failure as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0 if _is_monitor(args) else 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python's exit flush quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 0


def _is_monitor(args: Sequence[str]) -> bool:
    """monitor and capture run until interrupted: Ctrl-C is their normal end."""
    # Parsed again rather than looked at word by word, so that every spelling the
    # parser accepts (`mon`, `cap`, `--socket /monitor link show`) is judged as it was run.
    try:
        _opts, parsed = parse(args)
    except (UsageError, Failure):
        return False
    return isinstance(parsed, Capture) or (isinstance(parsed, Command) and parsed.verb == "monitor")
