"""The control server on a real Unix socket, its Loop in a background thread."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pymacvtap.control import auth
from pymacvtap.control.auth import Caller
from pymacvtap.control.client import Client, ClientError, RemoteError
from pymacvtap.control.protocol import MAX_MESSAGE, encode_request
from pymacvtap.control.server import ROOT_RESERVE, ControlServer
from pymacvtap.io.loop import Loop

from .fakes import FakeService, RunningServer

VM0 = {"name": "vm0", "link": "eth0", "type": "macvtap", "owner": 1001, "group": 2001}


def raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    return sock


def read_lines(sock: socket.socket, n: int) -> list[dict[str, Any]]:
    buf = b""
    while buf.count(b"\n") < n:
        data = sock.recv(65536)
        assert data, f"connection closed after {buf!r}"
        buf += data
    return [json.loads(line) for line in buf.splitlines()[:n]]


def read_until_eof(sock: socket.socket) -> bytes:
    buf = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return buf
        buf += data


def test_socket_file_and_directory_modes(running: RunningServer) -> None:
    st = os.stat(running.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert stat.S_IMODE(os.stat(os.path.dirname(running.path)).st_mode) == 0o755


def test_version_and_link_verbs_round_trip(running: RunningServer) -> None:
    with Client(running.path, timeout=10) as c:
        assert c.request("version") == {"version": "0.1.0", "protocol": 1}
        entry = c.request("link.add", VM0)
        assert entry["ifname"] == "vm0" and entry["owner"] == 1001
        assert [e["ifname"] for e in c.request("link.show", {})] == ["vm0"]
        shown = c.request("link.show", {"name": "vm0", "stats": True})
        assert shown[0]["stats64"]["rx"]["multicast"] == 0
        changed = c.request("link.set", {"name": "vm0", "changes": {"up": False, "mtu": 9000}})
        assert changed["operstate"] == "DOWN" and changed["mtu"] == 9000
        assert c.request("link.del", {"name": "vm0"}) is None
        assert c.request("link.show", {}) == []


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (dict(VM0, name="vm0"), "EEXIST", "link add vm0: an endpoint of that name exists"),
        (dict(VM0, name="bare"), "EBUSY", "link add bare: lower busy"),
        (dict(VM0, name="named"), "EBUSY", "link add named: lower busy"),
        (dict(VM0, name="oserr"), "ENOENT", "link add oserr: /run/netns/x: No such file"),
        (dict(VM0, name="vm1", mode="fast"), "EINVAL", "link add vm1: mode fast: unknown"),
        (dict(VM0, name="vm1", colour="red"), "EINVAL", "link add vm1: unknown attribute(s)"),
        (dict(VM0, name="vm1", mtu="big"), "EINVAL", "link add vm1: mtu: wrong type str"),
        (
            dict(VM0, name="vm1", address="01:00:5e:00:00:01"),
            "EADDRNOTAVAIL",
            "link add vm1: ",
        ),
    ],
)
def test_errors_are_prefixed_once(
    running: RunningServer, args: dict[str, Any], code: str, message: str
) -> None:
    with Client(running.path, timeout=10) as c:
        c.request("link.add", VM0)
        with pytest.raises(RemoteError) as info:
            c.request("link.add", args)
    assert info.value.code == code
    assert info.value.message.startswith(message)
    assert info.value.message.count(f"link add {args['name']}") == 1
    assert "\n" not in info.value.message


def test_no_such_endpoint(running: RunningServer) -> None:
    with Client(running.path, timeout=10) as c:
        cases: list[tuple[str, dict[str, Any]]] = [
            ("link.del", {"name": "nope"}),
            ("link.show", {"name": "nope"}),
            ("link.set", {"name": "nope", "changes": {"up": True}}),
        ]
        for verb, args in cases:
            with pytest.raises(RemoteError) as info:
                c.request(verb, args)
            assert info.value.code == "ENODEV"
            assert info.value.message == f"{verb.replace('.', ' ')} nope: no such endpoint"


def test_internal_error_is_eio_logged_and_serving_continues(
    running: RunningServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="test"), Client(running.path, timeout=10) as c:
        with pytest.raises(RemoteError) as info:
            c.request("link.add", dict(VM0, name="boom"))
        assert info.value.code == "EIO"
        assert info.value.message == "link add boom: internal error: RuntimeError: kaboom"
        assert c.request("version")["protocol"] == 1
    assert any(r.exc_info and "kaboom" in str(r.exc_info[1]) for r in caplog.records)


def test_malformed_requests_get_error_replies(running: RunningServer) -> None:
    lines = [
        b"{oops",
        b"[]",
        b'{"v": 9, "id": 1, "verb": "version"}',
        b'{"v": 1, "verb": "version"}',
        b'{"v": 1, "id": 2, "verb": "link.frob"}',
        b'{"v": 1, "id": 3, "verb": "link.del", "args": {"name": 5}}',
        b'{"v": 1, "id": 4, "verb": "link.set", "args": {"name": "x", "changes": {"mtu": "1"}}}',
        b'{"v": 1, "id": 5, "verb": "version"}',
    ]
    with raw(running.path) as sock:
        sock.sendall(b"\n".join(lines) + b"\n")
        replies = read_lines(sock, len(lines))
    codes = [(r["id"], r["ok"], r.get("error", {}).get("code")) for r in replies]
    assert codes == [
        (None, False, "EPROTO"),
        (None, False, "EPROTO"),
        (1, False, "EPROTONOSUPPORT"),
        (None, False, "EPROTO"),
        (2, False, "EOPNOTSUPP"),
        (3, False, "EINVAL"),
        (4, False, "EINVAL"),
        (5, True, None),
    ]
    assert "this side speaks protocol version 1" in replies[2]["error"]["message"]
    assert "protocol version 9" in replies[2]["error"]["message"]
    assert replies[6]["error"]["message"] == "link set x: changes: mtu: wrong type string"


def test_oversize_message_closes_only_that_connection(running: RunningServer) -> None:
    with Client(running.path, timeout=10) as other, raw(running.path) as sock:
        sock.sendall(encode_request(1, "version"))
        sock.sendall(b"x" * (MAX_MESSAGE * 2))
        data = read_until_eof(sock)
        replies = [json.loads(line) for line in data.splitlines()]
        assert replies[0]["ok"] is True
        assert replies[1]["error"]["code"] == "EMSGSIZE"
        assert other.request("version")["protocol"] == 1
    assert running.call(lambda: len(running.server.conns)) == 0


def test_idle_client_blocks_nothing(running: RunningServer) -> None:
    with raw(running.path) as idle, raw(running.path) as half:
        half.sendall(b'{"v": 1, "id": 1, "ver')  # a partial line, never finished
        with Client(running.path, timeout=10) as c:
            for _ in range(20):
                assert c.request("version")["protocol"] == 1
        assert running.call(lambda: len(running.server.conns)) == 2
        del idle


def test_half_closed_client_still_gets_its_replies(running: RunningServer) -> None:
    with raw(running.path) as sock:
        sock.sendall(b"".join(encode_request(i, "version") for i in range(100)))
        sock.shutdown(socket.SHUT_WR)
        data = read_until_eof(sock)
    assert [json.loads(line)["id"] for line in data.splitlines()] == list(range(100))


def test_concurrent_clients(running: RunningServer) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            with Client(running.path, timeout=20) as c:
                c.request("link.add", dict(VM0, name=f"vm{n}"))
                for _ in range(30):
                    shown = c.request("link.show", {"name": f"vm{n}"})
                    assert shown[0]["ifname"] == f"vm{n}"
                c.request("link.del", {"name": f"vm{n}"})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert running.service.endpoints == {}


def test_pipelined_requests_are_answered_in_order(running: RunningServer) -> None:
    n = 2000
    with raw(running.path) as sock:
        sock.sendall(b"".join(encode_request(i, "version") for i in range(n)))
        replies = read_lines(sock, n)
    assert [r["id"] for r in replies] == list(range(n))


def test_monitor_streams_events(running: RunningServer) -> None:
    events: list[dict[str, Any]] = []
    mon = Client(running.path, timeout=10)
    # monitor() returns once the daemon has said yes: the subscription exists already.
    stream = mon.monitor()
    assert running.call(lambda: len(running.service.subscribers)) == 1

    def consume() -> None:
        for event in stream:
            events.append(event)
            if len(events) == 3:
                return

    t = threading.Thread(target=consume)
    t.start()
    with Client(running.path, timeout=10) as c:
        c.request("link.add", VM0)
        c.request("link.set", {"name": "vm0", "changes": {"up": True}})
        c.request("link.del", {"name": "vm0"})
    t.join(10)
    assert [e["event"] for e in events] == ["link.add", "link.set", "link.del"]
    assert events[2]["reason"] == "deleted by request"
    mon.close()
    deadline = time.monotonic() + 5
    while running.call(lambda: len(running.service.subscribers)) != 0:
        assert time.monotonic() < deadline, "monitor not unsubscribed after disconnect"
        time.sleep(0.01)


def test_monitor_twice_on_one_connection(running: RunningServer) -> None:
    with raw(running.path) as sock:
        sock.sendall(encode_request(1, "monitor") + encode_request(2, "monitor"))
        first, second = read_lines(sock, 2)
    assert first == {"v": 1, "id": 1, "ok": True, "result": {}}
    assert second["error"]["code"] == "EBUSY"


def test_monitor_client_that_stops_reading_is_dropped(
    make_server: Callable[..., RunningServer],
) -> None:
    srv = make_server(max_output=64 * 1024)
    with raw(srv.path) as sock, Client(srv.path, timeout=10) as other:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(encode_request(1, "monitor"))
        assert read_lines(sock, 1)[0]["ok"] is True
        big = {"event": "test", "pad": "x" * 1000}

        def flood() -> int:
            for _ in range(2000):
                srv.service.emit(big)
            return len(srv.service.subscribers)

        assert srv.call(flood) == 0
        assert other.request("version")["protocol"] == 1
        read_until_eof(sock)  # what was sent, then EOF
    assert srv.call(lambda: len(srv.server.conns)) == 0


@contextlib.contextmanager
def every_connection_taken(srv: RunningServer, max_clients: int) -> Iterator[list[socket.socket]]:
    """Open (and hold) as many connections as root may, each answered once."""
    socks = [raw(srv.path) for _ in range(max_clients + ROOT_RESERVE)]
    try:
        for s in socks:
            s.sendall(encode_request(1, "version"))
            assert read_lines(s, 1)[0]["ok"]
        yield socks
    finally:
        for s in socks:
            s.close()


def test_connection_limit(make_server: Callable[..., RunningServer]) -> None:
    # The test runs as root, who may use the reserve beyond max_clients too.
    srv = make_server(max_clients=4)
    with every_connection_taken(srv, 4) as socks:
        with raw(srv.path) as extra:
            reply = json.loads(read_until_eof(extra))
        assert reply["error"]["code"] == "EUSERS"
        assert "too many connections (4)" in reply["error"]["message"]
        socks.pop().close()
        deadline = time.monotonic() + 5
        while srv.call(lambda: len(srv.server.conns)) != 3 + ROOT_RESERVE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with Client(srv.path, timeout=10) as c:
            assert c.request("version")["protocol"] == 1


def test_client_shows_the_refusal_that_arrived_before_its_request(
    make_server: Callable[..., RunningServer],
) -> None:
    """The daemon refuses and closes at once; the first send then fails with EPIPE."""
    srv = make_server(max_clients=1)
    with every_connection_taken(srv, 1), Client(srv.path, timeout=10) as c:
        select.select([c.sock], [], [], 10)
        srv.call(lambda: None)  # the refusal's close ran in the same loop turn
        with pytest.raises(RemoteError) as info:
            c.request("version")
        assert info.value.code == "EUSERS"
        assert "too many connections (1)" in str(info.value)


def test_fds_travel_with_a_reply(running: RunningServer) -> None:
    with Client(running.path, timeout=10) as c:
        result, fds = c.request_fds("link.add", dict(VM0, name="withfd"))
        assert result["ifname"] == "withfd"
        assert len(fds) == 1
        try:
            assert os.read(fds[0], 100) == b"hello"
        finally:
            os.close(fds[0])
        assert c.request("version")["protocol"] == 1


def test_stale_socket_is_replaced_live_one_is_not(sockdir: str) -> None:
    path = os.path.join(sockdir, "s.sock")
    old = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old.bind(path)
    old.close()  # a socket file nobody listens on: stale
    loop = Loop()
    log = logging.getLogger("test")
    try:
        server = ControlServer(loop, path, running_service(), None, log)
        with pytest.raises(OSError) as info:
            ControlServer(loop, path, running_service(), None, log)
        assert "another pymacvtap daemon is listening" in str(info.value)
        assert os.path.exists(path)  # the live one was left alone
        server.close()
        assert not os.path.exists(path)
        with open(path, "w") as f:
            f.write("not a socket")
        with pytest.raises(OSError) as info:
            ControlServer(loop, path, running_service(), None, log)
        assert "not a socket" in str(info.value)
        assert os.path.isfile(path)
    finally:
        loop.close()


def running_service() -> FakeService:
    return FakeService()


def test_client_error_when_daemon_is_not_running(sockdir: str) -> None:
    path = os.path.join(sockdir, "nothing.sock")
    with pytest.raises(ClientError) as info:
        Client(path)
    assert str(info.value) == (
        f"cannot reach the daemon at {path}: No such file or directory "
        "(is `pymacvtap daemon` running?)"
    )


# -- authorization through the server, with credentials stood in for -------------------


@pytest.fixture
def as_caller(monkeypatch: pytest.MonkeyPatch) -> Callable[[Caller], None]:
    def use(caller: Caller) -> None:
        monkeypatch.setattr(auth, "peer_caller", lambda sock: caller)

    return use


def test_policy_through_the_server(
    make_server: Callable[..., RunningServer], as_caller: Callable[[Caller], None]
) -> None:
    srv = make_server(admin_gid=4_000_000)
    with Client(srv.path, timeout=10) as root:
        root.request("link.add", VM0)
        root.request("link.add", dict(VM0, name="vm1", owner=1002, group=2002))
        root.request("link.add", dict(VM0, name="vm2", owner=None, group=None))
    as_caller(Caller(1001, 100))
    with Client(srv.path, timeout=10) as owner:
        assert [e["ifname"] for e in owner.request("link.show", {})] == ["vm0"]
        assert owner.request("link.show", {"name": "vm0"})[0]["ifname"] == "vm0"
        with pytest.raises(RemoteError) as info:
            owner.request("link.show", {"name": "vm1"})
        assert info.value.code == "EPERM"
        assert info.value.message == (
            "link show vm1: permission denied: uid 1001 is neither root, in admin group "
            "4000000, nor the owner or in the group of vm1"
        )
        with pytest.raises(RemoteError) as info:
            owner.request("link.del", {"name": "vm0"})
        assert info.value.message == (
            "link del vm0: permission denied: uid 1001 is neither root nor in admin group 4000000"
        )
        with pytest.raises(RemoteError) as info:
            owner.request("link.add", {"garbage": True})  # refused before it is looked at
        assert info.value.code == "EPERM"
        with pytest.raises(RemoteError) as info:
            owner.request("monitor")
        assert info.value.code == "EPERM"
        assert owner.request("version")["protocol"] == 1
    as_caller(Caller(1700, 100, frozenset({2002})))
    with Client(srv.path, timeout=10) as member:
        assert [e["ifname"] for e in member.request("link.show", {})] == ["vm1"]
    as_caller(Caller(1800, 100, frozenset({4_000_000})))
    with Client(srv.path, timeout=10) as admin:
        assert len(admin.request("link.show", {})) == 3
        admin.request("link.del", {"name": "vm2"})
