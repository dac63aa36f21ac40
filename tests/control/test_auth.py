"""The authorization policy as a table: callers × verbs."""

from __future__ import annotations

import os
import socket

import pytest

from pymacvtap.control.auth import AuthError, Caller, authorize, is_admin, may_see, peer_caller

ADMIN = 990
OWNER = 1001
GROUP = 2001

ROOT = Caller(0, 0)
ADMIN_PRIMARY = Caller(1500, ADMIN)
ADMIN_SUPP = Caller(1501, 100, frozenset({50, ADMIN}))
ENDPOINT_OWNER = Caller(OWNER, 100)
GROUP_PRIMARY = Caller(1600, GROUP)
GROUP_SUPP = Caller(1601, 100, frozenset({GROUP}))
STRANGER = Caller(1700, 100, frozenset({50, 60}))

ADMIN_VERBS = ["link.add", "link.set", "link.del", "lower.show", "monitor"]
ENDPOINT_VERBS = ["link.show", "capture", "attach"]

# caller, may use admin verbs, may use endpoint verbs on the endpoint
TABLE = [
    (ROOT, True, True),
    (ADMIN_PRIMARY, True, True),
    (ADMIN_SUPP, True, True),
    (ENDPOINT_OWNER, False, True),
    (GROUP_PRIMARY, False, True),
    (GROUP_SUPP, False, True),
    (STRANGER, False, False),
]


def allowed(caller: Caller, verb: str, admin_gid: int | None = ADMIN) -> bool:
    try:
        authorize(caller, verb, OWNER, GROUP, admin_gid, name="vm0", admin_group="pymacvtap")
    except AuthError as exc:
        assert exc.code == "EPERM"
        assert str(exc).startswith(f"{verb.replace('.', ' ')} vm0: permission denied: ")
        return False
    return True


@pytest.mark.parametrize(("caller", "admin_ok", "endpoint_ok"), TABLE)
@pytest.mark.parametrize("verb", ADMIN_VERBS + ENDPOINT_VERBS + ["version"])
def test_policy_table(caller: Caller, admin_ok: bool, endpoint_ok: bool, verb: str) -> None:
    if verb == "version":
        expected = True
    elif verb in ENDPOINT_VERBS:
        expected = endpoint_ok
    else:
        expected = admin_ok
    assert allowed(caller, verb) is expected


def test_refusal_message_names_verb_uid_and_admin_group() -> None:
    with pytest.raises(AuthError) as info:
        authorize(STRANGER, "link.add", None, None, ADMIN, name="vm0", admin_group="pymacvtap")
    assert str(info.value) == (
        "link add vm0: permission denied: uid 1700 is neither root nor in admin group pymacvtap"
    )
    assert isinstance(info.value, PermissionError)


def test_refusal_message_for_endpoint_verbs() -> None:
    with pytest.raises(AuthError) as info:
        authorize(STRANGER, "link.show", OWNER, GROUP, ADMIN, name="vm0", admin_group="adm")
    assert str(info.value) == (
        "link show vm0: permission denied: uid 1700 is neither root, in admin group adm, "
        "nor the owner or in the group of vm0"
    )
    with pytest.raises(AuthError) as info:
        authorize(STRANGER, "link.show", OWNER, GROUP, None, name="vm0")
    assert "uid 1700 is neither root nor the owner or in the group of vm0" in str(info.value)


def test_without_admin_group_only_root_administers() -> None:
    assert not allowed(ADMIN_SUPP, "link.add", admin_gid=None)
    assert allowed(ROOT, "link.add", admin_gid=None)
    with pytest.raises(AuthError) as info:
        authorize(ADMIN_SUPP, "monitor", None, None, None)
    assert str(info.value) == (
        "monitor: permission denied: uid 1501 is not root (and no admin group is configured)"
    )


def test_admin_group_name_is_looked_up() -> None:
    with pytest.raises(AuthError) as info:
        authorize(STRANGER, "link.del", None, None, 0, name="vm0")
    assert "admin group root" in str(info.value)  # gid 0 is "root" on Debian
    with pytest.raises(AuthError) as info:
        authorize(STRANGER, "link.del", None, None, 4_000_000, name="vm0")
    assert "admin group 4000000" in str(info.value)


def test_endpoint_without_owner_or_group_is_admin_only() -> None:
    for caller in (ENDPOINT_OWNER, GROUP_SUPP, STRANGER):
        assert not may_see(caller, None, None, ADMIN)
    assert may_see(ADMIN_SUPP, None, None, ADMIN)
    assert is_admin(ROOT, None)


def test_no_name_endpoint_verb_needs_admin() -> None:
    with pytest.raises(AuthError):
        authorize(ENDPOINT_OWNER, "capture", OWNER, GROUP, ADMIN)


def test_peer_caller_reads_our_own_credentials() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        caller = peer_caller(a)
    assert caller.uid == os.getuid()
    assert caller.gid == os.getgid()
    assert caller.pid == os.getpid()
    assert caller.groups == frozenset(os.getgroups())
