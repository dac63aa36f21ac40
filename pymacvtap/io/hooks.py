"""The fast path's programs onto devices: tcx where the kernel has it, tc clsact where not.

Both run a program on a device's ingress in the same place (``sch_handle_ingress``,
before any ``rx_handler``), with the same context and return codes.  tcx (Linux 6.6)
calls the program directly; clsact goes through the classifier layer first
(``tcf_classify``, ``cls_bpf``), which on this project's test machine cost about
0.25 µs of a 6.5 µs container-to-container frame across the two programs it
passes (perf, 64-byte UDP through the hairpin): the difference between 0.88× and
0.91× of kernel macvlan.  So tcx is tried first, and clsact (cls_bpf, direct action,
through pyroute2) is what a kernel without tcx gets.

tcx programs are attached with ``BPF_PROG_ATTACH``, not as links: like a tc filter,
such a program belongs to the device, not to the daemon's fd, and stays when the
daemon is killed (the unicast goes on with the last tables until the next daemon
takes the programs away, as it does on either hook).  Ours are told from a user's
own programs and filters by name.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable, Iterator
from typing import Any, Literal

from pyroute2 import IPRoute

from pymacvtap.io.libbpf import check, libbpf

Hook = Literal["tcx", "clsact"]

# enum bpf_attach_type of Linux 6.6; Debian 12's linux-libc-dev (6.1) predates it.
BPF_TCX_INGRESS = 46
TC_H_CLSACT_INGRESS = "ffff:fff2"
TC_H_CLSACT_EGRESS = "ffff:fff3"
# struct bpf_prog_info (linux/bpf.h): name[BPF_OBJ_NAME_LEN] at 64; the kernel keeps
# 15 characters of a name and its NUL.
_PROG_INFO_SIZE = 80
_PROG_INFO_NAME = slice(64, 80)
_NAME_LEN = 15
_QUERY_MAX = 64


def attach(ifindex: int, prog_fd: int, name: str, hook: Hook) -> Hook:
    """Put the program on the ingress of ``ifindex`` (in the caller's namespace).

    ``hook`` is the one to try; the one used is returned: "tcx" falls back to
    "clsact" on a kernel that does not know it (EINVAL).
    """
    if hook == "tcx":
        ret = libbpf().bpf_prog_attach(prog_fd, ifindex, BPF_TCX_INGRESS, 0)
        if ret == 0:
            return "tcx"
        if -ret != errno.EINVAL:
            check(ret, f"attach {name} to ifindex {ifindex} (tcx)")
    with IPRoute() as ipr:
        try:
            ipr.tc("add", "clsact", ifindex)
        except Exception as exc:  # an existing clsact qdisc is fine
            if getattr(exc, "code", None) != errno.EEXIST:
                raise
        ipr.tc(
            "add-filter",
            "bpf",
            ifindex,
            ":1",
            fd=prog_fd,
            name=name,
            parent=TC_H_CLSACT_INGRESS,
            classid=1,
            direct_action=True,
        )
    return "clsact"


def attached(ifindex: int, names: tuple[str, ...]) -> list[tuple[Hook, str]]:
    """Which of the programs ``names`` are on the ingress of ``ifindex``, and by which hook."""
    found: list[tuple[Hook, str]] = [("tcx", name) for _fd, name in _tcx_ours(ifindex, names)]
    found.extend(
        ("clsact", str(f.get(("TCA_OPTIONS", "TCA_BPF_NAME"))))
        for f in _clsact_filters(ifindex)
        if _ours(f.get(("TCA_OPTIONS", "TCA_BPF_NAME")), names)
    )
    return found


def detach(ifindex: int, names: tuple[str, ...], own: Iterable[int] = ()) -> None:
    """Take the programs ``names`` off ``ifindex``, on either hook, and the clsact qdisc
    if nothing else hangs on it.  A user's own programs and filters stay.

    ``own``: fds of the programs this process loaded, detached by fd first.  Finding a
    tcx program by id (a killed daemon's) takes ``CAP_SYS_ADMIN``
    (``BPF_PROG_GET_FD_BY_ID``); without it only these go.
    """
    lib = libbpf()
    for fd in own:
        ret = lib.bpf_prog_detach2(fd, ifindex, BPF_TCX_INGRESS)
        if ret < 0 and -ret not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            check(ret, f"detach a program from ifindex {ifindex} (tcx)")
    for fd, name in _tcx_ours(ifindex, names):
        ret = lib.bpf_prog_detach2(fd, ifindex, BPF_TCX_INGRESS)
        if ret < 0 and -ret not in (errno.ENOENT, errno.ENODEV):
            check(ret, f"detach {name} from ifindex {ifindex} (tcx)")
    _detach_clsact(ifindex, names)


def _ours(name: object, names: tuple[str, ...]) -> bool:
    return isinstance(name, str) and name[:_NAME_LEN] in {n[:_NAME_LEN] for n in names}


def _tcx_ours(ifindex: int, names: tuple[str, ...]) -> Iterator[tuple[int, str]]:
    """(fd, name) of each tcx ingress program of ``ifindex`` named one of ``names``; the
    fd is open until the caller asks for the next one."""
    for prog_id in _tcx_programs(ifindex):
        fd, name = _open_program(prog_id)
        if fd < 0:
            continue
        try:
            if _ours(name, names):
                yield fd, name
        finally:
            os.close(fd)


def _tcx_programs(ifindex: int) -> list[int]:
    """The ids of the tcx ingress programs of ``ifindex`` (none on a kernel without tcx,
    or when the device is gone)."""
    ids = (ctypes.c_uint32 * _QUERY_MAX)()
    count = ctypes.c_uint32(_QUERY_MAX)
    flags = ctypes.c_uint32(0)
    ret = libbpf().bpf_prog_query(
        ifindex, BPF_TCX_INGRESS, 0, ctypes.byref(flags), ids, ctypes.byref(count)
    )
    if ret < 0:
        if -ret in (errno.EINVAL, errno.ENODEV, errno.ENOENT):
            return []
        if -ret != errno.ENOSPC:  # more than we asked for: the first ones are there
            check(ret, f"query the tcx programs of ifindex {ifindex}")
    return list(ids[: min(count.value, _QUERY_MAX)])


def _open_program(prog_id: int) -> tuple[int, str]:
    """An fd on the program ``prog_id`` and its name; (-1, "") if it has gone, or if this
    process may not open programs by id (no ``CAP_SYS_ADMIN``)."""
    lib = libbpf()
    fd = int(lib.bpf_prog_get_fd_by_id(prog_id))
    if fd < 0:
        if -fd not in (errno.ENOENT, errno.EPERM):
            check(fd, f"open program {prog_id}")
        return -1, ""
    info = ctypes.create_string_buffer(_PROG_INFO_SIZE)
    size = ctypes.c_uint32(_PROG_INFO_SIZE)
    ret = lib.bpf_obj_get_info_by_fd(fd, info, ctypes.byref(size))
    if ret < 0:
        os.close(fd)
        check(ret, f"read the name of program {prog_id}")
    return fd, info.raw[_PROG_INFO_NAME].split(b"\0", 1)[0].decode(errors="replace")


def _clsact_filters(ifindex: int) -> list[Any]:
    with IPRoute() as ipr:
        try:
            return list(ipr.get_filters(index=ifindex, parent=TC_H_CLSACT_INGRESS))
        except Exception:  # no clsact qdisc, no device: nothing of ours
            return []


def _detach_clsact(ifindex: int, names: tuple[str, ...]) -> None:
    with IPRoute() as ipr:
        try:
            for f in ipr.get_filters(index=ifindex, parent=TC_H_CLSACT_INGRESS):
                if _ours(f.get(("TCA_OPTIONS", "TCA_BPF_NAME")), names):
                    ipr.tc(
                        "del-filter",
                        "bpf",
                        ifindex,
                        f["handle"],
                        parent=TC_H_CLSACT_INGRESS,
                        info=f["info"],
                    )
            others = [
                f
                for parent in (TC_H_CLSACT_INGRESS, TC_H_CLSACT_EGRESS)
                for f in ipr.get_filters(index=ifindex, parent=parent)
            ]
            if not others:
                ipr.tc("del", "clsact", ifindex)
        except Exception as exc:  # no device, or no clsact qdisc: nothing of ours
            if getattr(exc, "code", None) not in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
                raise
