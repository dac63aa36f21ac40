"""The saved configuration: a snapshot plus a journal of changes, so a change costs O(1).

Files in the state dir:

``state.json``
    The snapshot: ``{"version": 1, "id": ID, "endpoints": [...]}`` with one compact
    JSON object per endpoint per line (:meth:`EndpointConfig.to_dict`).  ``ID`` is
    random, new with every snapshot.
``state.journal``
    The changes since that snapshot, one JSON object per line, each appended and
    fdatasync'd before the change is reported done.  The first line says which
    snapshot the journal follows, ``{"follows": ID}``; then ``{"put": ENDPOINT}`` (an
    endpoint created or changed: its whole configuration) or ``{"del": NAME}``.
``state.json.bak``, ``state.journal.bak``
    The previous snapshot and the journal that followed it: the last good copy.

Load: the snapshot, then the journal that follows it replayed over it (a put replaces
the endpoint of that name or adds it at the end, a del removes it).  A corrupt
``state.json`` is reported, kept as ``state.json.corrupt``, and the ``.bak`` snapshot
is loaded with the journal that follows it.  An incomplete last line (a crash or a
full disk in the middle of an append) is ignored with a log line; a corrupt line
elsewhere is reported and skipped.

Compaction writes the whole list as a new snapshot: write ``state.json.tmp`` and fsync
it, move ``state.json`` to ``.bak`` and ``state.journal`` to ``state.journal.bak``,
rename the new file into place, fsync the directory.  A journal is only replayed over
the snapshot its first line names, so a crash at any point leaves files that load as
the state before or after the compaction.  It runs on restore, on shutdown, after a
failed save, and when the journal grows larger than the snapshot (and than
``JOURNAL_MIN_COMPACT_BYTES``): O(endpoints) once per about as many changes, so O(1)
per change on average.

A save that fails (disk full) raises :class:`StateError` and leaves the files as they
were (a partial append is cut off again); the store keeps the change in memory, and
the next save writes a whole snapshot, so nothing is lost once there is space again.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from pymacvtap.daemon.config import ConfigError, EndpointConfig

STATE_VERSION = 1
STATE_FILE = "state.json"
JOURNAL_FILE = "state.journal"
# Compact once the journal is larger than the snapshot and at least this large: a
# restart replays at most about this much, and a small state is not rewritten often.
JOURNAL_MIN_COMPACT_BYTES = 256 * 1024

_COMPACT = (",", ":")


class StateError(Exception):
    """The state could not be saved; the previous files are intact."""


class StateStore:
    """The endpoints' configuration on disk; see the module docstring for the files."""

    def __init__(self, directory: str, log: Callable[[str], None] = print) -> None:
        self.directory = directory
        self.path = os.path.join(directory, STATE_FILE)
        self.backup = self.path + ".bak"
        self.journal = os.path.join(directory, JOURNAL_FILE)
        self.journal_backup = self.journal + ".bak"
        self._log = log
        # What the files hold, name -> the endpoint's compact JSON, in order: a
        # compaction writes it without asking the daemon.  None until loaded.
        self._saved: dict[str, str] | None = None
        self._snapshot_id: str | None = None
        self._snapshot_bytes = 0
        self._journal_bytes = 0
        # Appending is only safe to a journal this process started after its own
        # snapshot (not to one left by a crash); also set after a failed save.
        self._compaction_due = True

    # -- reading -----------------------------------------------------------------------

    def load(self) -> list[EndpointConfig]:
        """The saved endpoints; a corrupt snapshot is reported and the last good copy used."""
        for path, label in ((self.path, "state"), (self.backup, "last good state")):
            snapshot = self._read_snapshot(path)
            if snapshot is None:
                continue
            snapshot_id, endpoints = snapshot
            # Whichever journal follows this snapshot: usually state.journal for
            # state.json and state.journal.bak for the .bak, but a crash during a
            # compaction can leave either next to either.
            for journal in (self.journal_backup, self.journal):
                self._replay(journal, snapshot_id, endpoints)
            if label != "state":
                self._log(f"state: restored the {label} from {path}")
            return self._remember(endpoints)
        return self._remember({})

    def _read_snapshot(self, path: str) -> tuple[str | None, dict[str, dict[str, Any]]] | None:
        raw = _read_if_there(path)
        if raw is None:
            return None
        try:
            # Invalid UTF-8 (UnicodeDecodeError) is corruption too, not a crash.
            snapshot_id, configs = _decode_snapshot(raw.decode("utf-8"))
        except (ValueError, ConfigError) as exc:
            self._log(f"state: {path} is corrupt ({exc}); keeping it and trying the next copy")
            self._quarantine(path)
            return None
        return snapshot_id, {c["name"]: c for c in configs}

    def _replay(
        self, path: str, snapshot_id: str | None, endpoints: dict[str, dict[str, Any]]
    ) -> None:
        """Apply the journal at ``path`` to ``endpoints`` if it follows ``snapshot_id``."""
        raw = _read_if_there(path)
        if raw is None:
            return
        lines = raw.split(b"\n")
        # The last element is what follows the last newline: empty unless an append
        # was cut short, and such a change was never reported done.
        torn = lines.pop()
        if not lines or _header(lines[0]) != snapshot_id or snapshot_id is None:
            return  # written after another snapshot (or cut short at its first line)
        if torn:
            self._log(f"state: {path}: ignoring an incomplete last line (an interrupted save)")
        for number, line in enumerate(lines[1:], start=2):
            try:
                change = _decode_change(line)
            except (ValueError, ConfigError) as exc:
                self._log(f"state: {path}: line {number} is corrupt ({exc}); skipped")
                continue
            if isinstance(change, str):
                endpoints.pop(change, None)
            else:
                endpoints[change["name"]] = change

    def _remember(self, endpoints: dict[str, dict[str, Any]]) -> list[EndpointConfig]:
        configs = [EndpointConfig.from_dict(data) for data in endpoints.values()]
        self._saved = {c.name: _encode(c) for c in configs}
        return configs

    # -- writing -----------------------------------------------------------------------

    def put(self, cfg: EndpointConfig) -> None:
        """Save one endpoint's configuration (new or changed)."""
        self.update(put=(cfg,))

    def delete(self, name: str) -> None:
        """Forget one endpoint."""
        self.update(delete=(name,))

    def update(self, put: Iterable[EndpointConfig] = (), delete: Iterable[str] = ()) -> None:
        """Save some changes (puts, then deletes): a journal line each, one fdatasync."""
        saved = self._saved
        if saved is None:
            self.load()
            saved = self._saved
            assert saved is not None
        lines: list[str] = []
        for cfg in put:
            text = _encode(cfg)
            saved[cfg.name] = text
            lines.append(f'{{"put":{text}}}\n')
        for name in delete:
            saved.pop(name, None)
            lines.append(json.dumps({"del": name}, separators=_COMPACT) + "\n")
        if not lines:
            return
        data = "".join(lines).encode()
        limit = max(JOURNAL_MIN_COMPACT_BYTES, self._snapshot_bytes)
        if self._compaction_due or self._journal_bytes + len(data) > limit:
            self._write_snapshot()
        else:
            self._append(data)

    def save_all(self, configs: Iterable[EndpointConfig]) -> None:
        """Replace the saved state with ``configs``: a new snapshot, an empty journal."""
        self._saved = {c.name: _encode(c) for c in configs}
        self._write_snapshot()

    def compact(self) -> None:
        """Fold the journal into a new snapshot, if anything was saved since the last one."""
        if self._saved is not None and (self._compaction_due or self._journal_bytes):
            self._write_snapshot()

    def _append(self, data: bytes) -> None:
        # Opened per change: cheap next to the fdatasync, and nothing is held open
        # across a compaction that moves the file away.
        try:
            fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise self._save_failed(exc) from exc
        try:
            start = os.fstat(fd).st_size
            if start == 0:
                data = _header_line(self._snapshot_id) + data
            try:
                _write_all(fd, data)
                os.fdatasync(fd)
                if start == 0:
                    _fsync_directory(self.directory)  # the new file's name must last too
            except OSError as exc:
                # Cut off what part of the line made it (or remove the journal this
                # save created), so the files are as they were; the next save writes
                # a snapshot with this change in it.
                with contextlib.suppress(OSError):
                    if start == 0:
                        os.unlink(self.journal)
                    else:
                        os.ftruncate(fd, start)
                raise self._save_failed(exc) from exc
        finally:
            os.close(fd)
        self._journal_bytes = start + len(data)

    def _write_snapshot(self) -> None:
        saved = self._saved
        assert saved is not None
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        snapshot_id = os.urandom(8).hex()
        body = ",\n".join(saved.values())
        data = (
            f'{{"version": {STATE_VERSION}, "id": "{snapshot_id}", "endpoints": [\n{body}\n]}}\n'
        ).encode()
        tmp = self.path + ".tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if os.path.exists(self.path):
                # The previous snapshot and its journal become the last good copy together.
                os.replace(self.path, self.backup)
                if os.path.exists(self.journal):
                    os.replace(self.journal, self.journal_backup)
                else:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.journal_backup)
            else:
                # No current snapshot (first start, or it was corrupt): the .bak pair
                # stays as it is, and a journal here belongs to no snapshot kept.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.journal)
            os.replace(tmp, self.path)
            _fsync_directory(self.directory)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise self._save_failed(exc) from exc
        self._snapshot_id = snapshot_id
        self._snapshot_bytes = len(data)
        self._journal_bytes = 0
        self._compaction_due = False

    def _save_failed(self, exc: OSError) -> StateError:
        """The error for a save that failed; the next save writes a whole snapshot."""
        self._compaction_due = True
        return StateError(f"cannot save state in {self.directory}: {exc.strerror}")

    def _quarantine(self, path: str) -> None:
        """Keep a corrupt file for the operator, out of the way of the next save."""
        with contextlib.suppress(OSError):
            os.replace(path, path + ".corrupt")


