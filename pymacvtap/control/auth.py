"""Who is calling, and what they may do.

The control socket is open to every local user (mode 0666); each request is
authorized from the kernel's word about the peer: SO_PEERCRED (uid, gid, pid
at connect time) and SO_PEERGROUPS (supplementary groups).

Policy (SPEC 4):

* root (uid 0) and members of the admin group (``--admin-group``, primary or
  supplementary) may do everything;
* an endpoint's owner (uid) and members of its group may ``link.show`` it (and,
  as they come, ``capture`` and ``attach`` to it); ``link.show`` without a
  name lists only the endpoints the caller may see;
* ``version`` is open to everyone;
* everyone else is refused with a message naming the request and the reason.
"""

from __future__ import annotations

import dataclasses
import errno
import grp
import socket
import struct

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux 4.13+, asm-generic value
_UCRED = struct.Struct("3i")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
_GROUPS_BUFLEN = 1024  # CPython's getsockopt limit: 256 groups; more are read from /proc

OPEN_VERBS = frozenset({"version"})
# Verbs an endpoint's owner or group may use on that endpoint.
ENDPOINT_VERBS = frozenset({"link.show", "capture", "attach"})


@dataclasses.dataclass(frozen=True)
class Caller:
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()
    pid: int = 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups

    def __str__(self) -> str:
        return f"uid {self.uid}"


class AuthError(PermissionError):
    """A refused request; ``code`` is always EPERM, ``message`` the whole sentence."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EPERM, message)
        self.code = "EPERM"
        self.message = message

    def __str__(self) -> str:
        return self.message


def peer_caller(sock: socket.socket) -> Caller:
    """The connecting process's credentials, as the kernel recorded them at connect()."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return Caller(uid, gid, frozenset(peer_groups(sock, pid)), pid)


def peer_groups(sock: socket.socket, pid: int = 0) -> list[int]:
    """Supplementary groups from SO_PEERGROUPS (an array of gid_t)."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _GROUPS_BUFLEN)
    except OSError as exc:
        if exc.errno == errno.ERANGE and pid > 0:
            return _proc_groups(pid)  # more than 256 groups: rare, and racy, but better
        if exc.errno in (errno.ENOPROTOOPT, errno.ERANGE):
            return []
        raise
    count = len(raw) // 4
    return list(struct.unpack(f"{count}I", raw[: count * 4]))


def _proc_groups(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return [int(g) for g in line.split()[1:]]
    except OSError:
        pass
    return []


def is_admin(caller: Caller, admin_gid: int | None) -> bool:
    return caller.uid == 0 or (admin_gid is not None and caller.in_group(admin_gid))


def may_see(caller: Caller, owner: int | None, group: int | None, admin_gid: int | None) -> bool:
    """May ``caller`` use the endpoint verbs on an endpoint with this owner/group?"""
    if is_admin(caller, admin_gid):
        return True
    if owner is not None and caller.uid == owner:
        return True
    return group is not None and caller.in_group(group)


def group_label(gid: int | None) -> str:
    if gid is None:
        return "(none configured)"
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError):
        return str(gid)


def authorize(
    caller: Caller,
    verb: str,
    endpoint_owner: int | None,
    endpoint_group: int | None,
    admin_gid: int | None,
    *,
    name: str | None = None,
    admin_group: str | None = None,
) -> None:
    """Return if ``caller`` may run ``verb`` (on endpoint ``name``), else raise AuthError.

    ``endpoint_owner``/``endpoint_group`` matter only for the endpoint verbs;
    ``admin_group`` is the admin group's name for messages (looked up if None).
    """
    if verb in OPEN_VERBS or is_admin(caller, admin_gid):
        return
    label = None if admin_gid is None else admin_group or group_label(admin_gid)
    if verb in ENDPOINT_VERBS and name is not None:
        if may_see(caller, endpoint_owner, endpoint_group, admin_gid):
            return
        if label is None:
            reason = f"uid {caller.uid} is neither root nor the owner or in the group of {name}"
        else:
            reason = (
                f"uid {caller.uid} is neither root, in admin group {label}, "
                f"nor the owner or in the group of {name}"
            )
    elif label is None:
        reason = f"uid {caller.uid} is not root (and no admin group is configured)"
    else:
        reason = f"uid {caller.uid} is neither root nor in admin group {label}"
    target = verb.replace(".", " ") + (f" {name}" if name else "")
    raise AuthError(f"{target}: permission denied: {reason}")
