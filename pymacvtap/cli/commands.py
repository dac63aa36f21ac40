"""Command execution over the control client: send a parsed command, print the answer.

Each function takes the global options and one parsed command, talks to the daemon
through :class:`~pymacvtap.control.client.Client`, and turns a refusal or an unreachable
daemon into a :class:`~pymacvtap.cli.errors.Failure` (exit 1) of one line.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import Any, TextIO

from pymacvtap import __version__
from pymacvtap.cli.errors import PROG, Failure
from pymacvtap.cli.output import dump_json, event_json, format_event, format_link, format_lower
from pymacvtap.cli.parsed import Command, Exec, Options, RunDaemon
from pymacvtap.control.client import Client, ClientError, RemoteError
from pymacvtap.control.protocol import with_prefix

REQUEST_TIMEOUT = 120.0  # seconds; link add may create devices in other namespaces


def request(opts: Options, cmd: Command) -> Any:
    """One request, one answer; a refusal says what was asked (``link add vm0: ...``)."""
    try:
        with Client(opts.socket, timeout=REQUEST_TIMEOUT) as client:
            return client.request(cmd.verb, cmd.args)
    except RemoteError as exc:
        raise Failure(with_prefix(cmd.target, exc.message)) from None
    except ClientError as exc:
        raise Failure(str(exc)) from None


def run_command(opts: Options, cmd: Command, out: TextIO) -> int:
    """A `link` verb or `monitor`: ask, then print the answer as text or JSON."""
    if cmd.verb == "monitor":
        return _monitor(opts, cmd, out)
    if cmd.verb in ("link.show", "lower.show"):
        cmd.args["stats"] = opts.stats
    result = request(opts, cmd)
    if cmd.verb in ("link.show", "lower.show"):
        entries = result if isinstance(result, list) else []
        formatter = format_link if cmd.verb == "link.show" else format_lower
        if opts.json:
            print(dump_json(opts, entries), file=out)
        else:
            for entry in entries:
                print(formatter(entry, opts.stats), file=out)
    elif opts.json and result is not None:
        print(dump_json(opts, result), file=out)
    return 0


def _monitor(opts: Options, cmd: Command, out: TextIO) -> int:
    try:
        client = Client(opts.socket)
    except ClientError as exc:
        raise Failure(str(exc)) from None
    try:
        for event in client.monitor():
            line = event_json(event) if opts.json else format_event(event)
            out.write(line + "\n")
            out.flush()
    except RemoteError as exc:
        raise Failure(with_prefix(cmd.target, exc.message)) from None
    except ClientError as exc:
        raise Failure(str(exc)) from None
    finally:
        client.close()
    return 0


def version(opts: Options, ask_daemon: bool, out: TextIO) -> int:
    """This program's version, then the daemon's when asked (`version`, not `-V`)."""
    print(f"{PROG} {__version__}", file=out)
    if ask_daemon:
        result = request(opts, Command("version", {}, "version"))
        if isinstance(result, dict):
            print(f"daemon {result.get('version')} (protocol {result.get('protocol')})", file=out)
    return 0


def run_daemon(parsed: RunDaemon) -> int:
    """Become the daemon: ``pymacvtap.daemon.main(args)`` in this process."""
    # Imported here: the daemon's dependencies are no business of the client commands.
    daemon = importlib.import_module("pymacvtap.daemon")
    run: Callable[[argparse.Namespace], int] = daemon.main
    return run(parsed.args)


def run_exec(opts: Options, cmd: Exec) -> int:
    """Ask for the tap queues, place them at fds 3, 4, ... and exec the command."""
    target = f"exec {cmd.name}"
    args: dict[str, Any] = {"name": cmd.name}
    if cmd.queues is not None:
        args["queues"] = cmd.queues
    try:
        client = Client(opts.socket, timeout=REQUEST_TIMEOUT)
    except ClientError as exc:
        raise Failure(str(exc)) from None
    try:
        _, fds = client.request_fds("attach", args)
    except RemoteError as exc:
        # The daemon speaks of its verb ("attach vm0: ..."); the user typed "exec vm0".
        message = exc.message.removeprefix(f"attach {cmd.name}: ")
        raise Failure(with_prefix(target, message, cmd.name)) from None
    except ClientError as exc:
        raise Failure(str(exc)) from None
    finally:
        client.close()
    # Move the queues to 3, 4, ... (inheritable), whatever numbers they arrived as.
    # After closing the originals the copies are ascending and each is >= its
    # target, so no dup2 below can overwrite a copy still to be moved.
    moved = [os.dup(fd) for fd in fds]
    for fd in fds:
        os.close(fd)
    moved.sort()
    for i, fd in enumerate(moved):
        if fd == 3 + i:
            os.set_inheritable(fd, True)
        else:
            os.dup2(fd, 3 + i, inheritable=True)
            os.close(fd)
    sys.stdout.flush()
    try:
        os.execvp(cmd.argv[0], cmd.argv)
    except OSError as exc:
        raise Failure(f"{target}: {cmd.argv[0]}: {exc.strerror}") from None
