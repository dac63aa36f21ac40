"""MAC translation for shared-MAC lowers (SPEC 9), one rule per row: what goes out, what
comes back to whom, what is dropped and counted."""

from __future__ import annotations

import pytest
from scapy.layers.dhcp import BOOTP
from scapy.layers.inet6 import ICMPv6NDOptDstLLAddr, ICMPv6NDOptSrcLLAddr
from scapy.layers.l2 import ARP, Ether

from pymacvtap.core.addresses import AddressBook, Origin
from pymacvtap.core.macnat import Inbound, MacNat, MacNatDrop

from .l3frames import (
    BROADCAST,
    EP_A,
    EP_B,
    IP6_A,
    IP6_A_GLOBAL,
    IP6_OUT,
    IP_A,
    IP_B,
    IP_HOST,
    IP_OUT,
    LOWER,
    OUTSIDE,
    arp,
    dhcp,
    icmpv6_checksum_ok,
    m,
    neighbour_advert,
    neighbour_solicit,
    raw,
    redirect,
    router_advert,
    router_solicit,
    tcp4,
    udp4,
    udp6,
    udp_checksum_ok,
)


def new_nat() -> MacNat:
    book = AddressBook()
    nat = MacNat(LOWER, book)
    nat.add_endpoint("a", EP_A)
    nat.add_endpoint("b", EP_B)
    return nat


def out(nat: MacNat, frame: bytes, name: str = "a", now: float = 0.0) -> bytes:
    result = nat.translate_out(name, frame, now)
    assert isinstance(result, bytes), result
    assert len(result) == len(frame) and result[6:12] == LOWER
    return result


# -- endpoint -> wire ----------------------------------------------------------------------


def test_arp_sender_hardware_address_is_the_lowers() -> None:
    frame = arp(EP_A, IP_A, IP_OUT)
    sent = out(new_nat(), frame)
    assert Ether(sent)[ARP].hwsrc == m(LOWER)
    assert sent[:6] == frame[:6] and sent[12:22] == frame[12:22] and sent[28:] == frame[28:]


def test_arp_in_a_vlan_tag() -> None:
    sent = out(new_nat(), arp(EP_A, IP_A, IP_OUT, vlan=9))
    assert Ether(sent)[ARP].hwsrc == m(LOWER)


def test_ip_frames_change_only_the_source_mac() -> None:
    for frame in (tcp4(EP_A, OUTSIDE, IP_A, IP_OUT), udp6(EP_A, OUTSIDE, IP6_A, IP6_OUT)):
        sent = out(new_nat(), frame)
        assert sent[:6] == frame[:6] and sent[12:] == frame[12:]


@pytest.mark.parametrize(
    ("frame", "option"),
    [
        (neighbour_solicit(EP_A, IP6_A, IP6_OUT), ICMPv6NDOptSrcLLAddr),
        (neighbour_advert(EP_A, IP6_A, OUTSIDE, IP6_OUT), ICMPv6NDOptDstLLAddr),
        (router_solicit(EP_A, IP6_A), ICMPv6NDOptSrcLLAddr),
        (router_advert(EP_A, IP6_A), ICMPv6NDOptSrcLLAddr),
    ],
    ids=["ns", "na", "rs", "ra"],
)
def test_nd_link_layer_options_are_rewritten_with_the_checksum(
    frame: bytes, option: type[ICMPv6NDOptSrcLLAddr]
) -> None:
    sent = out(new_nat(), frame)
    assert Ether(sent)[option].lladdr == m(LOWER)
    assert icmpv6_checksum_ok(sent)
    assert EP_A not in sent


def test_partial_checksum_is_left_for_the_completion() -> None:
    frame = neighbour_advert(EP_A, IP6_A, OUTSIDE, IP6_OUT)
    sent = new_nat().translate_out("a", frame, 0.0, partial_checksum=True)
    assert isinstance(sent, bytes) and sent[56:58] == frame[56:58]  # ICMPv6 checksum
    assert Ether(sent)[ICMPv6NDOptDstLLAddr].lladdr == m(LOWER)


def test_dad_without_options_passes() -> None:
    frame = neighbour_solicit(EP_A, bytes(16), IP6_A_GLOBAL, lladdr=False)
    assert out(new_nat(), frame)[12:] == frame[12:]


