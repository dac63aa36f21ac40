"""Output: an endpoint as `ip -d -s link show` prints a link, events as words or JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from pymacvtap.cli import Options, format_event, format_link
from pymacvtap.cli.output import dump_json, event_json

SOURCE_ENDPOINT: dict[str, Any] = {
    "ifname": "mon",
    "link": "eth0",
    "mtu": 1500,
    "operstate": "LOWERLAYERDOWN",
    "address": "02:00:00:00:00:01",
    "type": "macvtap",
    "mode": "source",
    "nopromisc": True,
    "bcqueuelen": 1000,
    "spoofchk": True,
    "macaddrs": ["52:54:00:00:00:01"],
    "frontend": "stream",
    "path": "/run/p.sock",
    "owner": 1000,
    "group": 100,
    "stats64": {
        "rx": {"bytes": 123456789, "packets": 5, "errors": 0, "dropped": 2, "multicast": 1},
        "tx": {"bytes": 64, "packets": 1, "errors": 0, "dropped": 0},
    },
    "drops": {"spoofed": 3, "rx_queue_full": 2},
}


def test_link_with_stats_reads_like_ip_s_link() -> None:
    assert format_link(SOURCE_ENDPOINT, stats=True).splitlines() == [
        "mon@eth0: <NO-CARRIER,BROADCAST,MULTICAST,UP> mtu 1500 state LOWERLAYERDOWN",
        "    link/ether 02:00:00:00:00:01",
        "    macvtap mode source nopromisc bcqueuelen 1000 spoofchk on",
        "    macaddr count 1 52:54:00:00:00:01",
        "    frontend stream path /run/p.sock owner 1000 group 100",
        "    RX:     bytes packets errors dropped mcast",
        "        123456789       5      0       2     1",
        "    TX:  bytes packets errors dropped",
        "            64       1      0       0",
        "    drops spoofed 3 rx_queue_full 2",
    ]


def test_macnat_and_addresses_are_shown() -> None:
    entry = {
        **SOURCE_ENDPOINT,
        "mode": "bridge",
        "macaddrs": None,
        "macnat": True,
        "addresses": [
            {"family": "inet", "address": "10.0.0.11", "origin": "dhcp", "age": 1.5},
            {"family": "inet6", "address": "fd00::11", "origin": "netdev", "age": 0},
        ],
    }
    assert format_link(entry).splitlines()[2:5] == [
        "    macvtap mode bridge nopromisc bcqueuelen 1000 spoofchk on macnat on",
        "    inet 10.0.0.11 origin dhcp",
        "    inet6 fd00::11 origin netdev",
    ]


def test_link_without_stats_leaves_counters_out() -> None:
    text = format_link(SOURCE_ENDPOINT)
    assert len(text.splitlines()) == 5
    assert "RX:" not in text and "drops" not in text


@pytest.mark.parametrize(
    ("state", "flags"),
    [
        ("UP", "<BROADCAST,MULTICAST,UP,LOWER_UP>"),
        ("DOWN", "<BROADCAST,MULTICAST>"),
        ("LOWERLAYERDOWN", "<NO-CARRIER,BROADCAST,MULTICAST,UP>"),
        (None, "<BROADCAST,MULTICAST>"),
    ],
)
def test_link_flags_follow_the_state(state: str | None, flags: str) -> None:
    first = format_link({"ifname": "c1", "link": "eth0", "mtu": 9000, "operstate": state})
    assert first.splitlines()[0] == f"c1@eth0: {flags} mtu 9000 state {state or 'UNKNOWN'}"


def test_source_mode_shows_an_empty_macaddr_list() -> None:
    entry = {"type": "macvlan", "mode": "source", "macaddrs": [], "frontend": "tap"}
    assert "    macaddr count 0" in format_link(entry).splitlines()
    entry["mode"] = "vepa"
    assert "macaddr" not in format_link(entry)


def test_event_is_words_quoted_where_needed() -> None:
    event = {
        "event": "link.set",
        "ifname": "vm0",
        "up": False,
        "macaddrs": [],
        "owner": None,
        "note": 'say "hi"',
        "reason": "lower eth0 gone",
        "x": {"a": 1},
    }
    assert format_event(event) == (
        'link.set vm0 up off macaddrs - owner none note "say \\"hi\\"" '
        'reason "lower eth0 gone" x {"a":1}'
    )
    assert format_event({"ifname": "vm0"}) == "event vm0"


def test_json_forms() -> None:
    value = [{"ifname": "vm0", "mtu": 1500}]
    assert dump_json(Options(), value) == '[{"ifname": "vm0", "mtu": 1500}]'
    assert dump_json(Options(pretty=True), value) == json.dumps(value, indent=2)
    assert event_json({"event": "x", "ifname": "vm0"}) == '{"event":"x","ifname":"vm0"}'


def test_a_change_event_says_the_old_and_the_new_value_and_who_made_it() -> None:
    up = {"event": "link.set", "ifname": "ncx", "source": "request", "changes": ["up"],
          "old": {"up": False}, "new": {"up": True}}  # fmt: skip
    down = {**up, "old": {"up": True}, "new": {"up": False}}
    assert format_event(up) == "link.set ncx up off -> on source request"
    assert format_event(down) == "link.set ncx up on -> off source request"
    netdev = {"event": "link.set", "ifname": "c1", "source": "netdev",
              "changes": ["address", "mtu"],
              "old": {"address": "02:00:00:00:00:01", "mtu": 1500},
              "new": {"address": "02:00:00:00:00:02", "mtu": 1400}}  # fmt: skip
    assert format_event(netdev) == (
        "link.set c1 address 02:00:00:00:00:01 -> 02:00:00:00:00:02 mtu 1500 -> 1400 source netdev"
    )
    wait = {"event": "link.wait", "ifname": "c1", "reason": "lower eth0 missing"}
    assert format_event(wait) == 'link.wait c1 reason "lower eth0 missing"'
