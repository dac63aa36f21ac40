"""Decoding is total: garbage from the wire gives None, never an exception."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from pymacvtap.core.dhcp import (
    Lease,
    LeaseAcquired,
    LeaseLost,
    LeaseRenewed,
    Message,
    MessageType,
    State,
    decode,
    encode,
    parse_frame,
)
from pymacvtap.core.dhcp.message import FIXED_SIZE, MAGIC_COOKIE
from tests.dhcp.helpers import MAC, OFFERED, SERVER, bind, make_client, reply

addresses = st.integers(0, 2**32 - 1).map(IPv4Address)
options = st.dictionaries(
    st.integers(1, 254).filter(lambda c: c != 52),  # 52 (overload) is consumed by decode
    st.binary(max_size=600),
    max_size=8,
)
messages = st.builds(
    Message,
    op=st.sampled_from([1, 2]),
    xid=st.integers(0, 2**32 - 1),
    chaddr=st.binary(min_size=6, max_size=6),
    options=options,
    secs=st.integers(0, 0xFFFF),
    flags=st.integers(0, 0xFFFF),
    ciaddr=addresses,
    yiaddr=addresses,
    siaddr=addresses,
    giaddr=addresses,
    hops=st.integers(0, 255),
)


@given(st.binary(max_size=1000))
def test_decode_never_raises_on_bytes(data: bytes) -> None:
    decode(data)


@given(st.binary(min_size=FIXED_SIZE, max_size=FIXED_SIZE), st.binary(max_size=600))
def test_decode_never_raises_past_the_cookie(head: bytes, tail: bytes) -> None:
    # Most random bytes stop at the cookie check; these reach the option parser.
    data = bytes((2,)) + head[1:] + MAGIC_COOKIE + tail
    msg = decode(data)
    if msg is not None:
        assert msg.op == 2


@given(st.binary(max_size=600))
def test_option_overload_garbage_never_raises(field: bytes) -> None:
    head = bytearray(FIXED_SIZE)
    head[0], head[2] = 2, 6
    head[44 : 44 + min(len(field), 192)] = field[:192]
    decode(bytes(head) + MAGIC_COOKIE + bytes((52, 1, 3, 255)))


@given(messages)
def test_encode_then_decode_gives_the_message_back(msg: Message) -> None:
    decoded = decode(encode(msg))
    assert decoded is not None
    assert decoded == msg


@given(st.binary(max_size=400))
def test_parse_frame_never_raises(data: bytes) -> None:
    parse_frame(data)


@given(st.binary(min_size=34, max_size=34), st.binary(max_size=400))
def test_parse_frame_never_raises_on_ipv4_udp(head: bytes, tail: bytes) -> None:
    frame = bytearray(head + tail)
    frame[12:14] = b"\x08\x00"
    frame[14] = 0x45
    frame[23] = 17
    parse_frame(bytes(frame))


@settings(max_examples=50)
@given(st.lists(st.binary(max_size=400), max_size=20))
def test_a_bound_client_survives_any_frames(frames: list[bytes]) -> None:
    client = make_client()
    bind(client, 0.0)
    for i, frame in enumerate(frames):
        client.receive_frame(frame, float(i))
        client.receive_datagram(frame, float(i))
    assert client.lease is not None


# -- the state machine under any sequence of answers and clock steps ---------------------

HAS_LEASE = {State.BOUND, State.RENEWING, State.REBINDING, State.REBOOTING}
NO_LEASE = {State.INIT, State.SELECTING, State.REQUESTING, State.STOPPED}
actions = st.lists(
    st.one_of(
        st.tuples(st.just("wait"), st.floats(0, 400)),
        st.tuples(st.just("timer"), st.just(0.0)),
        st.tuples(st.sampled_from(["offer", "ack", "nak", "ack-other"]), st.just(0.0)),
        st.tuples(st.sampled_from(["release", "decline", "restart"]), st.just(0.0)),
    ),
    max_size=40,
)


@settings(max_examples=300)
@given(actions, st.booleans())
def test_any_sequence_keeps_the_invariants(steps: list[tuple[str, float]], saved: bool) -> None:
    client = make_client(min_retry=5.0)
    now = 1000.0
    lease = Lease(OFFERED, 24, SERVER, 900.0, 600, 300, 525) if saved else None
    client.start(now, lease)
    last: Message | None = None
    for action, value in steps:
        if action == "wait":
            now += value
        elif action == "timer":
            timer = client.get_timer()
            now = max(now, timer if timer is not None else now)
            client.handle_timer(now)
        elif action in ("offer", "ack", "nak", "ack-other") and last is not None:
            kind = {"offer": MessageType.OFFER, "nak": MessageType.NAK}.get(action, MessageType.ACK)
            address = OFFERED if action != "ack-other" else IPv4Address("192.0.2.99")
            client.receive_datagram(reply(last, kind, yiaddr=address, lease_time=600), now)
        elif action == "release":
            client.release(now)
        elif action == "decline":
            client.decline(now)
        elif action == "restart":
            client.start(now, client.lease)
        for dgram in client.datagrams_to_send():
            msg = decode(dgram.payload)
            assert msg is not None and msg.op == 1 and msg.chaddr == MAC
            last = msg
        while (event := client.next_event()) is not None:
            if isinstance(event, LeaseAcquired | LeaseRenewed):
                assert event.lease.address in (OFFERED, IPv4Address("192.0.2.99"))
            else:
                assert isinstance(event, LeaseLost)
        # What holds in every state: a lease exactly where one is expected, and a timer
        # everywhere but STOPPED (no lease here is infinite).
        assert (client.lease is not None) == (client.state in HAS_LEASE), client.state
        assert (client.get_timer() is None) == (client.state is State.STOPPED)
        if client.lease is not None and client.state is not State.REBOOTING:
            timer = client.get_timer()
            assert timer is not None and timer <= client.lease.expires
