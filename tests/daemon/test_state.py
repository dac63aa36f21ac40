"""The state store (SPEC 5): snapshot + journal, replay, compaction, corruption, disk full."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pymacvtap.daemon import state as state_module
from pymacvtap.daemon.config import EndpointConfig
from pymacvtap.daemon.state import StateError, StateStore


def endpoint(name: str, mtu: int | None = None) -> EndpointConfig:
    return EndpointConfig(name=name, link="eth0", mtu=mtu)


class Logged:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)

    def __contains__(self, text: str) -> bool:
        return any(text in line for line in self.lines)


@pytest.fixture
def log() -> Logged:
    return Logged()


@pytest.fixture
def store(tmp_path: Path, log: Logged) -> StateStore:
    """A store as the daemon leaves it after restoring: loaded, one snapshot written."""
    s = StateStore(str(tmp_path), log)
    s.load()
    s.save_all([endpoint("a"), endpoint("b")])
    return s


def reload(directory: Path, log: Callable[[str], None] | None = None) -> list[tuple[str, int]]:
    """What a restarted daemon would restore: (name, mtu) in order."""
    fresh = StateStore(str(directory), log or (lambda _line: None))
    return [(c.name, c.mtu or 0) for c in fresh.load()]


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def test_a_change_appends_one_line_and_leaves_the_snapshot_alone(
    store: StateStore, tmp_path: Path
) -> None:
    snapshot = (tmp_path / "state.json").read_bytes()
    store.put(endpoint("c"))
    store.put(endpoint("a", mtu=1400))  # changed in place: keeps its position
    store.delete("b")
    assert (tmp_path / "state.json").read_bytes() == snapshot
    lines = (tmp_path / "state.journal").read_text().splitlines()
    header = json.loads(lines[0])
    assert header == {"follows": json.loads(snapshot)["id"]}
    assert [json.loads(line) for line in lines[1:]][2] == {"del": "b"}
    assert len(lines) == 4
    assert reload(tmp_path) == [("a", 1400), ("c", 0)]


def test_update_writes_several_changes_at_once(store: StateStore, tmp_path: Path) -> None:
    store.update(put=[endpoint("c"), endpoint("d")], delete=["a"])
    assert len((tmp_path / "state.journal").read_text().splitlines()) == 4
    assert reload(tmp_path) == [("b", 0), ("c", 0), ("d", 0)]


def test_fresh_directory_and_first_change(tmp_path: Path) -> None:
    directory = tmp_path / "new"
    s = StateStore(str(directory), lambda _line: None)
    assert s.load() == []
    s.put(endpoint("a"))  # the first write of a process is a snapshot: the journal is its own
    assert reload(directory) == [("a", 0)]
    assert not (directory / "state.journal").exists()
    s.put(endpoint("b"))
    assert (directory / "state.journal").exists()
    assert reload(directory) == [("a", 0), ("b", 0)]


def test_a_store_that_did_not_load_keeps_what_is_saved(store: StateStore, tmp_path: Path) -> None:
    store.put(endpoint("c"))
    other = StateStore(str(tmp_path), lambda _line: None)
    other.delete("a")  # loads first, then writes a snapshot of everything
    assert reload(tmp_path) == [("b", 0), ("c", 0)]


def test_a_torn_last_line_is_ignored_with_a_log_line(
    store: StateStore, tmp_path: Path, log: Logged
) -> None:
    store.put(endpoint("c"))
    journal = tmp_path / "state.journal"
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"put":{"name":"d","li')  # a crash mid-append
    assert reload(tmp_path, log) == [("a", 0), ("b", 0), ("c", 0)]
    assert "incomplete last line" in log
    # The next daemon compacts before it appends: the torn line is never followed by more.
    restarted = StateStore(str(tmp_path), log)
    restarted.save_all(restarted.load())
    restarted.put(endpoint("e"))
    assert reload(tmp_path) == [("a", 0), ("b", 0), ("c", 0), ("e", 0)]


def test_a_corrupt_line_elsewhere_is_reported_and_skipped(
    store: StateStore, tmp_path: Path, log: Logged
) -> None:
    store.put(endpoint("c"))
    store.put(endpoint("d"))
    journal = tmp_path / "state.journal"
    lines = journal.read_bytes().split(b"\n")
    lines[1] = b'{"put":{"name":"c","link":"eth0","type":"bogus"}}'
    journal.write_bytes(b"\n".join(lines))
    assert reload(tmp_path, log) == [("a", 0), ("b", 0), ("d", 0)]
    assert "line 2 is corrupt" in log


def test_a_journal_of_another_snapshot_is_not_replayed(store: StateStore, tmp_path: Path) -> None:
    store.put(endpoint("c"))
    journal = (tmp_path / "state.journal").read_bytes()
    store.save_all([endpoint("x")])  # a restore that dropped a, b and c
    # As if a crash had left the old journal next to the new snapshot.
    (tmp_path / "state.journal").write_bytes(journal)
    assert reload(tmp_path) == [("x", 0)]


def test_compaction_when_the_journal_outgrows_the_snapshot(
    store: StateStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(state_module, "JOURNAL_MIN_COMPACT_BYTES", 1000)
    first = json.loads((tmp_path / "state.json").read_text())["id"]
    journal = tmp_path / "state.journal"
    for mtu in range(1000, 1010):  # ~280 bytes a line: compacted about every 4 changes
        store.put(endpoint("a", mtu=mtu))
        assert not journal.exists() or journal.stat().st_size <= 1000
    snapshot = json.loads((tmp_path / "state.json").read_text())
    assert snapshot["id"] != first
    assert (tmp_path / "state.json.bak").exists() and (tmp_path / "state.journal.bak").exists()
    assert reload(tmp_path) == [("a", 1009), ("b", 0)]


def test_shutdown_compaction_leaves_nothing_to_replay(store: StateStore, tmp_path: Path) -> None:
    store.compact()  # nothing saved since the snapshot: nothing to do
    assert not (tmp_path / "state.json.bak").exists()
    store.put(endpoint("c"))
    store.compact()
    assert not (tmp_path / "state.journal").exists()
    names = [e["name"] for e in json.loads((tmp_path / "state.json").read_text())["endpoints"]]
    assert names == ["a", "b", "c"]


def test_a_corrupt_snapshot_falls_back_to_the_last_good_copy_and_its_journal(
    store: StateStore, tmp_path: Path, log: Logged
) -> None:
    store.put(endpoint("c"))
    store.compact()  # .bak = [a, b], state.journal.bak = +c: together [a, b, c]
    store.put(endpoint("d"))  # in the journal of the snapshot about to be broken
    state = tmp_path / "state.json"
    data = state.read_bytes()
    state.write_bytes(data[: len(data) // 2])
    assert reload(tmp_path, log) == [("a", 0), ("b", 0), ("c", 0)]
    assert "is corrupt" in log and "restored the last good state" in log
    assert (tmp_path / "state.json.corrupt").read_bytes() == data[: len(data) // 2]
    assert not state.exists()


@pytest.mark.parametrize(
    "bad", [b"\xff\xfe garbage", b'{"version": 99}', b"[]", b'{"version": 1, "endpoints": [{}]}']
)
def test_every_kind_of_corrupt_snapshot(
    store: StateStore, tmp_path: Path, log: Logged, bad: bytes
) -> None:
    store.put(endpoint("c"))
    store.compact()  # .bak = [a, b] + its journal (c)
    (tmp_path / "state.json").write_bytes(bad)
    assert reload(tmp_path, log) == [("a", 0), ("b", 0), ("c", 0)]
    assert "is corrupt" in log


def test_both_copies_corrupt_is_an_empty_state(store: StateStore, tmp_path: Path) -> None:
    store.save_all([endpoint("a")])
    (tmp_path / "state.json").write_bytes(b"x")
    (tmp_path / "state.json.bak").write_bytes(b"y")
    assert reload(tmp_path) == []


@pytest.fixture
def disk_full(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[bool], None]]:
    """``full(True)``: writes in the state module get part of the data down, then ENOSPC."""
    real_write = os.write
    full = False

    def write(fd: int, data: bytes | memoryview) -> int:
        if not full:
            return real_write(fd, data)
        if len(data) > 10:
            return real_write(fd, bytes(data[:10]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def set_full(value: bool) -> None:
        nonlocal full
        full = value

    monkeypatch.setattr(state_module.os, "write", write)
    yield set_full


def test_disk_full_while_appending(
    store: StateStore, tmp_path: Path, disk_full: Callable[[bool], None]
) -> None:
    store.put(endpoint("c"))
    before = files(tmp_path)
    disk_full(True)
    with pytest.raises(StateError, match="No space"):
        store.put(endpoint("d"))
    with pytest.raises(StateError, match="No space"):
        store.delete("a")  # the next save tries a snapshot, which fails the same way
    assert files(tmp_path) == before  # the partial line was cut off, no temporary left
    assert reload(tmp_path) == [("a", 0), ("b", 0), ("c", 0)]
    disk_full(False)
    store.put(endpoint("e"))  # space again: the changes that failed are saved too
    assert reload(tmp_path) == [("b", 0), ("c", 0), ("d", 0), ("e", 0)]


def test_disk_full_while_writing_a_snapshot(
    store: StateStore, tmp_path: Path, disk_full: Callable[[bool], None]
) -> None:
    store.put(endpoint("c"))
    before = files(tmp_path)
    disk_full(True)
    with pytest.raises(StateError, match="cannot save state"):
        store.save_all([endpoint("x")])
    assert files(tmp_path) == before
    disk_full(False)
    store.compact()
    assert reload(tmp_path) == [("x", 0)]


@pytest.mark.parametrize("failing_step", [1, 2, 3])
def test_an_interrupted_compaction_loads_as_before_or_after(
    store: StateStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing_step: int
) -> None:
    """Stop a compaction at each rename: the files left load as the whole state."""
    store.put(endpoint("c"))
    store.delete("a")
    real_replace = os.replace
    calls = 0

    def replace(src: str, dst: str) -> None:
        nonlocal calls
        calls += 1
        if calls == failing_step:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(state_module.os, "replace", replace)
    with pytest.raises(StateError):
        store.compact()
    assert reload(tmp_path) == [("b", 0), ("c", 0)]
    monkeypatch.setattr(state_module.os, "replace", real_replace)
    store.put(endpoint("d"))  # and the store carries on: a snapshot first
    assert reload(tmp_path) == [("b", 0), ("c", 0), ("d", 0)]


def test_a_journal_moved_before_its_snapshot_is_still_found(
    store: StateStore, tmp_path: Path
) -> None:
    """A file system may keep the later of two renames of a compaction and lose the first."""
    store.put(endpoint("c"))
    os.replace(tmp_path / "state.journal", tmp_path / "state.journal.bak")
    assert reload(tmp_path) == [("a", 0), ("b", 0), ("c", 0)]


def test_the_saved_configuration_is_derived_from_the_engine(tmp_path: Path) -> None:
    """One endpoint model: a change made in the engine is what the state saves, and back."""
    from pymacvtap.core.engine import Engine
    from pymacvtap.core.modes import Mode
    from pymacvtap.daemon.runtime import EndpointRuntime, add_to_engine

    engine = Engine(lambda n: bytes(range(n)))
    engine.add_lower("eth0", bytes.fromhex("020000000001"), 1500)
    asked = EndpointConfig(name="c1", link="eth0", mode="source", macaddrs=["02:00:00:00:00:09"])
    ep = add_to_engine(engine, asked)
    rt = EndpointRuntime(asked, ep, frontend=None)  # type: ignore[arg-type]
    engine.set_mtu("c1", 1400)
    engine.set_up("c1", True)
    saved = rt.config()
    assert (saved.mode, saved.mtu, saved.up, saved.macaddrs) == (
        "source",
        1400,
        True,
        ["02:00:00:00:00:09"],
    )
    assert saved.address == ep.mac.hex(":") and asked.mtu is None  # the request is left as asked
    engine.set_mode("c1", Mode.VEPA)  # leaving source mode flushes the list
    assert (rt.config().mode, rt.config().macaddrs) == ("vepa", [])
    store = StateStore(str(tmp_path))
    store.load()
    store.put(rt.config())
    (loaded,) = StateStore(str(tmp_path)).load()
    engine.remove_endpoint("c1")
    again = add_to_engine(engine, loaded)
    assert (again.mac, again.mtu, again.mode) == (ep.mac, 1400, Mode.VEPA)
