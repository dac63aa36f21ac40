"""Decoding is total: garbage from the wire gives None, never an exception."""

from __future__ import annotations

from ipaddress import IPv4Address

from hypothesis import given, settings
from hypothesis import strategies as st

from pymacvtap.core.dhcp import Message, decode, encode, parse_frame
from pymacvtap.core.dhcp.message import FIXED_SIZE, MAGIC_COOKIE
from tests.dhcp.helpers import bind, make_client

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
