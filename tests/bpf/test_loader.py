"""Loading fails with one clear BpfError, which ``--datapath auto`` will fall back on."""

from __future__ import annotations

from pathlib import Path

import pytest

from pymacvtap.io.bpf import BpfError, FastPath


def test_a_missing_object_says_how_to_build_it(tmp_path: Path) -> None:
    with pytest.raises(BpfError, match="make bpf"):
        FastPath(tmp_path / "fastpath.bpf.o")


def test_a_file_libbpf_cannot_read_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "fastpath.bpf.o"
    bogus.write_bytes(b"\x7fELF not really")
    with pytest.raises(BpfError, match="libbpf cannot open it"):
        FastPath(bogus)


def test_the_object_loads_with_every_program_and_map(fastpath: FastPath) -> None:
    assert set(fastpath.prog_fds) == {
        "lower_ingress",
        "endpoint_ingress",
        "inbox_ingress",
    }
    assert all(fd >= 0 for fd in [*fastpath.prog_fds.values(), *fastpath.map_fds.values()])
    assert fastpath.contents() == {"lowers": {}, "endpoints": {}, "devices": {}, "sources": {}}
