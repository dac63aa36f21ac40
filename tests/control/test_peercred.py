"""SO_PEERCRED/SO_PEERGROUPS for real: requests from another uid, by a stdlib-only client.

The test creates a system user (removed in teardown, even on failure) and runs the
client as that user with setpriv.  That user cannot read the checkout or the venv, so
the client is a ``python3 -I -S -c`` script speaking the JSON protocol directly, with
the system interpreter, against a socket in a world-traversable temporary directory.
"""

from __future__ import annotations

import contextlib
import grp
import json
import pwd
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .fakes import RunningServer

SYSTEM_PYTHON = "/usr/bin/python3"

CLIENT = r"""
import json, os, socket, sys
path, requests = sys.argv[1], json.loads(sys.argv[2])
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "replies": []}
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(path)
buf = b""
for n, (verb, args) in enumerate(requests, 1):
    s.sendall(json.dumps({"v": 1, "id": n, "verb": verb, "args": args}).encode() + b"\n")
    while b"\n" not in buf:
        data = s.recv(65536)
        if not data:
            raise SystemExit("connection closed")
        buf += data
    line, _, buf = buf.partition(b"\n")
    out["replies"].append(json.loads(line))
print(json.dumps(out))
"""


def free_gid(start: int) -> int:
    gid = start
    while True:
        try:
            grp.getgrgid(gid)
        except KeyError:
            return gid
        gid += 1


@pytest.fixture
def system_user() -> Iterator[pwd.struct_passwd]:
    name = f"pmvt{secrets.token_hex(4)}"
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--no-user-group",
            "--gid",
            "nogroup",
            name,
        ],
        check=True,
        capture_output=True,
    )
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, capture_output=True)


