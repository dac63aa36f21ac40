"""The DHCP client's state machine, call by call: what it sends, when, and what it reports."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from pymacvtap.core.dhcp import (
    Lease,
    LeaseAcquired,
    LeaseError,
    LeaseLost,
    LeaseRenewed,
    MessageType,
    Option,
    State,
    client_id_for,
    parse_frame,
)
from tests.dhcp.helpers import (
    MAC,
    OFFERED,
    OTHER_SERVER,
    SERVER,
    SERVER_MAC,
    answer_frame,
    bind,
    events,
    make_client,
    reply,
    sent,
)

D, OFFER, R, A, N, REL = (
    MessageType.DISCOVER,
    MessageType.OFFER,
    MessageType.REQUEST,
    MessageType.ACK,
    MessageType.NAK,
    MessageType.RELEASE,
)
ZERO = IPv4Address(0)


# -- getting a lease -------------------------------------------------------------------


def test_discover_offer_request_ack() -> None:
    client = make_client()
    client.start(100.0)
    (discover,) = sent(client)
    assert discover.kind is D and discover.broadcast and discover.dgram.src_ip == ZERO
    assert discover.dgram.dst_mac == b"\xff" * 6 and discover.dgram.src_mac == MAC
    assert discover.msg.chaddr == MAC
    assert discover.msg.options[Option.CLIENT_ID] == b"\xff\x01\x02\x03\x04id"
    assert discover.msg.options[Option.HOSTNAME] == b"c1"
    assert Option.SERVER_ID not in discover.msg.options
    assert client.state is State.SELECTING and client.get_timer() == 104.0

    client.receive_frame(answer_frame(reply(discover.msg, OFFER)), 101.0)
    (request,) = sent(client)
    assert request.kind is R and request.broadcast and request.msg.ciaddr == ZERO
    assert request.msg.xid == discover.msg.xid
    assert request.msg.address(Option.SERVER_ID) == SERVER
    assert request.msg.address(Option.REQUESTED_IP) == OFFERED
    assert client.state is State.REQUESTING

    client.receive_frame(answer_frame(reply(request.msg, A, lease_time=600)), 102.0)
    (event,) = events(client)
    assert isinstance(event, LeaseAcquired)
    lease = event.lease
    assert (lease.address, lease.prefixlen, lease.server_id) == (OFFERED, 24, SERVER)
    assert lease.routers == (IPv4Address("192.0.2.254"),)
    assert lease.dns == (IPv4Address("192.0.2.53"), IPv4Address("192.0.2.54"))
    assert lease.server_mac == SERVER_MAC
    # The lease dates from when the REQUEST went out, not from the ACK (RFC 2131 4.4.1).
    assert (lease.obtained, lease.t1, lease.t2, lease.expires) == (101.0, 401.0, 626.0, 701.0)
    assert client.state is State.BOUND and client.get_timer() == 401.0
    assert sent(client) == []


def test_server_timers_are_used_when_in_order_else_the_defaults() -> None:
    client = make_client()
    bind(client, lease_time=1000, t1=100, t2=200)
    assert client.lease is not None
    assert (client.lease.renewal_time, client.lease.rebinding_time) == (100, 200)
    client = make_client()
    bind(client, lease_time=1000, t1=300, t2=200)  # T1 after T2: both defaults? T2 kept
    assert client.lease is not None
    assert (client.lease.renewal_time, client.lease.rebinding_time) == (500, 200)


def test_first_offer_wins_and_later_ones_are_ignored() -> None:
    client = make_client()
    client.start(0.0)
    (discover,) = sent(client)
    client.receive_datagram(reply(discover.msg, OFFER), 1.0)
    client.receive_datagram(reply(discover.msg, OFFER, server=OTHER_SERVER), 1.5)
    (request,) = sent(client)
    assert request.msg.address(Option.SERVER_ID) == SERVER


@pytest.mark.parametrize(
    ("what", "reply_args"),
    [
        ("another transaction", {"xid": 1}),
        ("another client's hardware address", {"chaddr": bytes(6)}),
        ("no server identifier", {"server": None}),
        ("no address", {"yiaddr": ZERO}),
    ],
)
def test_offers_not_for_us_or_unusable_are_ignored(
    what: str, reply_args: dict[str, object]
) -> None:
    client = make_client()
    client.start(0.0)
    (discover,) = sent(client)
    client.receive_datagram(reply(discover.msg, OFFER, **reply_args), 1.0)  # type: ignore[arg-type]
    assert client.state is State.SELECTING, what
    assert sent(client) == []


def test_ack_from_a_server_we_did_not_choose_is_ignored() -> None:
    client = make_client()
    client.start(0.0)
    (discover,) = sent(client)
    client.receive_datagram(reply(discover.msg, OFFER), 1.0)
    (request,) = sent(client)
    client.receive_datagram(reply(request.msg, A, server=OTHER_SERVER), 1.0)
    client.receive_datagram(reply(request.msg, N, server=OTHER_SERVER), 1.0)
    assert client.state is State.REQUESTING and events(client) == []


def test_an_ack_without_lease_time_is_ignored() -> None:
    client = make_client()
    client.start(0.0)
    (discover,) = sent(client)
    client.receive_datagram(reply(discover.msg, OFFER), 1.0)
    (request,) = sent(client)
    client.receive_datagram(reply(request.msg, A, lease_time=None), 1.0)
    assert client.state is State.REQUESTING


def test_broadcast_flag_when_asked() -> None:
    client = make_client(broadcast_flag=True)
    client.start(0.0)
    (discover,) = sent(client)
    assert discover.msg.flags == 0x8000


# -- retransmission --------------------------------------------------------------------


def test_discover_backs_off_4_8_16_32_64_then_stays_at_64() -> None:
    client = make_client()
    client.start(0.0)
    times = []
    for _ in range(7):
        assert [s.kind for s in sent(client)] == [D]
        timer = client.get_timer()
        assert timer is not None
        times.append(timer)
        client.handle_timer(timer - 0.5)  # early: nothing happens
        assert sent(client) == []
        client.handle_timer(timer)
    assert times == [4, 12, 28, 60, 124, 188, 252]


def test_backoff_jitter_comes_from_the_entropy_given() -> None:
    from pymacvtap.core.dhcp import DhcpClient

    low = DhcpClient(MAC, lambda n: bytes(n))  # jitter -1 s
    high = DhcpClient(MAC, lambda n: b"\xff" * n)  # jitter just under +1 s
    low.start(0.0)
    high.start(0.0)
    assert low.get_timer() == 3.0
    timer = high.get_timer()
    assert timer is not None and 4.99 < timer < 5.0


def test_request_unanswered_goes_back_to_discover() -> None:
    client = make_client(request_attempts=3)
    client.start(0.0)
    (discover,) = sent(client)
    client.receive_datagram(reply(discover.msg, OFFER), 0.0)
    kinds = []
    for _ in range(4):
        kinds += [s.kind for s in sent(client)]
        timer = client.get_timer()
        assert timer is not None
        client.handle_timer(timer)
    assert kinds == [R, R, R, D]
    assert client.state is State.SELECTING and events(client) == []


# -- renewing, rebinding, expiry ----------------------------------------------------------


def test_renewal_is_unicast_to_the_server_and_extends_the_lease() -> None:
    client = make_client()
    bind(client, 0.0, lease_time=600)
    assert client.get_timer() == 300.0
    client.handle_timer(300.0)
    (renew,) = sent(client)
    assert client.state is State.RENEWING
    assert renew.kind is R and not renew.broadcast
    assert renew.dgram.dst_ip == SERVER and renew.dgram.dst_mac == SERVER_MAC
    assert renew.dgram.src_ip == OFFERED and renew.msg.ciaddr == OFFERED
    assert Option.SERVER_ID not in renew.msg.options
    assert Option.REQUESTED_IP not in renew.msg.options
    client.receive_frame(answer_frame(reply(renew.msg, A, lease_time=600)), 301.0)
    (event,) = events(client)
    assert isinstance(event, LeaseRenewed) and event.lease.obtained == 300.0
    assert client.state is State.BOUND and client.get_timer() == 600.0


@pytest.mark.parametrize(
    ("lease_time", "min_retry", "renew_times", "rebind_times"),
    [
        # half the time left to T2 (resp. expiry), at least min_retry, never past T2 (expiry)
        (600, 60.0, [300.0, 412.5, 472.5], [525.0, 585.0]),
        (
            600,
            10.0,
            [300.0, 412.5, 468.75, 496.875, 510.9375, 520.9375],
            [525.0, 562.5, 581.25, 591.25],
        ),
        (
            3600,
            60.0,
            [1800.0, 2475.0, 2812.5, 2981.25, 3065.625, 3125.625],
            [3150.0, 3375.0, 3487.5, 3547.5],
        ),
    ],
)
def test_renew_and_rebind_retransmissions_then_expiry(
    lease_time: int,
    min_retry: float,
    renew_times: list[float],
    rebind_times: list[float],
) -> None:
    client = make_client(min_retry=min_retry)
    bind(client, 0.0, lease_time=lease_time)
    seen: list[tuple[float, MessageType, bool, State]] = []
    while True:
        timer = client.get_timer()
        assert timer is not None
        client.handle_timer(timer)
        out = sent(client)
        if client.state is State.SELECTING:
            break
        (msg,) = out
        seen.append((timer, msg.kind, msg.broadcast, client.state))
    assert seen == [(t, R, False, State.RENEWING) for t in renew_times] + [
        (t, R, True, State.REBINDING) for t in rebind_times
    ]
    (lost,) = events(client)
    assert isinstance(lost, LeaseLost) and lost.reason == "expired"
    assert timer == float(lease_time)
    assert [m.kind for m in out] == [D] and client.lease is None


def test_rebinding_is_broadcast_with_ciaddr_and_any_server_may_answer() -> None:
    client = make_client()
    bind(client, 0.0, lease_time=800)  # T1 400, T2 700
    client.handle_timer(400.0)
    sent(client)
    client.handle_timer(700.0)
    (rebind,) = sent(client)
    assert client.state is State.REBINDING and rebind.broadcast
    assert rebind.dgram.dst_mac == b"\xff" * 6 and rebind.msg.ciaddr == OFFERED
    assert Option.SERVER_ID not in rebind.msg.options
    client.receive_datagram(reply(rebind.msg, A, server=OTHER_SERVER, lease_time=800), 701.0)
    (event,) = events(client)
    assert isinstance(event, LeaseRenewed) and event.lease.server_id == OTHER_SERVER


def test_renewal_with_another_address_loses_the_old_one() -> None:
    client = make_client()
    bind(client, 0.0)
    client.handle_timer(300.0)
    (renew,) = sent(client)
    new = IPv4Address("192.0.2.77")
    client.receive_datagram(reply(renew.msg, A, yiaddr=new), 301.0)
    lost, acquired = events(client)
    assert isinstance(lost, LeaseLost) and lost.reason == "changed"
    assert lost.lease.address == OFFERED
    assert isinstance(acquired, LeaseAcquired) and acquired.lease.address == new


# -- NAK ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("when", "at"), [("renewing", [300.0]), ("rebinding", [300.0, 525.0])])
def test_nak_while_bound_loses_the_lease_and_starts_over(when: str, at: list[float]) -> None:
    client = make_client()
    bind(client, 0.0)
    for now in at:
        client.handle_timer(now)
        (request,) = sent(client)
    assert client.state.value == when
    client.receive_datagram(reply(request.msg, N), 530.0)
    (lost,) = events(client)
    assert isinstance(lost, LeaseLost) and lost.reason == "nak"
    (discover,) = sent(client)
    assert discover.kind is D
    assert client.state is State.SELECTING and client.lease is None


def test_nak_in_requesting_restarts_at_once_then_backs_off() -> None:
    client = make_client()
    client.start(0.0)
    delays = []
    now = 0.0
    for _ in range(5):
        (discover,) = sent(client)
        client.receive_datagram(reply(discover.msg, OFFER), now)
        (request,) = sent(client)
        client.receive_datagram(reply(request.msg, N), now)
        assert events(client) == []  # there was no lease to lose
        if client.state is State.INIT:
            timer = client.get_timer()
            assert timer is not None
            delays.append(timer - now)
            now = timer
            client.handle_timer(now)
        else:
            delays.append(0.0)
    assert delays == [0.0, 1.0, 3.0, 7.0, 15.0]


# -- resuming a saved lease (INIT-REBOOT) ----------------------------------------------


def saved_lease(obtained: float = 0.0) -> Lease:
    return Lease(
        address=OFFERED,
        prefixlen=24,
        server_id=SERVER,
        obtained=obtained,
        lease_time=600,
        renewal_time=300,
        rebinding_time=525,
        server_mac=SERVER_MAC,
    )


def test_resume_confirms_the_saved_lease_by_broadcast() -> None:
    client = make_client()
    client.start(100.0, saved_lease())
    (request,) = sent(client)
    assert client.state is State.REBOOTING
    assert request.kind is R and request.broadcast and request.msg.ciaddr == ZERO
    assert request.msg.address(Option.REQUESTED_IP) == OFFERED
    assert Option.SERVER_ID not in request.msg.options
    client.receive_datagram(reply(request.msg, A), 101.0)
    (event,) = events(client)
    assert isinstance(event, LeaseAcquired) and event.lease.obtained == 100.0
    assert client.state is State.BOUND and client.get_timer() == 400.0


def test_resume_nak_starts_over() -> None:
    client = make_client()
    client.start(100.0, saved_lease())
    (request,) = sent(client)
    client.receive_datagram(reply(request.msg, N), 101.0)
    (lost,) = events(client)
    assert isinstance(lost, LeaseLost) and lost.reason == "nak"
    assert [s.kind for s in sent(client)] == [D]


def test_resume_unanswered_keeps_the_saved_lease_until_it_ends() -> None:
    client = make_client(request_attempts=2)
    client.start(350.0, saved_lease())
    assert [s.kind for s in sent(client)] == [R]
    client.handle_timer(354.0)
    assert [s.kind for s in sent(client)] == [R]
    client.handle_timer(362.0)
    (event,) = events(client)
    assert isinstance(event, LeaseAcquired) and event.lease == saved_lease()
    # Past T1 already: the renewal is due at once, unicast.
    assert client.state is State.BOUND and client.get_timer() == 362.0
    client.handle_timer(362.0)
    (renew,) = sent(client)
    assert client.state is State.RENEWING and renew.dgram.dst_ip == SERVER


def test_resume_of_an_expired_lease_is_a_fresh_start() -> None:
    client = make_client()
    client.start(600.0, saved_lease())
    assert [s.kind for s in sent(client)] == [D]
    assert events(client) == []


# -- release ---------------------------------------------------------------------------


def test_release_is_unicast_and_stops_the_client() -> None:
    client = make_client()
    bind(client, 0.0)
    client.release(10.0)
    (release,) = sent(client)
    assert release.kind is REL and release.dgram.dst_ip == SERVER
    assert release.dgram.dst_mac == SERVER_MAC and release.msg.ciaddr == OFFERED
    assert release.msg.address(Option.SERVER_ID) == SERVER
    (lost,) = events(client)
    assert isinstance(lost, LeaseLost) and lost.reason == "released"
    assert client.state is State.STOPPED and client.get_timer() is None
    client.handle_timer(1e9)
    assert sent(client) == []


def test_release_without_a_lease_just_stops() -> None:
    client = make_client()
    client.start(0.0)
    sent(client)
    client.release(1.0)
    assert sent(client) == [] and events(client) == []
    assert client.get_timer() is None


# -- frames, lease file, client-id -----------------------------------------------------


def test_frames_carry_correct_headers() -> None:
    client = make_client()
    client.start(0.0)
    (frame,) = client.frames_to_send()
    dgram = parse_frame(frame)
    assert dgram is not None
    assert (dgram.src_port, dgram.dst_port, dgram.src_mac) == (68, 67, MAC)
    ip = frame[14:34]
    assert _sum16(ip) == 0xFFFF  # the IPv4 header checksum
    udp = frame[34:]
    pseudo = ip[12:20] + b"\x00\x11" + len(udp).to_bytes(2, "big")
    assert _sum16(pseudo + udp) == 0xFFFF  # the UDP checksum


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_frames_for_another_mac_are_ignored() -> None:
    client = make_client()
    client.start(0.0)
    (discover,) = sent(client)
    frame = bytearray(answer_frame(reply(discover.msg, OFFER)))
    frame[0:6] = bytes.fromhex("020000000099")
    client.receive_frame(bytes(frame), 0.0)
    assert client.state is State.SELECTING


def test_lease_round_trips_through_its_dict() -> None:
    lease = saved_lease(12.5)
    assert Lease.from_dict(lease.to_dict()) == lease
    full = Lease(
        OFFERED, 24, SERVER, 1.0, Lease.INFINITE, Lease.INFINITE, Lease.INFINITE,
        routers=(SERVER,), dns=(SERVER, OTHER_SERVER), domain="lan", mtu=1400,
    )  # fmt: skip
    assert Lease.from_dict(full.to_dict()) == full
    assert full.infinite and not full.expired(1e12)


@pytest.mark.parametrize(
    "change",
    [
        {"address": "not an address"},
        {"prefixlen": 33},
        {"prefixlen": True},
        {"obtained": "yesterday"},
        {"routers": ["1.2.3.4", 5]},
        {"server_mac": "zz"},
        {"lease_time": None},
    ],
)
def test_bad_saved_leases_are_refused_with_lease_error(change: dict[str, object]) -> None:
    data = saved_lease().to_dict() | change
    with pytest.raises(LeaseError):
        Lease.from_dict(data)
    with pytest.raises(LeaseError):
        Lease.from_dict([1, 2])


def test_client_id_is_stable_per_name_and_mac() -> None:
    one = client_id_for("c1", MAC)
    assert one == client_id_for("c1", MAC)
    assert one[0] == 0xFF and one[5:] == b"\x00\x03\x00\x01" + MAC
    assert client_id_for("c2", MAC) != one
    assert client_id_for("c1", SERVER_MAC) != one
    duid = b"\x00\x04" + bytes(range(16))
    assert client_id_for("c1", MAC, duid) == client_id_for("c1", SERVER_MAC, duid)


def test_decline_gives_the_address_back_and_waits_10_seconds() -> None:
    client = make_client()
    bind(client, 0.0)
    client.decline(5.0)
    (decline,) = sent(client)
    assert decline.kind is MessageType.DECLINE and decline.broadcast
    assert decline.msg.ciaddr == ZERO
    assert decline.msg.address(Option.REQUESTED_IP) == OFFERED
    assert decline.msg.address(Option.SERVER_ID) == SERVER
    (lost,) = events(client)
    assert isinstance(lost, LeaseLost) and lost.reason == "declined"
    assert client.state is State.INIT and client.get_timer() == 15.0
    client.handle_timer(15.0)
    assert [s.kind for s in sent(client)] == [D]


def test_release_while_confirming_a_saved_lease_releases_it() -> None:
    client = make_client()
    client.start(100.0, saved_lease())
    sent(client)
    client.release(101.0)
    (release,) = sent(client)
    assert release.kind is REL and release.dgram.dst_mac == SERVER_MAC
    (lost,) = events(client)
    assert isinstance(lost, LeaseLost) and lost.reason == "released"
