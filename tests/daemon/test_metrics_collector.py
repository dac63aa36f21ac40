"""The metrics collector on its own: the data path's counts of frames charged to nobody."""

from __future__ import annotations

from prometheus_client.registry import CollectorRegistry

from pymacvtap.daemon.metrics import DaemonCollector


class CountingPath:
    """A data path that counted frames charged to no endpoint or lower (the fast path's inbox)."""

    def __init__(self, **counts: int) -> None:
        self.counts = counts

    def counters(self) -> dict[str, int]:
        return dict(self.counts)


def sample(collector: DaemonCollector, name: str) -> float | None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry.get_sample_value(name)


def test_the_fast_paths_unlabelled_inbox_frames_are_a_counter() -> None:
    path = CountingPath(inbox_unlabelled=3)
    collector = DaemonCollector({}, {}, path)  # type: ignore[arg-type]
    assert sample(collector, "pymacvtap_datapath_inbox_unlabelled_total") == 3
    path.counts["inbox_unlabelled"] = 5  # read afresh at every scrape
    assert sample(collector, "pymacvtap_datapath_inbox_unlabelled_total") == 5


def test_a_path_that_charges_every_frame_serves_no_such_series() -> None:
    collector = DaemonCollector({}, {}, CountingPath())  # type: ignore[arg-type]
    assert sample(collector, "pymacvtap_datapath_inbox_unlabelled_total") is None
    assert sample(DaemonCollector({}, {}), "pymacvtap_endpoints") == 0
