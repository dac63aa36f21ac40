"""Debian's ``libbpf1`` through ctypes: the calls pymacvtap makes, with their C signatures.

Both :mod:`pymacvtap.io.bpf` (the object, its maps, test runs) and
:mod:`pymacvtap.io.hooks` (programs onto devices) speak to the kernel through
these.  libbpf 1.x returns ``-errno`` and also sets ``errno``: :func:`check`
turns the first into an :class:`OSError`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os


class BpfError(Exception):
    """The fast path cannot be used here; the message says why (for ``--datapath auto``)."""


class TestRunOpts(ctypes.Structure):
    """``struct bpf_test_run_opts`` of libbpf 1.1 (bpf.h)."""

    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


@functools.cache
def libbpf() -> ctypes.CDLL:
    """The library, loaded once, its functions typed."""
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise BpfError(f"libbpf not found ({exc}): install the libbpf1 package") from None
    vp, i, u32 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32
    u32p = ctypes.POINTER(ctypes.c_uint32)
    signatures: dict[str, tuple[object, list[object]]] = {
        "bpf_object__open_file": (vp, [ctypes.c_char_p, vp]),
        "bpf_object__load": (i, [vp]),
        "bpf_object__close": (None, [vp]),
        "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_object__find_map_by_name": (vp, [vp, ctypes.c_char_p]),
        "bpf_program__fd": (i, [vp]),
        "bpf_map__fd": (i, [vp]),
        "bpf_map_update_elem": (i, [i, vp, vp, ctypes.c_uint64]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_map_get_next_key": (i, [i, vp, vp]),
        "bpf_prog_test_run_opts": (i, [i, ctypes.POINTER(TestRunOpts)]),
        "libbpf_num_possible_cpus": (i, []),
        # enum bpf_attach_type is an int; the attachable fd of tcx is an ifindex.
        "bpf_prog_attach": (i, [i, i, i, ctypes.c_uint]),
        "bpf_prog_detach2": (i, [i, i, i]),
        "bpf_prog_query": (i, [i, i, u32, u32p, u32p, u32p]),
        "bpf_prog_get_fd_by_id": (i, [u32]),
        "bpf_obj_get_info_by_fd": (i, [i, vp, u32p]),
    }
    for fn, (restype, argtypes) in signatures.items():
        func = getattr(lib, fn)
        func.restype = restype
        func.argtypes = argtypes
    return lib


def check(ret: int, what: str) -> None:
    """Raise the errno a libbpf call returned (negated), naming what was being done."""
    if ret < 0:
        code = -ret
        raise OSError(code, f"{what}: {os.strerror(code)}")
