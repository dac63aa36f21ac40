"""Learned addresses (SPEC 9): what a frame tells, tables bounded and aged, the owner index."""

from __future__ import annotations

import pytest

from pymacvtap.core import Engine, Frame, Mode
from pymacvtap.core.addresses import (
    AddressBook,
    AddressTable,
    Origin,
    dhcp_ack_for,
    learned_from_sent,
)
from pymacvtap.core.announce import gratuitous_arp

from .l3frames import (
    EP_A,
    EP_B,
    IP6_A,
    IP6_A_GLOBAL,
    IP6_OUT,
    IP_A,
    IP_B,
    IP_OUT,
    OUTSIDE,
    arp,
    dhcp,
    neighbour_advert,
    neighbour_solicit,
    raw,
    tcp4,
    udp6,
)

NO = bytes(4)
V6_UNSPEC = bytes(16)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        pytest.param(arp(EP_A, IP_A, IP_OUT), [(IP_A, Origin.ARP)], id="arp-request"),
        pytest.param(arp(EP_A, IP_A, IP_OUT, vlan=7), [(IP_A, Origin.ARP)], id="arp-vlan"),
        pytest.param(
            arp(EP_A, IP_A, IP_OUT, op=2, dst=OUTSIDE), [(IP_A, Origin.ARP)], id="arp-reply"
        ),
        pytest.param(arp(EP_A, NO, IP_A), [], id="arp-probe"),
        pytest.param(arp(EP_A, IP_B, IP_OUT, sha=EP_B), [], id="arp-for-another-mac"),
        pytest.param(arp(EP_B, IP_B, IP_OUT), [], id="another-source-mac"),
        pytest.param(tcp4(EP_A, OUTSIDE, IP_A, IP_OUT), [], id="ipv4-source-not-learned"),
        pytest.param(
            udp6(EP_A, OUTSIDE, IP6_A_GLOBAL, IP6_OUT),
            [(IP6_A_GLOBAL, Origin.IPV6_SOURCE)],
            id="ipv6-source",
        ),
        pytest.param(
            neighbour_advert(EP_A, IP6_A, OUTSIDE, IP6_OUT),
            [(IP6_A, Origin.ND), (IP6_A, Origin.IPV6_SOURCE)],
            id="na-target",
        ),
        pytest.param(
            neighbour_solicit(EP_A, V6_UNSPEC, IP6_A_GLOBAL, lladdr=False),
            [(IP6_A_GLOBAL, Origin.ND)],
            id="dad",
        ),
        pytest.param(
            neighbour_solicit(EP_A, IP6_A, IP6_OUT),
            [(IP6_A, Origin.IPV6_SOURCE)],
            id="ns-target-is-not-ours",
        ),
        pytest.param(raw(OUTSIDE, EP_A, 0x88CC), [], id="lldp"),
        pytest.param(arp(EP_A, IP_A, IP_OUT)[:20], [], id="runt-arp"),
    ],
)
def test_learned_from_sent(frame: bytes, expected: list[tuple[bytes, Origin]]) -> None:
    assert learned_from_sent(frame, EP_A) == expected


def test_dhcp_ack_gives_address_and_lease() -> None:
    ack = dhcp(OUTSIDE, 7, "ack", reply=True, chaddr=EP_A, yiaddr=IP_A, lease=3600)
    assert dhcp_ack_for(ack, EP_A) == (IP_A, 3600.0)
    assert dhcp_ack_for(ack, EP_B) is None  # someone else's
    forever = dhcp(OUTSIDE, 7, "ack", reply=True, chaddr=EP_A, yiaddr=IP_A, lease=0xFFFFFFFF)
    assert dhcp_ack_for(forever, EP_A) == (IP_A, None)
    offer = dhcp(OUTSIDE, 7, "offer", reply=True, chaddr=EP_A, yiaddr=IP_A)
    assert dhcp_ack_for(offer, EP_A) is None
    assert dhcp_ack_for(dhcp(EP_A, 7, "request"), EP_A) is None
    assert dhcp_ack_for(ack[:200], EP_A) is None


def test_table_keeps_the_most_trusted_origin_and_ages() -> None:
    table = AddressTable(capacity=8, ttl=10.0)
    assert table.learn(IP_A, Origin.ARP, 0.0) == (True, [])
    assert table.learn(IP_A, Origin.NETDEV, 1.0) == (False, [])
    assert table.learn(IP_A, Origin.ARP, 2.0) == (False, [])
    entry = table.get(IP_A)
    assert entry is not None and entry.origin is Origin.NETDEV and entry.expires is None
    table.learn(IP6_A, Origin.IPV6_SOURCE, 0.0)
    table.learn(IP6_A, Origin.ND, 5.0)  # more trusted: origin and lifetime follow
    assert table.next_expiry() == 15.0
    table.learn(IP6_A, Origin.IPV6_SOURCE, 8.0)  # less trusted: refreshes only
    entry = table.get(IP6_A)
    assert entry is not None and entry.origin is Origin.ND and entry.expires == 18.0
    assert [e.text for e in table.entries(17.0)] == ["192.168.1.11", "fe80::11"]
    assert table.entries(18.0)[-1].address == IP_A  # expired ones are not listed
    assert table.expire(18.0) == [IP6_A]
    assert table.expire(1e9) == [] and table.ipv4(1e9) == [IP_A]


