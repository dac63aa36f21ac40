"""Throwaway unprivileged users for tests of what non-root callers may do."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import subprocess
from collections.abc import Iterator

_counter = itertools.count()


@contextlib.contextmanager
def temporary_user(prefix: str = "pmvt") -> Iterator[pwd.struct_passwd]:
    """A system user with its own group, no home and no shell; removed afterwards."""
    name = f"{prefix}{os.getpid() % 100000}u{next(_counter)}"
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--user-group",
         "--shell", "/usr/sbin/nologin", name],
        check=True,
        capture_output=True,
    )  # fmt: skip
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)
        subprocess.run(["groupdel", name], check=False, capture_output=True)
