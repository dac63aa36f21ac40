"""capture: the pcap bytes (read back by dpkt), the per-frame line, and the stream's end."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import dpkt
import pytest

from pymacvtap.cli import Capture, Options
from pymacvtap.cli import capture as capture_mod
from pymacvtap.cli.capture import PCAP_HEADER, capture_line, pcap_record, run_capture
from pymacvtap.cli.errors import Failure
from pymacvtap.control.client import RemoteError

FRAME = bytes.fromhex("0200000000020200000000010800") + bytes(range(46))
BIG = bytes.fromhex("ffffffffffff02000000000186dd") + bytes(70000)


def test_pcap_file_reads_back_in_dpkt() -> None:
    data = PCAP_HEADER + pcap_record(1700000000.25, FRAME) + pcap_record(1700000001.0, BIG)
    reader = dpkt.pcap.Reader(io.BytesIO(data))
    assert reader.datalink() == dpkt.pcap.DLT_EN10MB
    assert reader.snaplen == 262144
    records = list(reader)
    assert [(round(ts, 6), raw) for ts, raw in records] == [
        (1700000000.25, FRAME),
        (1700000001.0, BIG),  # an offloaded super-frame is one record, whole
    ]


def test_capture_line_in_the_manner_of_tcpdump_e() -> None:
    stamp = 1700000000.123456
    clock = time.strftime("%H:%M:%S", time.localtime(stamp))
    assert capture_line(stamp, "tx", FRAME) == (
        f"{clock}.123456 tx 02:00:00:00:00:01 > 02:00:00:00:00:02, ethertype 0x0800, length 60"
    )
    assert capture_line(stamp, "rx", b"\x01" * 13) == f"{clock}.123456 rx runt, length 13"


class FakeClient:
    """Stands for the control client: yields the events given, records what was asked."""

    events: ClassVar[list[dict[str, Any]]] = []
    asked: ClassVar[list[tuple[str, dict[str, Any] | None]]] = []
    closed: ClassVar[int] = 0

    def __init__(self, path: str | None = None, timeout: float | None = None) -> None:
        del path, timeout

    def stream(self, verb: str, args: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        FakeClient.asked.append((verb, args))
        for event in self.events:
            if isinstance(event.get("error"), str):
                raise RemoteError("ENOENT", event["error"])
            yield event

    def close(self) -> None:
        FakeClient.closed += 1


def frame_event(stamp: float, direction: str, data: bytes) -> dict[str, Any]:
    encoded = base64.b64encode(data).decode()
    return {"capture": {"time": stamp, "dir": direction, "data": encoded}}


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> type[FakeClient]:
    FakeClient.events = []
    FakeClient.asked = []
    FakeClient.closed = 0
    monkeypatch.setattr(capture_mod, "Client", FakeClient)
    return FakeClient


def test_capture_writes_pcap_and_stops_at_count(
    fake_client: type[FakeClient], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_client.events = [
        {"event": "not a frame"},
        frame_event(10.5, "tx", FRAME),
        frame_event(11.0, "rx", BIG),
        frame_event(12.0, "rx", FRAME),
    ]
    path = tmp_path / "vm0.pcap"
    assert run_capture(Options(), Capture("vm0", str(path), 2), io.StringIO()) == 0
    assert path.read_bytes() == (PCAP_HEADER + pcap_record(10.5, FRAME) + pcap_record(11.0, BIG))
    assert fake_client.asked == [("capture", {"name": "vm0"})]
    assert fake_client.closed == 1
    assert capsys.readouterr().err == "pymacvtap: capturing on vm0, both directions\n"


def test_capture_prints_a_line_per_frame(fake_client: type[FakeClient]) -> None:
    fake_client.events = [frame_event(10.5, "tx", FRAME), frame_event(11.0, "rx", b"x")]
    out = io.StringIO()
    assert run_capture(Options(), Capture("vm0", None, None), out) == 0
    assert out.getvalue() == (
        capture_line(10.5, "tx", FRAME) + "\n" + capture_line(11.0, "rx", b"x") + "\n"
    )


def test_capture_failures_are_one_line(fake_client: type[FakeClient], tmp_path: Path) -> None:
    fake_client.events = [{"error": "capture vm9: no such endpoint"}]
    with pytest.raises(Failure) as refused:
        run_capture(Options(), Capture("vm9", None, None), io.StringIO())
    assert str(refused.value) == "capture vm9: no such endpoint"
    assert fake_client.closed == 1
    missing = tmp_path / "no" / "such.pcap"
    with pytest.raises(Failure) as unwritable:
        run_capture(Options(), Capture("vm0", str(missing), None), io.StringIO())
    assert str(unwritable.value) == f"capture vm0: {missing}: No such file or directory"