def test_dhcp_request_gets_the_broadcast_flag_and_keeps_its_identity() -> None:
    nat = new_nat()
    frame = dhcp(EP_A, 0x1234, "discover")
    sent = out(nat, frame)
    bootp = Ether(sent)[BOOTP]
    assert bootp.flags == 0x8000 and bootp.chaddr[:6] == EP_A  # chaddr: the client's own
    assert (b"=\x07\x01" + EP_A) in sent  # client-id untouched
    assert udp_checksum_ok(sent)
    assert nat.transactions() == 1
    flagged = dhcp(EP_A, 0x1235, "request", flags=0x8000)
    assert out(nat, flagged)[12:] == flagged[12:]
    unchecked = dhcp(EP_A, 0x1236, "discover", udp_checksum=0)
    sent = out(nat, unchecked)
    assert Ether(sent)[BOOTP].flags == 0x8000 and sent[40:42] == b"\x00\x00"


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (raw(OUTSIDE, EP_A, 0x88CC), MacNatDrop.NON_IP),  # LLDP
        (raw(OUTSIDE, EP_A, 0x888E), MacNatDrop.NON_IP),  # EAPOL
        (EP_A * 2, MacNatDrop.RUNT),
        (redirect(EP_A, IP6_A, IP6_OUT), MacNatDrop.ND_REDIRECT),
    ],
    ids=["lldp", "eapol", "runt", "redirect"],
)
def test_untranslatable_frames_are_dropped_and_counted(frame: bytes, reason: MacNatDrop) -> None:
    nat = new_nat()
    assert nat.translate_out("a", frame, 0.0) is reason
    assert nat.translate_out("a", frame, 0.0) is reason
    assert nat.drops == {reason: 2}
    assert reason.value.startswith("macnat_")


def test_arp_other_than_ethernet_ipv4_is_dropped() -> None:
    frame = bytearray(arp(EP_A, IP_A, IP_OUT))
    frame[15] = 6
    nat = new_nat()
    assert nat.translate_out("a", bytes(frame), 0.0) is MacNatDrop.ARP_UNSUPPORTED


def test_nd_that_does_not_parse_is_dropped() -> None:
    frame = bytearray(neighbour_solicit(EP_A, IP6_A, IP6_OUT))
    frame[79] = 0  # option length 0
    nat = new_nat()
    assert nat.translate_out("a", bytes(frame), 0.0) is MacNatDrop.ICMPV6_MALFORMED
    frame[79] = 2  # an 16-byte "link-layer address": not Ethernet
    frame[19] += 8  # payload length covers it
    long_option = bytes(frame) + bytes(8)
    assert nat.translate_out("a", long_option, 0.0) is MacNatDrop.ICMPV6_MALFORMED
    assert nat.translate_out("a", bytes(frame[:70]), 0.0) is MacNatDrop.ICMPV6_MALFORMED


def test_rarp_asks_for_the_lower() -> None:
    from pymacvtap.core.announce import rarp

    sent = out(new_nat(), rarp(EP_A))
    assert EP_A not in sent and sent[22:28] == LOWER and sent[32:38] == LOWER


def test_translating_out_learns_the_senders_addresses() -> None:
    nat = new_nat()
    out(nat, arp(EP_A, IP_A, IP_OUT), now=5.0)
    assert nat.book.owner(IP_A, 5.0) == "a"


# -- wire -> endpoint ----------------------------------------------------------------------


def learned(nat: MacNat) -> MacNat:
    nat.book.learn("a", IP_A, Origin.ARP, 0.0)
    nat.book.learn("b", IP_B, Origin.ARP, 0.0)
    nat.book.learn("a", IP6_A, Origin.ND, 0.0)
    nat.book.learn("a", IP6_A_GLOBAL, Origin.IPV6_SOURCE, 0.0)
    return nat


def into(nat: MacNat, frame: bytes, now: float = 1.0) -> Inbound | None:
    return nat.classify_in(frame, now)


def test_arp_reply_goes_by_target_ip() -> None:
    nat = learned(new_nat())
    frame = arp(OUTSIDE, IP_OUT, IP_B, op=2, dst=LOWER, tha=LOWER)
    got = into(nat, frame)
    assert got is not None and got.endpoint == "b"
    assert got.data[:6] == EP_B and Ether(got.data)[ARP].hwdst == m(EP_B)
    assert got.data[6:32] == frame[6:32] and got.data[38:] == frame[38:]


def test_arp_for_the_hosts_address_stays_the_hosts() -> None:
    nat = learned(new_nat())
    assert into(nat, arp(OUTSIDE, IP_OUT, IP_HOST, op=2, dst=LOWER, tha=LOWER)) is None


def test_ipv4_goes_by_destination() -> None:
    nat = learned(new_nat())
    got = into(nat, tcp4(OUTSIDE, LOWER, IP_OUT, IP_A))
    assert got is not None and got.endpoint == "a" and got.data[:6] == EP_A
    assert into(nat, tcp4(OUTSIDE, LOWER, IP_OUT, IP_HOST)) is None


