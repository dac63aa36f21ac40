"""Unix sockets for VM frontends: created with the owner, group and mode SPEC 3 asks for."""

from __future__ import annotations

import contextlib
import os
import socket
import stat

SOCKET_DIR_MODE = 0o755
SOCKET_MODE = 0o660  # only the endpoint's owner and group may connect


def bind_unix(path: str, kind: int, owner: int | None, group: int | None) -> socket.socket:
    """Bind a non-blocking AF_UNIX socket at ``path`` owned by ``owner``:``group``, mode 0660.

    A stale socket file is replaced; any other kind of file is refused, so a
    typo in ``path`` cannot delete a user's data.
    """
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=SOCKET_DIR_MODE, exist_ok=True)
        os.chmod(directory, SOCKET_DIR_MODE)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{path} exists and is not a socket")
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        # Bind with a restrictive umask so there is no moment at which the
        # socket is reachable by others, then hand it to its owner.
        old = os.umask(0o177)
        try:
            sock.bind(path)
        finally:
            os.umask(old)
        os.chown(path, owner if owner is not None else 0, group if group is not None else 0)
        os.chmod(path, SOCKET_MODE)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    return sock


def unlink_socket(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode):
            os.unlink(path)
