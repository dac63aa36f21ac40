"""Network namespaces for the lab: unique names, `ip` helpers, entering a namespace.

Every namespace this module creates is named ``<PREFIX><pid>x<random>-<role>`` so that
parallel runs never collide and leftovers of dead runs can be recognised and removed
(:func:`cleanup_leftovers`).  Namespaces created here are also removed at interpreter
exit if the test forgot to (or crashed before) deleting them.

This is test code: it drives ``ip``/``bridge``/``sysctl`` through subprocess.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import re
import secrets
import socket
import subprocess
from collections.abc import Iterator, Sequence
from typing import Any

PREFIX = "pmvt"
NETNS_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)
_created: set[str] = set()


class CommandError(RuntimeError):
    """A lab command failed; the message carries the command and its stderr."""


def run(argv: Sequence[str], *, check: bool = True, stdin: str | None = None) -> str:
    """Run a command, return its stdout; raise :class:`CommandError` on failure."""
    proc = subprocess.run(
        list(argv), input=stdin, capture_output=True, text=True, check=False, timeout=30
    )
    if check and proc.returncode != 0:
        raise CommandError(f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


def ip(netns: str | None, *args: str, check: bool = True) -> str:
    """``ip [-n NETNS] ARGS...``"""
    ns = ["-n", netns] if netns else []
    return run(["ip", *ns, *args], check=check)


def ip_json(netns: str | None, *args: str) -> Any:
    """``ip [-n NETNS] -j ARGS...`` parsed."""
    ns = ["-n", netns] if netns else []
    out = run(["ip", *ns, "-j", *args])
    return json.loads(out) if out.strip() else []


def ip_batch(netns: str | None, lines: Sequence[str]) -> None:
    """Several ``ip`` commands in one process (``ip -batch -``); stops at the first error."""
    if not lines:
        return
    ns = ["-n", netns] if netns else []
    run(["ip", *ns, "-batch", "-"], stdin="\n".join(lines) + "\n")


def bridge(netns: str | None, *args: str, check: bool = True) -> str:
    """``bridge [-n NETNS] ARGS...``"""
    ns = ["-n", netns] if netns else []
    return run(["bridge", *ns, *args], check=check)


def sysctl(netns: str, key: str, value: str) -> None:
    """Set a sysctl inside ``netns`` (``/proc/sys`` is per-namespace for net.*)."""
    path = "/proc/sys/" + key.replace(".", "/")
    with in_netns(netns), open(path, "w") as f:
        f.write(value)


def unique_prefix(base: str = PREFIX) -> str:
    """A run-unique name prefix: ``<base><pid>x<6 hex>-`` (pid lets leftovers be reaped)."""
    return f"{base}{os.getpid()}x{secrets.token_hex(3)}-"


def create_netns(name: str, *, disable_ipv6: bool = True, loopback_up: bool = True) -> str:
    """Create ``name`` (IPv6 disabled before any interface is added: no ND/MLD noise)."""
    run(["ip", "netns", "add", name])
    _created.add(name)
    if disable_ipv6:
        sysctl(name, "net.ipv6.conf.all.disable_ipv6", "1")
        sysctl(name, "net.ipv6.conf.default.disable_ipv6", "1")
    if loopback_up:
        ip(name, "link", "set", "lo", "up")
    return name


def delete_netns(name: str) -> None:
    """Delete a namespace (its interfaces go with it); missing is not an error."""
    run(["ip", "netns", "del", name], check=False)
    _created.discard(name)


def list_netns() -> list[str]:
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def cleanup_leftovers(base: str = PREFIX) -> list[str]:
    """Delete namespaces named by :func:`unique_prefix` whose creating process is gone."""
    removed = []
    pattern = re.compile(rf"^{re.escape(base)}(\d+)x[0-9a-f]+-")
    for name in list_netns():
        m = pattern.match(name)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            delete_netns(name)
            removed.append(name)
    return removed


@atexit.register
def _delete_created() -> None:
    for name in list(_created):
        delete_netns(name)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextlib.contextmanager
def in_netns(name: str | None) -> Iterator[None]:
    """Run the body with this thread in network namespace ``name`` (None: stay put).

    Sockets created in the body stay in ``name`` for their whole life.
    """
    if name is None:
        yield
        return
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(os.path.join(NETNS_DIR, name), os.O_RDONLY)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)


def socket_in(netns: str | None, family: int, type_: int, proto: int = 0) -> socket.socket:
    """A socket created inside ``netns``."""
    with in_netns(netns):
        return socket.socket(family, type_, proto)