def test_ipv6_goes_by_destination_then_nd_target() -> None:
    nat = learned(new_nat())
    got = into(nat, udp6(OUTSIDE, LOWER, IP6_OUT, IP6_A_GLOBAL))
    assert got is not None and got.endpoint == "a" and got.data[:6] == EP_A
    probe = neighbour_solicit(OUTSIDE, IP6_OUT, IP6_A, dst=LOWER)
    got = into(nat, probe)
    assert got is not None and got.endpoint == "a"
    # A solicitation sent to the lower's own address but for the endpoint's target.
    odd = bytearray(probe)
    odd[38:54] = bytes.fromhex("fe80000000000000000000000000ffff")
    got = into(nat, bytes(odd))
    assert got is not None and got.endpoint == "a"


def test_frames_for_other_macs_and_unknown_addresses_are_not_ours() -> None:
    nat = learned(new_nat())
    assert into(nat, tcp4(OUTSIDE, EP_A, IP_OUT, IP_A)) is None  # not the lower's MAC
    assert into(nat, udp4(OUTSIDE, BROADCAST, IP_OUT, IP_A)) is None  # group, not DHCP
    assert into(nat, arp(OUTSIDE, IP_OUT, IP_A)) is None  # a broadcast request: flooded
    assert into(nat, raw(LOWER, OUTSIDE, 0x88CC)) is None
    assert into(nat, LOWER) is None


def test_address_of_an_endpoint_without_macnat_is_not_claimed() -> None:
    nat = learned(new_nat())
    nat.book.learn("plain", IP_HOST, Origin.ARP, 0.0)
    assert into(nat, tcp4(OUTSIDE, LOWER, IP_OUT, IP_HOST)) is None
    nat.remove_endpoint("a")
    assert into(nat, tcp4(OUTSIDE, LOWER, IP_OUT, IP_A)) is None


def test_dhcp_replies_go_by_transaction() -> None:
    nat = new_nat()
    out(nat, dhcp(EP_A, 0xAAAA, "discover"), "a", now=0.0)
    out(nat, dhcp(EP_B, 0xBBBB, "discover"), "b", now=0.0)
    for dst in (BROADCAST, LOWER):
        offer = dhcp(OUTSIDE, 0xBBBB, "offer", reply=True, chaddr=EP_B, yiaddr=IP_B, dst=dst)
        got = into(nat, offer, now=1.0)
        assert got is not None and got.endpoint == "b" and got.data[:6] == EP_B
        assert got.data[6:] == offer[6:]
    # The host's own DHCP client (chaddr = the lower's MAC) keeps its replies.
    host = dhcp(OUTSIDE, 0xBBBB, "offer", reply=True, chaddr=LOWER, yiaddr=IP_HOST)
    assert into(nat, host) is None
    late = dhcp(OUTSIDE, 0xAAAA, "ack", reply=True, chaddr=EP_A, yiaddr=IP_A)
    assert into(nat, late, now=61.0) is None  # the transaction was forgotten
    assert nat.transactions() == 1
    assert nat.expire(100.0) == 1 and nat.transactions() == 0


def test_dhcp_transactions_are_bounded() -> None:
    nat = MacNat(LOWER, AddressBook(), xid_capacity=4)
    nat.add_endpoint("a", EP_A)
    for xid in range(10):
        out(nat, dhcp(EP_A, xid, "discover"))
    assert nat.transactions() == 4
    assert into(nat, dhcp(OUTSIDE, 9, "offer", reply=True, chaddr=EP_A)) is not None
    assert into(nat, dhcp(OUTSIDE, 0, "offer", reply=True, chaddr=EP_A)) is None
    nat.remove_endpoint("a")
    assert nat.transactions() == 0 and "a" not in nat


def test_the_sender_of_a_reflected_frame_is_found_by_what_it_claimed() -> None:
    nat = learned(new_nat())
    for frame, sender in [
        (arp(EP_A, IP_A, IP_OUT), "a"),
        (arp(EP_B, IP_B, IP_OUT), "b"),
        (udp4(EP_B, BROADCAST, IP_B, IP_OUT), "b"),
        (router_solicit(EP_A, IP6_A), "a"),
        (neighbour_solicit(EP_A, bytes(16), IP6_A_GLOBAL, lladdr=False), "a"),
        (arp(EP_A, IP_HOST, IP_OUT), None),  # the host's own, reflected
        (raw(BROADCAST, EP_A, 0x88CC), None),
    ]:
        echoed = frame[:6] + LOWER + frame[12:]
        assert nat.sender_of(echoed, 1.0) == sender, frame
        assert nat.sender_of(frame, 1.0) is None  # not the lower's source MAC
