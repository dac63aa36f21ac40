"""The parts behind issue 16, without a daemon: the state dir lock, marks, waiting, events."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import jsonschema
import pytest

from pymacvtap.core.engine import Engine
from pymacvtap.core.modes import Mode
from pymacvtap.daemon import events
from pymacvtap.daemon.config import EndpointConfig
from pymacvtap.daemon.lock import StateDirBusy, StateDirLock
from pymacvtap.daemon.marks import Marks, read_mark
from pymacvtap.daemon.waiting import Waiting, gone_for_good, missing, reason_of, show_waiting


def test_a_second_lock_on_the_state_dir_is_refused_naming_the_holder(tmp_path: Path) -> None:
    state = tmp_path / "state"
    held = StateDirLock.acquire(str(state), "/run/a.sock")
    try:
        assert (state / "lock").read_text() == f"{os.getpid()} /run/a.sock\n"
        with pytest.raises(StateDirBusy) as refused:
            StateDirLock.acquire(str(state), "/run/b.sock")
        assert str(refused.value) == (
            f"state dir {state} is in use by another daemon (pid {os.getpid()}, socket "
            "/run/a.sock); one daemon per state dir (give this one its own --state-dir)"
        )
    finally:
        held.release()
    StateDirLock.acquire(str(state), "/run/b.sock").release()  # free again


def test_marks_name_the_endpoint_and_the_state_dir(tmp_path: Path) -> None:
    marks = Marks(str(tmp_path))
    mine = f"pymacvtap:c1 {os.path.realpath(tmp_path)}"
    assert read_mark(mine) == ("c1", os.path.realpath(tmp_path))
    assert marks.endpoint_of(mine) == "c1"
    assert marks.endpoint_of("pymacvtap:c1 /var/lib/other") is None  # another daemon's
    assert marks.endpoint_of("my uplink") is None and marks.endpoint_of(None) is None
    assert read_mark("pymacvtap:") is None


def test_what_a_waiting_endpoint_waits_for() -> None:
    lower_gone = EndpointConfig(name="c1", link="nosuchlower0")
    assert missing(lower_gone) == "lower nosuchlower0 missing"
    netns_gone = EndpointConfig(name="c1", link="lo", netns="pymacvtap-no-such-ns")
    assert missing(netns_gone) == "netns pymacvtap-no-such-ns missing"
    assert not gone_for_good(netns_gone)  # a named namespace may be created again
    process_gone = EndpointConfig(name="c1", link="lo", netns="/proc/999999999/ns/net")
    assert gone_for_good(process_gone)
    assert "its process is gone" in (missing(process_gone) or "")
    assert missing(EndpointConfig(name="c1", link="lo")) is None
    err = Exception("link add c1: address 02:00:00:00:00:01: already in use by c2")
    assert reason_of(lower_gone, err) == "address 02:00:00:00:00:01: already in use by c2"


def test_a_waiting_endpoint_is_shown_as_the_schema_says() -> None:
    text = (resources.files("pymacvtap") / "schemas" / "link-show.schema.json").read_text()
    validator = jsonschema.Draft202012Validator(json.loads(text))
    cfg = EndpointConfig(name="c1", link="eth0", netns="c1", ifname="eth0",
                         address="02:00:00:00:00:01", mtu=1500)  # fmt: skip
    entry = show_waiting(Waiting(cfg, "lower eth0 missing"))
    assert list(validator.iter_errors([entry])) == []
    assert (entry["operstate"], entry["waiting"], entry["netdev"]) == (
        "WAITING",
        "lower eth0 missing",
        "eth0",
    )


def test_a_change_event_has_only_what_changed_and_what_was_asked() -> None:
    engine = Engine(lambda n: b"\2" * n)
    engine.add_lower("eth0", bytes.fromhex("020000000001"), 1500, up=True)
    ep = engine.add_endpoint("c1", "eth0", Mode.VEPA, None, 1500)
    before = events.values(ep)
    engine.set_mtu("c1", 1400)
    assert events.link_set("c1", before, events.values(ep), events.BY_NETDEV) == {
        "event": "link.set", "ifname": "c1", "source": "netdev", "changes": ["mtu"],
        "old": {"mtu": 1500}, "new": {"mtu": 1400},
    }  # fmt: skip
    same = events.values(ep)
    assert events.link_set("c1", same, same, events.BY_KERNEL) is None
    asked = events.link_set("c1", same, same, events.BY_REQUEST, ["spoofchk"])
    assert asked is not None and asked["old"] == asked["new"] == {"spoofchk": False}