def _encode(cfg: EndpointConfig) -> str:
    # Compact: about five times cheaper than an indented dump, and one line each.
    return json.dumps(cfg.to_dict(), separators=_COMPACT)


def _header_line(snapshot_id: str | None) -> bytes:
    return (json.dumps({"follows": snapshot_id}, separators=_COMPACT) + "\n").encode()


def _header(line: bytes) -> str | None:
    """The snapshot ID a journal's first line names; None when it names none."""
    try:
        doc: Any = json.loads(line)
    except ValueError:
        return None
    follows = doc.get("follows") if isinstance(doc, dict) else None
    return follows if isinstance(follows, str) else None


def _decode_snapshot(raw: str) -> tuple[str | None, list[dict[str, Any]]]:
    doc: Any = json.loads(raw)
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        raise ValueError(f"not a version {STATE_VERSION} state file")
    endpoints = doc.get("endpoints")
    if not isinstance(endpoints, list):
        raise ValueError("no endpoint list")
    snapshot_id = doc.get("id")
    # Validated here, so a bad entry makes the whole file corrupt, as before.
    return (
        snapshot_id if isinstance(snapshot_id, str) else None,
        [EndpointConfig.from_dict(item).to_dict() for item in endpoints],
    )


def _decode_change(line: bytes) -> dict[str, Any] | str:
    """A journal line: the endpoint put (validated), or the name deleted."""
    doc: Any = json.loads(line)
    if isinstance(doc, dict) and len(doc) == 1:
        if "put" in doc:
            return EndpointConfig.from_dict(doc["put"]).to_dict()
        if isinstance(doc.get("del"), str):
            return str(doc["del"])
    raise ValueError("neither a put nor a del")


def _read_if_there(path: str) -> bytes | None:
    """The whole file, or None when there is none."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_directory(directory: str) -> None:
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
