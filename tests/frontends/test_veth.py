"""The daemon-side end of a container's veth pair: named so users can tell whose it is."""

from __future__ import annotations

from pymacvtap.frontends.veth import IFNAMSIZ, peer_name


def test_a_short_name_is_the_endpoint_name_with_a_prefix() -> None:
    assert peer_name("c1") == "pmv-c1"
    assert peer_name("abcdefghijk") == "pmv-abcdefghijk"  # 15 characters: still fits


def test_a_long_name_is_cut_and_hashed_always_the_same_way() -> None:
    names = ["web-frontend-01", "web-frontend-02", "a.very.long.endpoint.name"]
    peers = [peer_name(n) for n in names]
    assert all(len(p) < IFNAMSIZ and p.startswith("pmv-") for p in peers)
    assert len(set(peers)) == len(peers)
    assert peers == [peer_name(n) for n in names]
    assert peers[0].startswith("pmv-web-fr")
