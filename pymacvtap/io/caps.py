"""Process capabilities: keep only what the daemon needs once it is set up (SPEC 6).

The daemon runs as root, so it starts with every capability.  After setup it
calls :func:`drop_capabilities` with the few it still needs; everything else
leaves the effective, permitted, inheritable and ambient sets and the bounding
set, so neither a bug in the daemon nor a program it might execute can get it
back.  ``PR_SET_NO_NEW_PRIVS`` is set too: the daemon executes nothing, and no
set-uid or file-capability program may ever raise its privileges again.

Direct ``capget(2)``/``capset(2)``/``prctl(2)`` calls through ctypes (version 3
of the capability ABI: two 32-bit words per set); no libcap needed.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

# include/uapi/linux/capability.h, in bit order.
CAP_NAMES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
CAP_BITS: dict[str, int] = {name: bit for bit, name in enumerate(CAP_NAMES)}

# What the daemon keeps after setup; the reasons are in SECURITY.md.
DAEMON_CAPABILITIES: frozenset[str] = frozenset(
    {
        "CAP_NET_ADMIN",  # taps (TUNSETIFF/PERSIST/OWNER), rtnetlink link changes,
        # promiscuous/unicast filters, SO_RCVBUFFORCE, attaching to other users' taps
        "CAP_NET_RAW",  # AF_PACKET sockets on lowers added later
        "CAP_SYS_ADMIN",  # setns(CLONE_NEWNET) into endpoint namespaces
        "CAP_SYS_PTRACE",  # open /proc/PID/ns/net of a process with more capabilities
        "CAP_CHOWN",  # endpoint sockets handed to owner:group
        "CAP_FOWNER",  # chmod 0660 of a socket already chowned to its owner
        "CAP_DAC_OVERRIDE",  # sending to a VM's dgram socket / paths owned by VM users
    }
)

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4


class _Header(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


class _Data(ctypes.Structure):
    _fields_ = (
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    )


_DataPair = _Data * 2
_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = (
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
)
_libc.prctl.restype = ctypes.c_int


class CapabilityError(OSError):
    """A capability system call failed."""


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise CapabilityError(err, f"{what}: {os.strerror(err)}")


def _mask(names: Iterable[str]) -> int:
    mask = 0
    for name in names:
        key = name.upper()
        if not key.startswith("CAP_"):
            key = "CAP_" + key
        try:
            mask |= 1 << CAP_BITS[key]
        except KeyError:
            raise ValueError(f"unknown capability {name!r}") from None
    return mask


def _names(mask: int) -> set[str]:
    return {name for bit, name in enumerate(CAP_NAMES) if mask >> bit & 1}


def _capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) masks of this thread."""
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _DataPair()
    _check(_libc.capget(ctypes.byref(header), ctypes.byref(data)), "capget")
    eff = data[0].effective | data[1].effective << 32
    perm = data[0].permitted | data[1].permitted << 32
    inh = data[0].inheritable | data[1].inheritable << 32
    return eff, perm, inh


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = _DataPair()
    for i in range(2):
        shift = 32 * i
        data[i].effective = effective >> shift & 0xFFFFFFFF
        data[i].permitted = permitted >> shift & 0xFFFFFFFF
        data[i].inheritable = inheritable >> shift & 0xFFFFFFFF
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def effective_capabilities() -> set[str]:
    """Names of the capabilities in this thread's effective set."""
    return _names(_capget()[0])


def permitted_capabilities() -> set[str]:
    return _names(_capget()[1])


def bounding_capabilities() -> set[str]:
    """The bounding set (what an execve could ever regain)."""
    found = set()
    for bit, name in enumerate(CAP_NAMES):
        if _libc.prctl(PR_CAPBSET_READ, bit, 0, 0, 0) == 1:
            found.add(name)
    return found


def drop_capabilities(keep: Iterable[str], *, no_new_privs: bool = True) -> None:
    """Keep only ``keep`` (e.g. ``{"CAP_NET_ADMIN"}`` or ``{"net_admin"}``), for good.

    Capabilities not held now are not gained.  The bounding set is cut first
    (that needs CAP_SETPCAP, which then goes too), then the ambient set is
    cleared and effective = permitted = ``keep``, inheritable = nothing.
    Python starts no threads of its own here; call this before starting any,
    as capabilities are per thread.
    """
    wanted = _mask(keep)
    _eff, permitted, _inh = _capget()
    for bit in range(len(CAP_NAMES)):
        if not wanted >> bit & 1 and _libc.prctl(PR_CAPBSET_READ, bit, 0, 0, 0) == 1:
            _check(_libc.prctl(PR_CAPBSET_DROP, bit, 0, 0, 0), f"drop {CAP_NAMES[bit]}")
    # Unknown to an older kernel (EINVAL): there is then no ambient set to clear.
    if _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        if err != 22:
            raise CapabilityError(err, f"clear ambient capabilities: {os.strerror(err)}")
    kept = wanted & permitted
    _capset(kept, kept, 0)
    if no_new_privs:
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "PR_SET_NO_NEW_PRIVS")
