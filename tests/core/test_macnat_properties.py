"""Properties of MAC translation under random input (hypothesis).

(a) translate_out and classify_in never raise, whatever the bytes; what they return is
    bounded: a frame of the same length, or a named drop (counted), or None;
(b) a frame an endpoint sends, translated, then answered by the outside the way a peer
    answers (to the source MAC and IP it saw), comes back to that endpoint with its MAC,
    for ARP, IPv4 and IPv6, whatever the endpoints and their addresses.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pymacvtap.core import headers as h
from pymacvtap.core.addresses import AddressBook
from pymacvtap.core.announce import gratuitous_arp, rarp, unsolicited_na
from pymacvtap.core.macnat import Inbound, MacNat, MacNatDrop

from .l3frames import (
    EP_A,
    EP_B,
    IP6_A,
    IP6_OUT,
    IP_A,
    IP_B,
    IP_OUT,
    LOWER,
    OUTSIDE,
    arp,
    dhcp,
    neighbour_advert,
    neighbour_solicit,
    redirect,
    router_advert,
    tcp4,
    udp6,
)

TEMPLATES = [
    arp(EP_A, IP_A, IP_OUT),
    arp(OUTSIDE, IP_OUT, IP_A, op=2, dst=LOWER, tha=LOWER),
    arp(EP_A, IP_A, IP_OUT, vlan=3),
    tcp4(EP_A, OUTSIDE, IP_A, IP_OUT),
    tcp4(OUTSIDE, LOWER, IP_OUT, IP_A),
    udp6(EP_A, OUTSIDE, IP6_A, IP6_OUT),
    udp6(OUTSIDE, LOWER, IP6_OUT, IP6_A),
    neighbour_solicit(EP_A, IP6_A, IP6_OUT),
    neighbour_solicit(OUTSIDE, IP6_OUT, IP6_A, dst=LOWER),
    neighbour_advert(EP_A, IP6_A, OUTSIDE, IP6_OUT),
    router_advert(EP_A, IP6_A),
    redirect(EP_A, IP6_A, IP6_OUT),
    dhcp(EP_A, 0x55, "discover"),
    dhcp(OUTSIDE, 0x55, "offer", reply=True, chaddr=EP_A, yiaddr=IP_A),
    dhcp(OUTSIDE, 0x55, "ack", reply=True, chaddr=EP_A, yiaddr=IP_A, dst=LOWER),
    gratuitous_arp(EP_A, IP_A),
    unsolicited_na(EP_A, IP6_A),
    rarp(EP_A),
]


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Valid frames with bytes flipped, inserted or cut, and plain random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(TEMPLATES)))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["set", "cut", "insert"]))
        if action == "set" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif action == "cut":
            del data[at:]
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
    if draw(st.booleans()) and len(data) >= 6:
        data[0:6] = LOWER
    return bytes(data)


def primed_nat() -> MacNat:
    nat = MacNat(LOWER, AddressBook(), xid_capacity=8)
    nat.add_endpoint("a", EP_A)
    nat.add_endpoint("b", EP_B)
    for name, frame in (("a", TEMPLATES[0]), ("a", TEMPLATES[5]), ("a", TEMPLATES[12])):
        nat.translate_out(name, frame, 0.0)
    nat.translate_out("b", arp(EP_B, IP_B, IP_OUT), 0.0)
    return nat


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(frames(), st.booleans(), st.booleans()), min_size=1, max_size=12))
def test_never_raises_and_output_is_bounded(steps: list[tuple[bytes, bool, bool]]) -> None:
    nat = primed_nat()
    dropped: dict[MacNatDrop, int] = {}
    for now, (data, outbound, partial) in enumerate(steps):
        if outbound:
            result = nat.translate_out("a", data, float(now), partial_checksum=partial)
            if isinstance(result, MacNatDrop):
                dropped[result] = dropped.get(result, 0) + 1
            else:
                assert isinstance(result, bytes) and len(result) == len(data)
                assert result[6:12] == LOWER
        else:
            got = nat.classify_in(data, float(now))
            nat.book.learn_from_received("a", EP_A, data, float(now))  # never raises either
            assert nat.sender_of(data, float(now)) in (None, "a", "b")
            if got is not None:
                assert isinstance(got, Inbound) and got.endpoint in ("a", "b")
                assert len(got.data) == len(data)
                assert got.data[:6] == nat.mac_of(got.endpoint)
        assert nat.transactions() <= 8
        assert len(nat.book.entries("a", float(now))) <= 64
    assert nat.drops == dropped


@st.composite
def endpoints(draw: st.DrawFn) -> list[tuple[str, bytes, bytes, bytes]]:
    """1-4 endpoints: name, MAC, IPv4 and IPv6 address, all distinct."""
    count = draw(st.integers(1, 4))
    macs = draw(
        st.lists(
            st.binary(min_size=5, max_size=5).map(lambda b: b"\x02" + b),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    v4 = draw(
        st.lists(
            st.binary(min_size=3, max_size=3).map(lambda b: b"\x0a" + b),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    v6 = draw(
        st.lists(
            st.binary(min_size=8, max_size=8).map(lambda b: bytes.fromhex("fe80" + "00" * 6) + b),
            min_size=count,
            max_size=count,
            unique=True,
        )
    )
    return [(f"ep{i}", macs[i], v4[i], v6[i]) for i in range(count)]


def mac_fields(frame: bytes) -> list[bytes]:
    """Every field of a frame that says "send to this MAC": source, ARP sender, ND options."""
    fields = [frame[6:12]]
    l3 = h.l3_header(frame)
    assert l3 is not None
    request = h.parse_arp(frame, l3.offset)
    if l3.ethertype == h.ETH_P_ARP and request is not None:
        fields.append(request.sha)
    icmp = h.parse_icmpv6(frame, l3)
    if icmp is not None:
        for option in h.nd_options(frame, icmp[1]) or []:
            fields.append(frame[option.offset + 2 : option.offset + 8])
    return fields


def answer(sent: bytes, kind: str) -> bytes:
    """What a peer on the wire sends back to the frame it saw."""
    src = sent[6:12]
    if kind == "arp":
        request = h.parse_arp(sent, 14)
        assert request is not None
        return arp(OUTSIDE, request.tpa, request.spa, op=2, dst=src, tha=request.sha)
    if kind == "ipv4":
        ip4 = h.parse_ipv4(sent, 14)
        assert ip4 is not None
        return tcp4(OUTSIDE, src, ip4.dst, ip4.src)
    ip6 = h.parse_ipv6(sent, 14)
    assert ip6 is not None
    if kind == "nd":  # a unicast NUD probe back to the sender
        return neighbour_solicit(OUTSIDE, ip6.dst, ip6.src, dst=src)
    return udp6(OUTSIDE, src, ip6.dst, ip6.src)


@settings(max_examples=150, deadline=None)
@given(
    endpoints(),
    st.data(),
    st.sampled_from(["arp", "ipv4", "ipv6", "nd"]),
    st.floats(0, 500),
)
def test_what_goes_out_comes_back_to_the_sender(
    eps: list[tuple[str, bytes, bytes, bytes]], data: st.DataObject, kind: str, now: float
) -> None:
    nat = MacNat(LOWER, AddressBook())
    for name, mac, _, _ in eps:
        nat.add_endpoint(name, mac)
    # Everyone speaks once, as stacks do when they come up; then one sends.
    for name, mac, v4, v6 in eps:
        assert isinstance(nat.translate_out(name, arp(mac, v4, IP_OUT), 0.0), bytes)
        assert isinstance(nat.translate_out(name, udp6(mac, OUTSIDE, v6, IP6_OUT), 0.0), bytes)
    name, mac, v4, v6 = data.draw(st.sampled_from(eps))
    frame = {
        "arp": arp(mac, v4, IP_OUT),
        "ipv4": tcp4(mac, OUTSIDE, v4, IP_OUT),
        "ipv6": udp6(mac, OUTSIDE, v6, IP6_OUT),
        "nd": neighbour_solicit(mac, v6, IP6_OUT),
    }[kind]
    sent = nat.translate_out(name, frame, now)
    assert isinstance(sent, bytes)
    assert mac_fields(sent) == [LOWER] * len(mac_fields(sent))  # one MAC on the wire
    got = nat.classify_in(answer(sent, kind), now)
    assert got is not None and got.endpoint == name
    assert got.data[:6] == mac
    if kind == "arp":
        reply = h.parse_arp(got.data, 14)
        assert reply is not None and reply.tha == mac
