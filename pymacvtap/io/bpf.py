"""The kernel fast path's programs and maps, through libbpf (ctypes) and pyroute2.

libbpf (Debian's ``libbpf1``) is the kernel's reference loader: it reads the
object ``make bpf`` compiled, creates the maps, relocates and loads the
programs.  This module only hands it the file and then speaks to the maps and
programs by fd.  Putting the programs on devices is :mod:`pymacvtap.io.hooks`.

Nothing here decides anything: the table contents come from
:mod:`pymacvtap.bpf.tables`, as a list of operations applied in order.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from pymacvtap.bpf.tables import (
    ENDPOINT_SIZE,
    KEY_SIZE,
    LOWER_SIZE,
    Counters,
    DeleteDevice,
    DeleteEndpoint,
    DeleteLower,
    DeleteSource,
    Op,
    PutDevice,
    PutEndpoint,
    PutLower,
    PutSource,
    ZeroStats,
    pack_endpoint,
    pack_key,
    pack_lower,
    stats_size,
    unpack_stats,
)
from pymacvtap.io import hooks
from pymacvtap.io.libbpf import BpfError as BpfError  # re-exported: the loader's error
from pymacvtap.io.libbpf import TestRunOpts, check, libbpf

PROGRAMS = ("lower_ingress", "endpoint_ingress", "inbox_ingress")
MAPS = (
    "endpoints", "devices", "lowers", "sources", "endpoint_stats", "lower_stats", "inbox",
    "labels",
)  # fmt: skip
# (name, key size, value size) of the maps tables.py fills (fastpath.h).
_TABLE_MAPS = (
    ("lowers", 4, LOWER_SIZE),
    ("endpoints", KEY_SIZE, ENDPOINT_SIZE),
    ("devices", 4, ENDPOINT_SIZE),
    ("sources", KEY_SIZE, 1),
)
OBJECT_NAME = "fastpath.bpf.o"
# fastpath.h: a label is 12 bits of a VLAN TCI, the top 4 a multi-queue tap's queue.
LABEL_BITS = 12
MAX_LABELS = 1 << LABEL_BITS
_ENV_OBJECT = "PYMACVTAP_BPF_OBJECT"


# struct __sk_buff (linux/bpf.h): the fields BPF_PROG_TEST_RUN lets a test set.
SKB_SIZE = 192
_SKB_CB = 48  # cb[5]
_SKB_INGRESS_IFINDEX = 36
_SKB_GSO_SEGS = 164
_SKB_GSO_SIZE = 176


def object_path() -> Path:
    """The compiled programs: ``$PYMACVTAP_BPF_OBJECT``, else beside the sources."""
    override = os.environ.get(_ENV_OBJECT)
    if override:
        return Path(override)
    return Path(str(resources.files("pymacvtap.bpf").joinpath(OBJECT_NAME)))


class FastPath:
    """The loaded object: its programs' and maps' fds, until :meth:`close`."""

    def __init__(self, path: Path | None = None, *, hook: hooks.Hook = "tcx") -> None:
        """``hook``: how :meth:`attach` tries first (tests ask for "clsact" to cover the
        kernels without tcx)."""
        self._lib = libbpf()
        self.hook: hooks.Hook = hook
        path = path or object_path()
        if not path.exists():
            raise BpfError(f"{path}: no compiled fast path (run `make bpf`)")
        obj = self._lib.bpf_object__open_file(str(path).encode(), None)
        if not obj:
            code = ctypes.get_errno()
            raise BpfError(f"{path}: libbpf cannot open it: {os.strerror(code)}")
        self._obj: int | None = obj
        ret = self._lib.bpf_object__load(obj)
        if ret < 0:
            self.close()
            raise BpfError(f"{path}: the kernel refused the programs: {os.strerror(-ret)}")
        self.prog_fds = {name: self._fd("program", name) for name in PROGRAMS}
        self.map_fds = {name: self._fd("map", name) for name in MAPS}
        self.ncpus = self._lib.libbpf_num_possible_cpus()

    def _fd(self, kind: str, name: str) -> int:
        lib = self._lib
        if kind == "program":
            handle = lib.bpf_object__find_program_by_name(self._obj, name.encode())
            fd = lib.bpf_program__fd(handle) if handle else -1
        else:
            handle = lib.bpf_object__find_map_by_name(self._obj, name.encode())
            fd = lib.bpf_map__fd(handle) if handle else -1
        if fd < 0:
            self.close()
            raise BpfError(f"the object has no {kind} {name}")
        return int(fd)

    def close(self) -> None:
        if self._obj is not None:
            self._lib.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> FastPath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- maps --------------------------------------------------------------

    def _update(self, map_name: str, key: bytes, value: bytes) -> None:
        ret = self._lib.bpf_map_update_elem(self.map_fds[map_name], key, value, 0)
        check(ret, f"update {map_name}")

    def _delete(self, map_name: str, key: bytes) -> None:
        ret = self._lib.bpf_map_delete_elem(self.map_fds[map_name], key)
        if ret < 0 and -ret != errno.ENOENT:
            check(ret, f"delete from {map_name}")

    def _lookup(self, map_name: str, key: bytes, size: int) -> bytes | None:
        value = ctypes.create_string_buffer(size)
        ret = self._lib.bpf_map_lookup_elem(self.map_fds[map_name], key, value)
        if ret < 0:
            if -ret == errno.ENOENT:
                return None
            check(ret, f"lookup in {map_name}")
        return value.raw

    def contents(self) -> dict[str, dict[bytes, bytes]]:
        """The configuration maps as they are, in the shape of :func:`tables.packed`."""
        return {
            name: self._items(name, key_size, value_size)
            for name, key_size, value_size in _TABLE_MAPS
        }

    def _items(self, map_name: str, key_size: int, value_size: int) -> dict[bytes, bytes]:
        items: dict[bytes, bytes] = {}
        fd = self.map_fds[map_name]
        key = None
        nxt = ctypes.create_string_buffer(key_size)
        while self._lib.bpf_map_get_next_key(fd, key, nxt) == 0:
            value = self._lookup(map_name, nxt.raw, value_size)
            if value is not None:  # gone between the two calls: not there any more
                items[nxt.raw] = value
            key = ctypes.create_string_buffer(nxt.raw, key_size)
        return items

    def apply(self, ops: list[Op]) -> None:
        """Apply ``ops`` in order (:func:`pymacvtap.bpf.tables.changes` orders them)."""
        for op in ops:
            match op:
                case PutLower(ifindex, lower):
                    self._update("lowers", _u32(ifindex), pack_lower(lower))
                case DeleteLower(ifindex):
                    self._delete("lowers", _u32(ifindex))
                case PutEndpoint(entry):
                    self._update(
                        "endpoints", pack_key(entry.lower, entry.mac), pack_endpoint(entry)
                    )
                case DeleteEndpoint(lower, mac):
                    self._delete("endpoints", pack_key(lower, mac))
                case PutDevice(ifindex, entry):
                    self._update("devices", _u32(ifindex), pack_endpoint(entry))
                case DeleteDevice(ifindex):
                    self._delete("devices", _u32(ifindex))
                case PutSource(lower, mac):
                    self._update("sources", pack_key(lower, mac), b"\x01")
                case DeleteSource(lower, mac):
                    self._delete("sources", pack_key(lower, mac))
                case ZeroStats(table, slot):
                    self._update(table, _u32(slot), bytes(stats_size() * self.ncpus))

    def set_inbox(self, ifindex: int) -> None:
        """Where the programs hand the daemon its frames (0: nowhere, they go on unlabelled)."""
        self._update("inbox", _u32(0), _u32(ifindex))

    def set_label(self, ifindex: int, label: int, *, endpoint: bool, queued: bool) -> None:
        """Label ``ifindex``'s frames to the daemon with ``label`` (struct fp_label).

        ``endpoint``: an endpoint's device (the tag's TPID says so); ``queued``: a
        multi-queue tap, whose receive queue rides along in the tag.
        """
        if not 0 <= label < MAX_LABELS:
            raise ValueError(f"label {label} out of range")
        value = label.to_bytes(2, "little") + bytes((int(endpoint), int(queued)))
        self._update("labels", _u32(ifindex), value)

    def delete_label(self, ifindex: int) -> None:
        self._delete("labels", _u32(ifindex))

    def counters(self, table: str, slot: int) -> Counters:
        """One slot of ``endpoint_stats`` or ``lower_stats``, summed over the CPUs."""
        raw = self._lookup(table, _u32(slot), stats_size() * self.ncpus)
        return unpack_stats(raw or b"", self.ncpus)

    # -- programs ------------------------------------------------------------

    def test_run(
        self, prog: str, frame: bytes, *, ingress_ifindex: int = 0, gso_size: int = 0
    ) -> tuple[int, int, int, int]:
        """Run ``prog`` once on ``frame`` (BPF_PROG_TEST_RUN, no device touched).

        Returns (tc verdict, fast path action, target ifindex, drop reason code),
        the last three as the program left them in ``skb->cb``.
        """
        ctx = bytearray(SKB_SIZE)
        ctx[_SKB_INGRESS_IFINDEX : _SKB_INGRESS_IFINDEX + 4] = _u32(ingress_ifindex)
        ctx[_SKB_GSO_SIZE : _SKB_GSO_SIZE + 4] = _u32(gso_size)
        if gso_size:
            ctx[_SKB_GSO_SEGS : _SKB_GSO_SEGS + 4] = _u32(
                1
            )  # gso_segs: the kernel wants a count with a size
        ctx_in = ctypes.create_string_buffer(bytes(ctx), SKB_SIZE)
        ctx_out = ctypes.create_string_buffer(SKB_SIZE)
        data_in = ctypes.create_string_buffer(frame, len(frame))
        data_out = ctypes.create_string_buffer(len(frame) + 256)
        opts = TestRunOpts(
            sz=ctypes.sizeof(TestRunOpts),
            data_in=ctypes.cast(data_in, ctypes.c_void_p),
            data_out=ctypes.cast(data_out, ctypes.c_void_p),
            data_size_in=len(frame),
            data_size_out=len(frame) + 256,
            ctx_in=ctypes.cast(ctx_in, ctypes.c_void_p),
            ctx_out=ctypes.cast(ctx_out, ctypes.c_void_p),
            ctx_size_in=SKB_SIZE,
            ctx_size_out=SKB_SIZE,
            repeat=1,
        )
        ret = self._lib.bpf_prog_test_run_opts(self.prog_fds[prog], ctypes.byref(opts))
        check(ret, f"test run of {prog}")
        cb = ctx_out.raw[_SKB_CB : _SKB_CB + 12]
        action, ifindex, reason = (int.from_bytes(cb[i : i + 4], "little") for i in (0, 4, 8))
        return opts.retval, action, ifindex, reason

    # -- attaching -----------------------------------------------------------

    def attach(self, ifindex: int, prog: str) -> None:
        """``prog`` on the ingress of ``ifindex``: by tcx, or by clsact where the kernel
        has no tcx (:attr:`hook` says which, once something is attached)."""
        self.hook = hooks.attach(ifindex, self.prog_fds[prog], prog, self.hook)

    @staticmethod
    def detach(ifindex: int, own: Iterable[int] = ()) -> None:
        """Take our programs off ``ifindex`` (this daemon's or a killed one's, either hook).

        Only :data:`PROGRAMS` go: a user's own programs and tc filters on a lower (and
        the clsact qdisc they hang on) stay.  ``own``: the loaded programs' fds
        (:attr:`prog_fds`), which detach without looking programs up by id.
        """
        hooks.detach(ifindex, PROGRAMS, own)

    @staticmethod
    def ours_attached(ifindex: int) -> bool:
        """Whether one of our programs is on the ingress of ``ifindex`` (a killed daemon's)."""
        return bool(hooks.attached(ifindex, PROGRAMS))


def _u32(value: int) -> bytes:
    return value.to_bytes(4, "little")