def run_client(
    path: str,
    requests: list[tuple[str, dict[str, Any]]],
    user: pwd.struct_passwd | None = None,
    groups: list[int] | None = None,
) -> dict[str, Any]:
    cmd = [SYSTEM_PYTHON, "-I", "-S", "-c", CLIENT, path, json.dumps(requests)]
    if user is not None:
        group_opt = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
        cmd = [
            "setpriv",
            f"--reuid={user.pw_uid}",
            f"--regid={user.pw_gid}",
            group_opt,
            "--",
            *cmd,
        ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


@pytest.fixture
def setup(
    make_server: Callable[..., RunningServer], system_user: pwd.struct_passwd
) -> tuple[RunningServer, pwd.struct_passwd, int, int]:
    admin_gid = free_gid(424200)
    ep_gid = free_gid(admin_gid + 1)
    srv = make_server(admin_gid=admin_gid)
    root = run_client(
        srv.path,
        [
            ("link.add", {"name": "own", "link": "eth0", "owner": system_user.pw_uid}),
            ("link.add", {"name": "grouped", "link": "eth0", "group": ep_gid}),
            ("link.add", {"name": "other", "link": "eth0", "owner": 0}),
        ],
    )
    assert root["uid"] == 0
    assert [r["ok"] for r in root["replies"]] == [True, True, True], root
    return srv, system_user, admin_gid, ep_gid


def test_stranger_is_refused_and_sees_only_its_endpoints(
    setup: tuple[RunningServer, pwd.struct_passwd, int, int],
) -> None:
    srv, user, admin_gid, _ep_gid = setup
    out = run_client(
        srv.path,
        [
            ("version", {}),
            ("link.add", {"name": "vm9", "link": "eth0", "type": "macvtap"}),
            ("link.del", {"name": "other"}),
            ("link.show", {}),
            ("link.show", {"name": "own"}),
            ("link.show", {"name": "other"}),
            ("monitor", {}),
        ],
        user=user,
    )
    assert out["uid"] == user.pw_uid != 0
    version, add, delete, show_all, show_own, show_other, monitor = out["replies"]
    assert version["ok"] and version["result"]["protocol"] == 1
    assert add == {
        "v": 1,
        "id": 2,
        "ok": False,
        "error": {
            "code": "EPERM",
            "message": f"link add vm9: permission denied: uid {user.pw_uid} is neither root "
            f"nor in admin group {admin_gid}",
        },
    }
    assert delete["error"]["message"].startswith("link del other: permission denied: uid ")
    assert [e["ifname"] for e in show_all["result"]] == ["own"]
    assert show_own["ok"] and show_own["result"][0]["owner"] == user.pw_uid
    assert show_other["error"]["code"] == "EPERM"
    assert show_other["error"]["message"] == (
        f"link show other: permission denied: uid {user.pw_uid} is neither root, in admin "
        f"group {admin_gid}, nor the owner or in the group of other"
    )
    assert monitor["error"]["code"] == "EPERM"
    assert set(srv.service.endpoints) == {"own", "grouped", "other"}


def test_supplementary_groups_count(
    setup: tuple[RunningServer, pwd.struct_passwd, int, int],
) -> None:
    srv, user, admin_gid, ep_gid = setup
    member = run_client(
        srv.path, [("link.show", {}), ("link.show", {"name": "grouped"})], user, [ep_gid]
    )
    assert ep_gid in member["groups"]
    assert sorted(e["ifname"] for e in member["replies"][0]["result"]) == ["grouped", "own"]
    assert member["replies"][1]["ok"]
    admin = run_client(
        srv.path,
        [("link.add", {"name": "byadmin", "link": "eth0"}), ("link.del", {"name": "other"})],
        user,
        [100, admin_gid],
    )
    assert [r["ok"] for r in admin["replies"]] == [True, True], admin
    assert set(srv.service.endpoints) == {"own", "grouped", "byadmin"}


ADD_OWN_ROOT = ("link.add", {"name": "x1", "link": "eth0", "type": "macvtap"})


def test_root_is_accepted(setup: tuple[RunningServer, pwd.struct_passwd, int, int]) -> None:
    srv, _user, _admin_gid, _ep_gid = setup
    out = run_client(srv.path, [ADD_OWN_ROOT, ("link.show", {}), ("link.del", {"name": "x1"})])
    assert [r["ok"] for r in out["replies"]] == [True, True, True], out
    assert len(out["replies"][1]["result"]) == 4


# A client that opens COUNT connections, asks "version" on each and keeps them all open.
HOARDER = r"""
import json, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
socks, replies = [], []
for n in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    try:
        s.sendall(json.dumps({"v": 1, "id": n, "verb": "version", "args": {}}).encode() + b"\n")
    except BrokenPipeError:
        pass  # refused and closed before the request: the refusal is still there to read
    buf = b""
    while b"\n" not in buf:
        data = s.recv(65536)
        if not data:
            break
        buf += data
    replies.append(json.loads(buf.partition(b"\n")[0]) if buf else None)
    socks.append(s)
print(json.dumps(replies), flush=True)
sys.stdin.read()  # hold the connections until the test says so
"""


@contextlib.contextmanager
def hoarding(srv: RunningServer, user: pwd.struct_passwd, count: int) -> Iterator[list[Any]]:
    """``user`` opens ``count`` connections and holds them; yields the replies to each."""
    hoarder = subprocess.Popen(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups",
         "--", SYSTEM_PYTHON, "-I", "-S", "-c", HOARDER, srv.path, str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    try:
        assert hoarder.stdout is not None
        yield json.loads(hoarder.stdout.readline())
    finally:
        assert hoarder.stdin is not None
        hoarder.stdin.close()  # the hoarder exits: its connections close
        hoarder.wait(timeout=30)


def test_one_user_cannot_take_every_connection(
    make_server: Callable[..., RunningServer], system_user: pwd.struct_passwd
) -> None:
    srv = make_server(max_clients=6, max_per_user=3)
    with hoarding(srv, system_user, 5) as replies:
        assert [r["ok"] for r in replies[:3]] == [True, True, True]
        for refused in replies[3:]:
            assert refused["error"]["code"] == "EUSERS"
            assert f"from uid {system_user.pw_uid} (3)" in refused["error"]["message"]
        # Root (this test) is not limited per user, and still gets in.
        out = run_client(srv.path, [("version", {})])
        assert out["replies"][0]["ok"]
        assert srv.call(lambda: len(srv.server.conns)) >= 3
    # Closed connections free the user's share again.
    deadline = time.monotonic() + 5
    while srv.call(lambda: len(srv.server.conns)) != 0:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    again = run_client(srv.path, [("version", {})], user=system_user)
    assert again["replies"][0]["ok"]


def test_root_reaches_a_daemon_others_have_filled(
    make_server: Callable[..., RunningServer], system_user: pwd.struct_passwd
) -> None:
    srv = make_server(max_clients=2, max_per_user=10)
    with hoarding(srv, system_user, 3) as replies:
        assert [r.get("ok", False) for r in replies] == [True, True, False]
        assert "too many connections (2)" in replies[2]["error"]["message"]
        assert run_client(srv.path, [("version", {})])["replies"][0]["ok"]  # the reserve
