"""Network namespaces: naming them and stepping into one for a moment.

Endpoints live in other namespaces (a container's, a CNI sandbox's), but the
daemon itself stays in the namespace of its lowers.  To create a tap or open a
netlink socket *over there*, the daemon moves its one thread into the target
namespace, creates the fd, and moves back: an fd keeps the namespace it was
created in for its whole life, wherever it is used from later.

``setns(2)`` with ``CLONE_NEWNET`` changes the namespace of the calling
*thread* only.  That is safe here because the daemon is single-threaded: no
other thread can observe the temporary switch.  (A multi-threaded caller would
have to confine this to a dedicated thread.)  Python 3.11 has no
``os.setns``, so libc's ``setns`` is called through ctypes.

Paths that depend on the namespace are read through ``/proc/thread-self``,
never ``/proc/self``: the latter names the process (its main thread), which is
the same thread here, but ``thread-self`` stays right if that ever changes.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000
_SELF_NS = "/proc/thread-self/ns/net"

_libc: ctypes.CDLL | None = None


class NetnsNotFound(FileNotFoundError):
    """The named namespace does not exist (no /run/netns entry, or the process is gone)."""


def _setns(fd: int) -> None:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def resolve_netns(ns: str) -> str:
    """The path of namespace ``ns``: a name under /run/netns, or an absolute path.

    Absolute paths (``/proc/PID/ns/net``, a bind mount elsewhere) are taken as
    they are; a bare name must not contain a slash, so ``../x`` cannot escape
    /run/netns.  Raises :class:`NetnsNotFound` with the name in the message.
    """
    if not ns:
        raise ValueError("empty network namespace name")
    if os.path.isabs(ns):
        path = ns
    elif "/" in ns or ns in (".", ".."):
        raise ValueError(f"netns {ns}: not a name under {NETNS_RUN_DIR} nor an absolute path")
    else:
        path = os.path.join(NETNS_RUN_DIR, ns)
    try:
        os.stat(path)
    except FileNotFoundError:
        raise NetnsNotFound(2, f"netns {ns}: no such network namespace", path) from None
    # Other errors (EACCES on another user's /proc/PID) say more than "missing": let them out.
    return path


def netns_exists(ns: str) -> bool:
    """True when ``ns`` names a namespace we can open (a name or a path)."""
    try:
        path = resolve_netns(ns)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except (OSError, ValueError):
        return False
    os.close(fd)
    return True


def same_netns(ns: str | None) -> bool:
    """True when ``ns`` is the namespace the calling thread is in now (None: always).

    Namespaces are identified by the (device, inode) of their nsfs file, which
    is how ``ip netns identify`` compares them too.
    """
    if ns is None:
        return True
    a = os.stat(resolve_netns(ns))
    b = os.stat(_SELF_NS)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextlib.contextmanager
def entered(ns: str | None) -> Iterator[None]:
    """Run the body with the calling thread inside namespace ``ns`` (None: stay put).

    The thread always returns to the namespace it came from, also when the
    body raises.  Nesting works (each level saves and restores its own).  If
    returning fails the process would be stranded in the wrong namespace, so
    that error propagates rather than being swallowed.
    """
    if ns is None:
        yield
        return
    target = os.open(resolve_netns(ns), os.O_RDONLY | os.O_CLOEXEC)
    try:
        home = os.open(_SELF_NS, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
            try:
                yield
            finally:
                _setns(home)
        finally:
            os.close(home)
    finally:
        os.close(target)
