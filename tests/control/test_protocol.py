"""The sans-I/O protocol: framing, validation, and that garbage only ever gives ProtocolError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pymacvtap.control.protocol import (
    MAX_MESSAGE,
    PROTOCOL_VERSION,
    Event,
    ProtocolError,
    Reply,
    ReplyDecoder,
    Request,
    RequestDecoder,
    check_args,
    describe,
    encode,
    encode_error,
    encode_event,
    encode_ok,
    encode_request,
    with_prefix,
)


def decode_all(dec: RequestDecoder) -> list[Request | ProtocolError]:
    out: list[Request | ProtocolError] = []
    while True:
        try:
            req = dec.next_request()
        except ProtocolError as exc:
            out.append(exc)
            if exc.fatal:
                return out
            continue
        if req is None:
            return out
        out.append(req)


def test_request_round_trip() -> None:
    dec = RequestDecoder()
    dec.feed(encode_request(7, "link.show", {"name": "vm0", "stats": True}))
    assert dec.next_request() == Request(7, "link.show", {"name": "vm0", "stats": True})
    assert dec.next_request() is None


def test_reply_and_event_round_trip() -> None:
    dec = ReplyDecoder()
    dec.feed(encode_ok(1, [{"ifname": "vm0"}]) + encode_event({"event": "link.add"}))
    dec.feed(encode_error(2, "EPERM", "link add vm0: permission denied") + encode_ok(3, None, 2))
    assert list(dec) == [
        Reply(1, True, [{"ifname": "vm0"}]),
        Event({"event": "link.add"}),
        Reply(2, False, None, "EPERM", "link add vm0: permission denied"),
        Reply(3, True, None, fds=2),
    ]


def test_encode_any_message() -> None:
    msgs: list[Request | Reply | Event] = [
        Request(1, "version", {}),
        Reply(1, True, {"a": 1}),
        Reply(None, False, None, "EPROTO", "bad"),
        Event({"event": "x"}),
    ]
    data = b"".join(encode(m) for m in msgs)
    assert data.count(b"\n") == 4
    for line in data.splitlines():
        assert json.loads(line)["v"] == PROTOCOL_VERSION
    dec = ReplyDecoder()
    dec.feed(data[data.index(b"\n") + 1 :])
    assert list(dec) == msgs[1:]


def test_partial_lines_byte_by_byte() -> None:
    data = encode_request(1, "version") + encode_request(2, "link.del", {"name": "vm0"})
    dec = RequestDecoder()
    got: list[Request] = []
    for i in range(len(data)):
        dec.feed(data[i : i + 1])
        got.extend(dec)
    assert [r.id for r in got] == [1, 2]
    assert dec.buffered == 0


def test_many_messages_in_one_feed() -> None:
    n = 12_000
    data = b"".join(encode_request(i, "link.show", {}) for i in range(n))
    dec = RequestDecoder()
    dec.feed(data[: len(data) // 2])
    first = list(dec)
    dec.feed(data[len(data) // 2 :])
    ids = [r.id for r in first + list(dec)]
    assert ids == list(range(n))


def test_blank_lines_are_skipped() -> None:
    dec = RequestDecoder()
    dec.feed(b"\n \r\n" + encode_request(5, "version") + b"\n")
    assert [r.id for r in dec] == [5]


@pytest.mark.parametrize(
    ("line", "code", "fragment", "msg_id"),
    [
        (b"{not json", "EPROTO", "not valid JSON", None),
        (b"\xff\xfe{}", "EPROTO", "not valid UTF-8", None),
        (b"[1, 2]", "EPROTO", "must be a JSON object, not array", None),
        (b'"hi"', "EPROTO", "not string", None),
        (b'{"id": 1, "verb": "version"}', "EPROTONOSUPPORT", 'no protocol version ("v")', 1),
        (
            b'{"v": 2, "id": 4, "verb": "version"}',
            "EPROTONOSUPPORT",
            "protocol version 2; this side speaks protocol version 1",
            4,
        ),
        (b'{"v": "1", "id": 4}', "EPROTONOSUPPORT", 'protocol version "1"', 4),
        (b'{"v": 1, "verb": "version"}', "EPROTO", 'no integer "id"', None),
        (b'{"v": 1, "id": "x", "verb": "version"}', "EPROTO", '"id" must be an integer', None),
        (b'{"v": 1, "id": true, "verb": "version"}', "EPROTO", "not boolean", None),
        (b'{"v": 1, "id": 3}', "EPROTO", 'no "verb"', 3),
        (b'{"v": 1, "id": 3, "verb": 5}', "EPROTO", 'no "verb"', 3),
        (b'{"v": 1, "id": 3, "verb": "version", "args": []}', "EPROTO", '"args" must be', 3),
        (b'{"v": 1, "id": 3, "verb": "version", "x": 1}', "EPROTO", "unknown field(s): x", 3),
        (b"[" * 100_000, "EMSGSIZE", "longer than", None),
    ],
)
def test_bad_requests(line: bytes, code: str, fragment: str, msg_id: int | None) -> None:
    dec = RequestDecoder()
    dec.feed(line + b"\n")
    with pytest.raises(ProtocolError) as info:
        dec.next_request()
    assert info.value.code == code
    assert fragment in info.value.message
    assert info.value.id == msg_id


def test_deep_nesting_is_a_protocol_error() -> None:
    dec = RequestDecoder()
    dec.feed(b"[" * 50_000 + b"]" * 50_000 + b"\n")
    with pytest.raises(ProtocolError):
        dec.next_request()


def test_bad_line_does_not_spoil_the_next() -> None:
    dec = RequestDecoder()
    dec.feed(b"garbage\n" + encode_request(2, "version"))
    out = decode_all(dec)
    assert isinstance(out[0], ProtocolError) and not out[0].fatal
    assert out[1] == Request(2, "version", {})


def test_oversize_partial_line_is_fatal_and_bounded() -> None:
    dec = RequestDecoder()
    dec.feed(encode_request(1, "version"))
    for _ in range(10):
        dec.feed(b"x" * 10_000)
    assert dec.buffered <= MAX_MESSAGE + 100
    out = decode_all(dec)
    assert out[0] == Request(1, "version", {})  # what came before is still served
    assert isinstance(out[1], ProtocolError) and out[1].fatal and out[1].code == "EMSGSIZE"
    dec.feed(encode_request(3, "version"))  # ignored: the stream is broken
    with pytest.raises(ProtocolError):
        dec.next_request()


def test_line_of_exactly_max_size_is_accepted() -> None:
    pad = MAX_MESSAGE - len(encode_request(1, "link.show", {"name": ""}))
    line = encode_request(1, "link.show", {"name": "n" * (pad + 1)})
    assert len(line) == MAX_MESSAGE + 1  # the newline is not counted
    dec = RequestDecoder()
    dec.feed(line)
    req = dec.next_request()
    assert req is not None and req.id == 1
    dec.feed(encode_request(2, "link.show", {"name": "n" * (pad + 2)}))
    with pytest.raises(ProtocolError) as info:
        dec.next_request()
    assert info.value.fatal


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b'{"v": 1, "id": 1}', 'no boolean "ok"'),
        (b'{"v": 1, "id": 1, "ok": false}', '"error": {"code"'),
        (b'{"v": 1, "id": 1, "ok": false, "error": {"code": 1, "message": ""}}', '"error"'),
        (b'{"v": 1, "event": 3}', '"event" must be an object'),
        (b'{"v": 1, "id": 1.5, "ok": true}', '"id" must be an integer'),
        (b'{"v": 1, "id": 1, "ok": true, "fds": -1}', '"fds"'),
    ],
)
def test_bad_replies(line: bytes, fragment: str) -> None:
    dec = ReplyDecoder()
    dec.feed(line + b"\n")
    with pytest.raises(ProtocolError) as info:
        dec.next_message()
    assert fragment in info.value.message


@given(st.lists(st.binary(max_size=300), max_size=20))
@settings(max_examples=400, deadline=None)
def test_fuzz_arbitrary_bytes_request(chunks: list[bytes]) -> None:
    dec = RequestDecoder(max_size=256)
    for chunk in chunks:
        dec.feed(chunk)
        for item in decode_all(dec):
            if isinstance(item, Request):
                check_args_or_protocol_error(item)


def check_args_or_protocol_error(req: Request) -> None:
    with contextlib.suppress(ProtocolError):
        check_args(req.verb, req.args)
    describe(req.verb, req.args)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["v", "id", "verb", "args", "ok", "result", "error", "event", "fds"]),
        json_values,
    )
)
@settings(max_examples=500, deadline=None)
def test_fuzz_json_objects_both_sides(obj: dict[str, Any]) -> None:
    line = json.dumps(obj).encode() + b"\n"
    for dec in (RequestDecoder(), ReplyDecoder()):
        dec.feed(line)
        try:
            msg = dec.next_request() if isinstance(dec, RequestDecoder) else dec.next_message()
        except ProtocolError:
            continue
        if isinstance(msg, Request):
            check_args_or_protocol_error(msg)


@given(st.lists(st.sampled_from([b"{", b"}", b"\n", b'"', b"\\", b"1", b"[", b"]", b"\xc3"])))
def test_fuzz_json_ish_bytes(parts: list[bytes]) -> None:
    dec = ReplyDecoder(max_size=64)
    dec.feed(b"".join(parts))
    while True:
        try:
            if dec.next_message() is None:
                break
        except ProtocolError as exc:
            if exc.fatal:
                break


@pytest.mark.parametrize(
    ("verb", "args", "fragment"),
    [
        ("link.frob", {}, "unknown verb 'link.frob'"),
        ("link.del", {}, '"name": a non-empty string is required'),
        ("link.del", {"name": ""}, "non-empty"),
        ("link.del", {"name": 3}, "non-empty"),
        ("link.del", {"name": "a\nb"}, "not a valid endpoint name"),
        ("link.del", {"name": "vm0", "force": True}, "unknown argument(s): force"),
        ("link.show", {"stats": "yes"}, '"stats" must be a boolean'),
        ("link.set", {"name": "vm0"}, '"changes" must be an object'),
        ("link.set", {"name": "vm0", "changes": {"colour": 1}}, "unknown attribute 'colour'"),
        ("link.set", {"name": "vm0", "changes": {"mtu": "9000"}}, "mtu: wrong type string"),
        ("link.set", {"name": "vm0", "changes": {"up": 1}}, "up: wrong type number"),
        ("link.set", {"name": "vm0", "changes": {"mtu": True}}, "mtu: wrong type boolean"),
        (
            "link.set",
            {"name": "vm0", "changes": {"macaddr": {"op": "zap"}}},
            "op must be one of add, del, set, flush",
        ),
        (
            "link.set",
            {"name": "vm0", "changes": {"macaddr": {"op": "add", "addresses": [1]}}},
            "list of strings",
        ),
        ("link.add", {"link": "eth0"}, '"name"'),
        ("monitor", {"x": 1}, "unknown argument(s): x"),
    ],
)
def test_check_args_refusals(verb: str, args: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        check_args(verb, args)
    assert fragment in info.value.message
    assert info.value.code in ("EINVAL", "EOPNOTSUPP")


def test_check_args_accepts() -> None:
    check_args("link.show", {})
    check_args("link.show", {"name": "vm0", "stats": True})
    check_args(
        "link.set",
        {
            "name": "vm0",
            "changes": {
                "up": True,
                "address": "02:00:00:00:00:01",
                "mtu": 9000,
                "mode": "bridge",
                "spoofchk": False,
                "macaddr": {"op": "flush", "addresses": []},
            },
        },
    )
    check_args("link.add", {"name": "vm0", "link": "eth0"})
    check_args("version", {})


def test_describe_and_prefix() -> None:
    assert describe("link.add", {"name": "vm0"}) == "link add vm0"
    assert describe("link.show", {}) == "link show"
    assert with_prefix("link add vm0", "link add vm0: busy") == "link add vm0: busy"
    assert with_prefix("link add vm0", "vm0: busy", "vm0") == "link add vm0: busy"
    assert with_prefix("link add vm0", "busy", "vm0") == "link add vm0: busy"
    assert with_prefix("link add vm0", "link add vm01: x") == "link add vm0: link add vm01: x"
