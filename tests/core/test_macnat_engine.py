"""macnat wired into the engine: what the wire, bridge peers and the sender see (SPEC 9).

Table tests for each rule, then a property: the data path's entry points
(``forward_from_*``) decide as the general code does with macnat endpoints present.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymacvtap.core import DropReason, Engine, EngineError, Frame, Mode
from pymacvtap.core.macnat import MacNatDrop

from .helpers import new_engine
from .l3frames import (
    BROADCAST,
    EP_A,
    EP_B,
    IP_A,
    IP_B,
    IP_OUT,
    LOWER,
    OUTSIDE,
    arp,
    dhcp,
    neighbour_advert,
    raw,
    tcp4,
    udp4,
)

EP_C = bytes.fromhex("020000000003")  # a plain (untranslated) bridge peer
IP6_A = bytes.fromhex("fd000000000000000000000000000011")
IP6_OUT = bytes.fromhex("fd000000000000000000000000000001")


def _engine(mode: Mode = Mode.BRIDGE) -> Engine:
    engine = new_engine()
    engine.add_lower("low0", LOWER)
    engine.add_endpoint("a", "low0", mode, EP_A, up=True, macnat=True)
    engine.add_endpoint("b", "low0", mode, EP_B, up=True, macnat=True)
    engine.add_endpoint("c", "low0", mode, EP_C, up=True)
    return engine


def _send(engine: Engine, name: str, data: bytes) -> list[bytes]:
    port = engine.port("low0")
    port.tx_queue.clear()
    engine.from_endpoint(engine.endpoint(name), Frame(data))
    engine.process_broadcasts()
    return [bytes(f.data) for f in port.tx_queue]


def _received(engine: Engine) -> dict[str, list[bytes]]:
    out = {}
    for name, ep in engine.endpoints.items():
        out[name] = [bytes(f.data) for f in ep.rx_queue]
        ep.rx_queue.clear()
    return out


def test_the_wire_copy_carries_the_lower_mac_and_bridge_peers_the_original() -> None:
    engine = _engine()
    request = arp(EP_A, IP_A, IP_OUT)
    [wire] = _send(engine, "a", request)
    assert wire[6:12] == LOWER and wire[22:28] == LOWER  # source and ARP sender hw
    got = _received(engine)
    assert got["b"] == [request] and got["c"] == [request]
    assert got["a"] == []


def test_a_reply_for_the_lower_mac_goes_to_the_endpoint_owning_the_ip() -> None:
    engine = _engine()
    _send(engine, "a", arp(EP_A, IP_A, IP_OUT))  # a shows it owns IP_A
    _received(engine)
    reply = arp(OUTSIDE, IP_OUT, IP_A, op=2, dst=LOWER, tha=LOWER)
    engine.from_lower(engine.port("low0"), Frame(reply))
    got = _received(engine)
    assert len(got["a"]) == 1 and got["b"] == [] and got["c"] == []
    assert got["a"][0][0:6] == EP_A and got["a"][0][32:38] == EP_A  # dst and ARP target hw
    # IPv4 unicast to the lower's MAC by destination IP too.
    engine.from_lower(engine.port("low0"), Frame(tcp4(OUTSIDE, LOWER, IP_OUT, IP_A)))
    assert [f[0:6] for f in _received(engine)["a"]] == [EP_A]


def test_frames_for_the_lower_mac_nobody_owns_stay_the_hosts() -> None:
    engine = _engine()
    d = engine.from_lower(engine.port("low0"), Frame(tcp4(OUTSIDE, LOWER, IP_OUT, IP_B)))
    assert d.outcome.value == "not_ours"


def test_the_hosts_own_addresses_are_never_claimed() -> None:
    """A container claiming the host's address (ARP) does not get the host's frames."""
    engine = _engine()
    port = engine.port("low0")
    port.addressing.set_host_address(IP_OUT, True)
    _send(engine, "a", arp(EP_A, IP_OUT, IP_B))  # a says IP_OUT is its own
    _received(engine)
    d = engine.from_lower(port, Frame(tcp4(OUTSIDE, LOWER, IP_B, IP_OUT)))
    assert d.outcome.value == "not_ours" and _received(engine)["a"] == []
    port.addressing.set_host_address(IP_OUT, False)
    engine.from_lower(port, Frame(tcp4(OUTSIDE, LOWER, IP_B, IP_OUT)))
    assert len(_received(engine)["a"]) == 1


def test_an_echoed_broadcast_is_spared_its_sender() -> None:
    engine = _engine(Mode.VEPA)
    [wire] = _send(engine, "a", arp(EP_A, IP_A, IP_OUT))
    _received(engine)
    engine.from_lower(engine.port("low0"), Frame(wire))
    engine.process_broadcasts()
    got = _received(engine)
    assert got["a"] == [] and got["b"] == [wire] and got["c"] == [wire]


def test_two_macnat_bridge_endpoints_talk_directly_with_their_own_macs() -> None:
    engine = _engine()
    frame = udp4(EP_A, EP_B, IP_A, IP_B)
    assert _send(engine, "a", frame) == []
    assert _received(engine)["b"] == [frame]


def test_the_outside_may_speak_first() -> None:
    """An endpoint that has sent nothing answers a broadcast ARP; the answer is translated."""
    engine = _engine()
    engine.from_lower(engine.port("low0"), Frame(arp(OUTSIDE, IP_OUT, IP_A)))
    engine.process_broadcasts()
    assert len(_received(engine)["a"]) == 1
    [wire] = _send(engine, "a", arp(EP_A, IP_A, IP_OUT, op=2, dst=OUTSIDE, tha=OUTSIDE))
    assert wire[6:12] == LOWER
    engine.from_lower(engine.port("low0"), Frame(tcp4(OUTSIDE, LOWER, IP_OUT, IP_A)))
    assert len(_received(engine)["a"]) == 1


def test_dhcp_replies_reach_the_client_that_asked() -> None:
    engine = _engine()
    [wire] = _send(engine, "b", dhcp(EP_B, 0x1234, "discover"))
    assert wire[6:12] == LOWER
    _received(engine)
    ack = dhcp(OUTSIDE, 0x1234, "ack", reply=True, chaddr=EP_B, yiaddr=IP_B, lease=300)
    engine.from_lower(engine.port("low0"), Frame(ack))
    engine.process_broadcasts()
    got = _received(engine)
    assert len(got["b"]) == 1 and got["a"] == [] and got["c"] == []
    book = engine.port("low0").addressing.book
    assert [(e.text, e.origin.value) for e in book.entries("b", 0.0)] == [("192.168.1.12", "dhcp")]


def test_a_plain_endpoint_learns_from_arp_nd_and_dhcp_acks() -> None:
    engine = _engine()
    _send(engine, "c", arp(EP_C, IP_A, IP_OUT))
    _send(engine, "c", neighbour_advert(EP_C, IP6_A, OUTSIDE, IP6_OUT))
    ack = dhcp(OUTSIDE, 7, "ack", reply=True, chaddr=EP_C, yiaddr=IP_B, dst=EP_C)
    engine.port("low0").forward_from_lower(Frame(ack))
    book = engine.port("low0").addressing.book
    assert [(e.text, e.origin.value) for e in book.entries("c", 0.0)] == [
        ("192.168.1.11", "arp"),
        ("192.168.1.12", "dhcp"),
        ("fd00::11", "nd"),
    ]


def test_what_cannot_be_translated_is_dropped_and_counted_by_name() -> None:
    engine = _engine()
    assert _send(engine, "a", raw(BROADCAST, EP_A, 0x88CC)) == []  # LLDP
    stats = engine.endpoint("a").stats
    assert stats.drops == {DropReason.MACNAT_NON_IP: 1} and stats.tx_dropped == 1
    for reason in MacNatDrop:
        assert DropReason[f"MACNAT_{reason.name}"].value[2] == reason.value


@pytest.mark.parametrize("mode", [Mode.PASSTHRU, Mode.SOURCE])
def test_macnat_is_refused_where_the_endpoint_does_not_share_the_lower(mode: Mode) -> None:
    engine = new_engine()
    engine.add_lower("low0", LOWER)
    mac = LOWER if mode is Mode.PASSTHRU else EP_A
    with pytest.raises(EngineError, match="macnat needs mode bridge, vepa or private"):
        engine.add_endpoint("a", "low0", mode, mac, macnat=True)
    engine.add_endpoint("a", "low0", mode, mac)
    with pytest.raises(EngineError, match="macnat needs"):
        engine.set_macnat("a", True)


def test_a_macnat_endpoint_cannot_move_to_source_mode_and_follows_its_mac() -> None:
    engine = _engine()
    with pytest.raises(EngineError, match="macnat needs"):
        engine.set_mode("a", Mode.SOURCE)
    engine.set_mac("a", bytes.fromhex("0200000000aa"))
    _send(engine, "a", arp(bytes.fromhex("0200000000aa"), IP_A, IP_OUT))
    engine.from_lower(engine.port("low0"), Frame(tcp4(OUTSIDE, LOWER, IP_OUT, IP_A)))
    assert [f[0:6].hex() for f in _received(engine)["a"]] == ["0200000000aa"]
    engine.set_macnat("a", False)
    [wire] = _send(engine, "a", tcp4(bytes.fromhex("0200000000aa"), OUTSIDE, IP_A, IP_OUT))
    assert wire[6:12].hex() == "0200000000aa"


# -- the data path's entry points decide as the general code does ----------------------

MACS = {"a": EP_A, "b": EP_B, "c": EP_C}
IPS = {"a": IP_A, "b": IP_B, "c": bytes([192, 168, 1, 13])}


def _frames(name: str) -> list[bytes]:
    """What ``name`` may send, and (with src OUTSIDE) what the wire may bring."""
    mac, addr = MACS[name], IPS[name]
    return [
        arp(mac, addr, IP_OUT),
        tcp4(mac, OUTSIDE, addr, IP_OUT),
        udp4(mac, EP_B, addr, IP_B),
        dhcp(mac, 42, "request"),
        raw(BROADCAST, mac, 0x88CC),
        neighbour_advert(mac, IP6_A, OUTSIDE, IP6_OUT),
    ]


def _inbound() -> list[bytes]:
    return [
        tcp4(OUTSIDE, LOWER, IP_OUT, IP_A),
        arp(OUTSIDE, IP_OUT, IP_B, op=2, dst=LOWER, tha=LOWER),
        arp(OUTSIDE, IP_OUT, IP_A),
        dhcp(OUTSIDE, 42, "ack", reply=True, chaddr=EP_C, yiaddr=IP_B, dst=EP_C),
        dhcp(OUTSIDE, 42, "offer", reply=True, chaddr=EP_A, yiaddr=IP_A),
        tcp4(OUTSIDE, EP_C, IP_OUT, IP_A),
    ]


def _state(engine: Engine) -> object:
    port = engine.port("low0")
    return (
        [bytes(f.data) for f in port.tx_queue],
        port.stats.as_dict(),
        {
            n: (ep.stats.as_dict(), dict(ep.stats.drops), [bytes(f.data) for f in ep.rx_queue])
            for n, ep in engine.endpoints.items()
        },
        {n: port.addressing.book.as_list(n, 0.0) for n in engine.endpoints},
    )


@settings(max_examples=150, deadline=None)
@given(
    mode=st.sampled_from([Mode.BRIDGE, Mode.VEPA, Mode.PRIVATE]),
    script=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "wire"]), st.integers(0, 5)), max_size=25
    ),
)
def test_forward_entry_points_match_the_general_code_with_macnat(
    mode: Mode, script: list[tuple[str, int]]
) -> None:
    forwarded, general = _engine(mode), _engine(mode)
    for who, index in script:
        if who == "wire":
            data = _inbound()[index]
            forwarded.port("low0").forward_from_lower(Frame(data))
            general.from_lower(general.port("low0"), Frame(data))
        else:
            data = _frames(who)[index]
            forwarded.port("low0").forward_from_endpoint(forwarded.endpoint(who), Frame(data))
            general.from_endpoint(general.endpoint(who), Frame(data))
        forwarded.process_broadcasts()
        general.process_broadcasts()
        assert _state(forwarded) == _state(general)
