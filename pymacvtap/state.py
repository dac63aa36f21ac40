"""The saved configuration: one JSON file, replaced atomically, with the last good copy kept.

Save: write ``state.json.tmp``, fsync it, move the current ``state.json`` to
``state.json.bak``, rename the new file into place, fsync the directory.  A
crash at any point leaves either the new file or the previous one readable,
and a corrupt ``state.json`` (truncated by a full disk, edited by hand) is
reported while the ``.bak`` copy is loaded instead.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from typing import Any

from pymacvtap.config import ConfigError, EndpointConfig

STATE_VERSION = 1
STATE_FILE = "state.json"


class StateError(Exception):
    """The state could not be saved; the previous file is intact."""


class StateStore:
    def __init__(self, directory: str, log: Callable[[str], None] = print) -> None:
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE)
        self.backup = self.path + ".bak"
        self._log = log

    def load(self) -> list[EndpointConfig]:
        """The saved endpoints; a corrupt file is reported and the last good copy used."""
        for path, label in ((self.path, "state"), (self.backup, "last good state")):
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except FileNotFoundError:
                continue
            try:
                # Invalid UTF-8 (UnicodeDecodeError) is corruption too, not a crash.
                configs = _decode(raw.decode("utf-8"))
            except (ValueError, ConfigError) as exc:
                self._log(f"state: {path} is corrupt ({exc}); keeping it and trying the next copy")
                self._quarantine(path)
                continue
            if label != "state":
                self._log(f"state: restored the {label} from {path}")
            return configs
        return []

    def save(self, configs: list[EndpointConfig]) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        # One compact line per endpoint: readable and diffable, and about five
        # times cheaper than an indented dump (this runs on every change).
        lines = ",\n".join(json.dumps(c.to_dict(), separators=(",", ":")) for c in configs)
        data = f'{{"version": {STATE_VERSION}, "endpoints": [\n{lines}\n]}}\n'.encode()
        tmp = self.path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if os.path.exists(self.path):
                os.replace(self.path, self.backup)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise StateError(f"cannot save state in {self.directory}: {exc.strerror}") from exc

    def _quarantine(self, path: str) -> None:
        """Keep a corrupt file for the operator, out of the way of the next save."""
        with contextlib.suppress(OSError):
            os.replace(path, path + ".corrupt")


def _decode(raw: str) -> list[EndpointConfig]:
    doc: Any = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        raise ValueError(f"not a version {STATE_VERSION} state file")
    endpoints = doc.get("endpoints")
    if not isinstance(endpoints, list):
        raise ValueError("no endpoint list")
    return [EndpointConfig.from_dict(item) for item in endpoints]
