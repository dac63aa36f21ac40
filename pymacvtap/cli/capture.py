"""``capture``: stream an endpoint's frames from the daemon into a pcap file or one line each.

The pcap writing is plain bytes (:data:`PCAP_HEADER`, :func:`pcap_record`); the summary
line is in the spirit of ``tcpdump -e``.
"""

from __future__ import annotations

import base64
import struct
import sys
import time
from typing import BinaryIO, TextIO

from pymacvtap.cli.errors import PROG, Failure
from pymacvtap.cli.parsed import Capture, Options
from pymacvtap.control.client import Client, ClientError, RemoteError
from pymacvtap.control.protocol import with_prefix

# pcap global header: magic (microsecond stamps), version 2.4, UTC, accuracy 0,
# snap length 256 KiB (offloaded super-frames are recorded whole), link type 1 Ethernet.
PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)


def pcap_record(stamp: float, data: bytes) -> bytes:
    """One pcap record: seconds, microseconds, captured and original length, the frame."""
    sec = int(stamp)
    usec = int((stamp - sec) * 1_000_000)
    return struct.pack("<IIII", sec, usec, len(data), len(data)) + data


def run_capture(opts: Options, cmd: Capture, out: TextIO) -> int:
    """Stream frames until ``cmd.count`` or the end: pcap to ``cmd.write``, else lines."""
    target = f"capture {cmd.name}"
    sink: BinaryIO | None = None
    if cmd.write == "-":
        sink = sys.stdout.buffer
    elif cmd.write is not None:
        try:
            sink = open(cmd.write, "wb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise Failure(f"{target}: {cmd.write}: {exc.strerror}") from None
    try:
        client = Client(opts.socket)
    except ClientError as exc:
        raise Failure(str(exc)) from None
    seen = 0
    try:
        if sink is not None:
            sink.write(PCAP_HEADER)
            sink.flush()
        events = client.stream("capture", {"name": cmd.name})
        # As tcpdump says "listening on": from here on no frame is missed, which is
        # what a script starting traffic after the capture waits for.
        print(f"{PROG}: capturing on {cmd.name}, both directions", file=sys.stderr, flush=True)
        for event in events:
            frame = event.get("capture")
            if not isinstance(frame, dict):
                continue
            data = base64.b64decode(frame["data"])
            stamp = float(frame["time"])
            if sink is not None:
                sink.write(pcap_record(stamp, data))
                sink.flush()
            else:
                out.write(capture_line(stamp, str(frame["dir"]), data) + "\n")
                out.flush()
            seen += 1
            if cmd.count is not None and seen >= cmd.count:
                break
    except RemoteError as exc:
        raise Failure(with_prefix(target, exc.message, cmd.name)) from None
    except ClientError as exc:
        raise Failure(str(exc)) from None
    finally:
        client.close()
        if sink is not None and sink is not sys.stdout.buffer:
            sink.close()
    return 0


def capture_line(stamp: float, direction: str, data: bytes) -> str:
    """One line per frame, in the spirit of ``tcpdump -e``."""
    clock = time.strftime("%H:%M:%S", time.localtime(stamp)) + f".{int(stamp % 1 * 1e6):06d}"
    if len(data) < 14:
        return f"{clock} {direction} runt, length {len(data)}"
    dst, src = data[0:6].hex(":"), data[6:12].hex(":")
    ethertype = int.from_bytes(data[12:14], "big")
    return f"{clock} {direction} {src} > {dst}, ethertype 0x{ethertype:04x}, length {len(data)}"
