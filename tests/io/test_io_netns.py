"""Entering namespaces: the thread moves there and always comes back."""

from __future__ import annotations

import os

import pytest
from io_helpers import MakeNetns

from pymacvtap.io.netns import (
    NetnsNotFound,
    entered,
    netns_exists,
    resolve_netns,
    same_netns,
)


def _here() -> tuple[int, int]:
    st = os.stat("/proc/thread-self/ns/net")
    return st.st_dev, st.st_ino


def _of(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def test_resolve_names_and_paths(make_netns: MakeNetns) -> None:
    ns = make_netns()
    assert resolve_netns(ns) == f"/run/netns/{ns}"
    own = f"/proc/{os.getpid()}/ns/net"
    assert resolve_netns(own) == own
    with pytest.raises(NetnsNotFound, match="pmvt-io-missing"):
        resolve_netns("pmvt-io-missing")
    with pytest.raises(ValueError):
        resolve_netns("../etc")
    assert netns_exists(ns)
    assert netns_exists(f"/proc/{os.getpid()}/ns/net")
    assert not netns_exists("pmvt-io-missing")
    assert not netns_exists("/proc/999999999/ns/net")


def test_entered_moves_the_thread_and_back(make_netns: MakeNetns) -> None:
    ns = make_netns()
    home = _here()
    with entered(ns):
        assert _here() == _of(f"/run/netns/{ns}")
        assert same_netns(ns)
    assert _here() == home
    assert not same_netns(ns)
    assert same_netns(None)
    with entered(None):
        assert _here() == home


def test_entered_returns_on_error_and_nests(make_netns: MakeNetns) -> None:
    ns1, ns2 = make_netns(), make_netns()
    home = _here()
    with pytest.raises(RuntimeError), entered(ns1):
        raise RuntimeError("boom")
    assert _here() == home
    with entered(ns1):
        with entered(ns2):
            assert _here() == _of(f"/run/netns/{ns2}")
        assert _here() == _of(f"/run/netns/{ns1}")
    assert _here() == home
    with pytest.raises(NetnsNotFound), entered("pmvt-io-missing"):
        pass  # pragma: no cover
    assert _here() == home