def test_table_capacity_evicts_least_recently_seen_learned_first() -> None:
    table = AddressTable(capacity=3, ttl=100.0)
    table.learn(b"\x0a\x00\x00\x01", Origin.NETDEV, 0.0)
    table.learn(b"\x0a\x00\x00\x02", Origin.ARP, 1.0)
    table.learn(b"\x0a\x00\x00\x03", Origin.ARP, 2.0)
    table.learn(b"\x0a\x00\x00\x02", Origin.ARP, 3.0)  # seen again: now the newest
    assert table.learn(b"\x0a\x00\x00\x04", Origin.ARP, 4.0) == (True, [b"\x0a\x00\x00\x03"])
    assert len(table) == 3 and b"\x0a\x00\x00\x01" in table
    only_netdev = AddressTable(capacity=1)
    only_netdev.learn(IP_A, Origin.NETDEV, 0.0)
    assert only_netdev.learn(IP_B, Origin.NETDEV, 0.0) == (True, [IP_A])
    with pytest.raises(ValueError):
        AddressTable(capacity=0)


def test_dhcp_lease_sets_the_lifetime() -> None:
    table = AddressTable(ttl=10.0)
    table.learn(IP_A, Origin.DHCP, 0.0, ttl=3600.0)
    assert table.next_expiry() == 3600.0


def test_book_index_follows_the_owner() -> None:
    book = AddressBook(ttl=10.0)
    assert book.learn("a", IP_A, Origin.ARP, 0.0)
    assert book.owner(IP_A, 1.0) == "a"
    assert book.owner(IP_A, 10.0) is None  # aged, even before expire() runs
    # The address moves to b: a forgets it.
    assert book.learn("b", IP_A, Origin.ARP, 2.0)
    assert book.owner(IP_A, 3.0) == "b" and book.entries("a", 3.0) == []
    assert book.forget("b", IP_A) and book.owner(IP_A, 3.0) is None
    assert not book.forget("b", IP_A) and not book.forget("nobody", IP_A)


def test_book_netdev_address_survives_a_sighting_elsewhere() -> None:
    book = AddressBook(ttl=10.0)
    book.learn("a", IP_A, Origin.NETDEV, 0.0)
    book.learn("b", IP_A, Origin.ARP, 1.0)
    assert book.owner(IP_A, 2.0) == "b"  # the network follows the newest sighting
    assert [e.origin for e in book.entries("a", 2.0)] == [Origin.NETDEV]
    assert book.expire(11.0) == [("b", IP_A)]
    assert book.owner(IP_A, 12.0) == "a"  # a still has it from its netdev


def test_book_remove_endpoint_and_eviction_clear_the_index() -> None:
    book = AddressBook(capacity=1)
    book.learn("a", IP_A, Origin.ARP, 0.0)
    book.learn("a", IP_B, Origin.ARP, 1.0)  # evicts IP_A
    assert book.owner(IP_A, 1.0) is None and book.owner(IP_B, 1.0) == "a"
    book.remove_endpoint("a")
    assert book.owner(IP_B, 1.0) is None and "a" not in book
    book.remove_endpoint("a")  # twice is fine


def test_book_learns_from_frames() -> None:
    book = AddressBook()
    assert book.learn_from_sent("a", EP_A, arp(EP_A, IP_A, IP_OUT), 0.0) == [IP_A]
    assert book.learn_from_sent("a", EP_A, arp(EP_A, IP_A, IP_OUT), 1.0) == []
    ack = dhcp(OUTSIDE, 7, "ack", reply=True, chaddr=EP_A, yiaddr=IP_B, lease=60)
    assert book.learn_from_received("a", EP_A, ack, 2.0) == [IP_B]
    assert book.learn_from_received("a", EP_A, arp(OUTSIDE, IP_OUT, IP_A), 2.0) == []
    assert book.next_expiry() == 62.0
    assert book.as_list("a", 3.0) == [
        {"family": "inet", "address": "192.168.1.11", "origin": "arp", "age": 2.0},
        {"family": "inet", "address": "192.168.1.12", "origin": "dhcp", "age": 1.0},
    ]
    assert book.as_list("nobody", 3.0) == []
    assert book.next_expiry() is not None and AddressBook().next_expiry() is None


def test_a_lower_added_after_the_clock_started_dates_what_it_learns_from_then() -> None:
    """The engine's time reaches a lower added between ticks: an address learned before the
    next tick is dated at the last tick, not at 0, so that tick does not age it out."""
    engine = Engine(lambda n: bytes(range(n)))
    engine.tick(5000.0)
    engine.add_lower("low0", bytes.fromhex("020000000001"))
    mac = bytes.fromhex("020000000011")
    ep = engine.add_endpoint("c1", "low0", Mode.BRIDGE, mac, up=True)
    engine.from_endpoint(ep, Frame(gratuitous_arp(mac, bytes([10, 0, 0, 11]))))
    engine.tick(5001.0)
    [entry] = engine.ports["low0"].addressing.book.entries("c1", 5001.0)
    assert entry.origin is Origin.ARP
    assert entry.as_dict(5001.0)["age"] == 1.0
