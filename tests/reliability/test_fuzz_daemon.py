"""Hostile input against a real daemon: control requests, stream framing, raw frames.

Each test ends with the daemon alive and serving, its RSS within a bound of
what it was after a warm-up round (read from /proc/PID/status), and other
endpoints unaffected.  Counts scale with ``PYMACVTAP_FUZZ_SCALE``.
"""

from __future__ import annotations

import errno
import json
import random
import socket
import struct
import time
from pathlib import Path
from typing import Any

from lab import Lab, ip_json
from lab.daemon import DaemonProcess, wait_until
from lab.fixtures import Containers
from tests.reliability.helpers import (
    BROADCAST,
    SCALE,
    StreamVM,
    add_vm,
    frame,
    mac_of,
    public_dir,
    record,
    rss_kib,
    stats,
    vnet_packet_socket,
)

CONTROL_MESSAGES = 10_000 * SCALE
STREAM_CONNECTIONS = 300 * SCALE
# Frames the kernel accepted and the daemon got, both ways together (into a container's
# netdev, and from ext): 10^5 with `make soak` (PYMACVTAP_FUZZ_SCALE=10).
RAW_FRAMES = 10_000 * SCALE
RSS_GROWTH_KIB = 24 * 1024  # after warm-up, the daemon may grow by at most this
VLAN_TYPES = (b"\x81\x00", b"\x88\xa8")  # 802.1Q, 802.1ad
NL = b"\n"
VERBS = ["link.add", "link.set", "link.del", "link.show", "attach", "version", "exec", ""]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    r = rng.random()
    if depth > 2 or r < 0.5:
        return rng.choice(
            [None, True, False, 0, -1, 2**70, 1.5, float("1e300"), "", "x" * rng.randrange(300),
             "low0\u0000", "\udcff".encode("utf-8", "surrogatepass").decode("latin-1"),
             "../../etc/passwd", rng.randrange(1 << 32)]
        )  # fmt: skip
    if r < 0.75:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["name", "link", "type", "changes", "stats", "queues", "mode", "mtu",
                        rng.randbytes(3).hex()]): random_value(rng, depth + 1)
            for _ in range(rng.randrange(5))}  # fmt: skip


def random_request(rng: random.Random, i: int) -> bytes:
    """One line (no newline) that is not a valid state-changing request."""
    r = rng.random()
    if r < 0.15:
        line = rng.randbytes(rng.randrange(1, 400)).replace(b"\n", b" ")
        return b"x" + line  # never blank (blank lines get no reply)
    if r < 0.3:
        good = json.dumps({"v": 1, "id": i, "verb": "link.show", "args": {"stats": True}})
        return good[: rng.randrange(1, len(good))].encode()  # truncated JSON
    if r < 0.35:
        depth = rng.choice([50, 500, 5000])
        return b"[" * depth + b"]" * rng.randrange(depth + 1)
    if r < 0.4:
        return json.dumps({"v": 1, "id": i, "verb": "version", "args": {}}).encode()
    msg: dict[str, Any] = {}
    if rng.random() < 0.9:
        msg["v"] = rng.choice([1, 1, 1, 0, 2, "1", None, 1.0])
    if rng.random() < 0.9:
        msg["id"] = rng.choice([i, i, -i, "id", None, 2**64, 1.5])
    if rng.random() < 0.95:
        msg["verb"] = rng.choice([*VERBS, rng.randbytes(4).hex(), 7, None, ["link.show"]])
    if rng.random() < 0.9:
        args = random_value(rng)
        if isinstance(args, dict):
            # Real names would make some of these valid; these never exist.
            if "name" in args and not isinstance(args["name"], str):
                pass
            elif "name" in args:
                args["name"] = "fz" + rng.randbytes(3).hex()
            if args.get("link") == "low0":
                args["link"] = "nolower"
        msg["args"] = args
    if rng.random() < 0.1:
        msg[rng.randbytes(2).hex()] = random_value(rng)
    return json.dumps(msg, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")


def exchange(path: Path, lines: list[bytes], timeout: float = 15.0) -> list[dict[str, Any]]:
    """Send ``lines`` pipelined on one connection; every one must get one reply line."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.settimeout(timeout)
        s.sendall(b"".join(line + b"\n" for line in lines))
        buf = b""
        while buf.count(b"\n") < len(lines):
            chunk = s.recv(1 << 20)
            assert chunk, f"daemon closed after {buf.count(NL)} of {len(lines)} replies"
            buf += chunk
    replies = [json.loads(line) for line in buf.splitlines()]
    assert len(replies) == len(lines)
    return replies


def endless(path: Path, total: int) -> bool:
    """Stream ``total`` bytes without a newline; True when the daemon cut us off."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(str(path))
        s.settimeout(10)
        chunk = b"{" + b'"a":' * 16383 + b"1"  # 64 KiB of an object that never ends
        sent = 0
        try:
            while sent < total:
                s.sendall(chunk)
                sent += len(chunk)
        except OSError as exc:  # EPIPE/ECONNRESET: cut off
            assert exc.errno in (errno.EPIPE, errno.ECONNRESET), exc
        if sent >= total:
            s.shutdown(socket.SHUT_WR)
        data = b""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                got = s.recv(1 << 16)
            except ConnectionResetError:
                return True
            if not got:
                break
            data += got
        reply = json.loads(data.splitlines()[0])
        assert reply["ok"] is False and reply["error"]["code"] == "EMSGSIZE", reply
        return True


def without_ages(shown: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``link show`` minus what changes by itself: how long ago each address was seen."""
    return [
        {**e, "addresses": [{k: v for k, v in a.items() if k != "age"} for a in e["addresses"]]}
        for e in shown
    ]


def test_control_socket_fuzz(daemon: DaemonProcess, containers: Containers) -> None:
    containers.add("c1", "vepa")
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    before = without_ages(daemon.show())
    pid = daemon.pid
    # Clients that connect and never send: they must not hold up anyone.
    idle = []
    for _ in range(64):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(daemon.socket))
        idle.append(s)
    sent = 0
    baseline = 0
    batch = 250
    try:
        while sent < CONTROL_MESSAGES:
            lines = [random_request(rng, sent + k) for k in range(batch)]
            replies = exchange(daemon.socket, lines)
            for line, reply in zip(lines, replies, strict=True):
                if line.startswith(b'{"v": 1, "id"') and b'"verb": "version"' in line:
                    continue
                assert set(reply) <= {"v", "id", "ok", "result", "error"}, reply
                if reply["ok"] is False:
                    err = reply["error"]
                    assert err["code"] and err["message"], reply
                    assert "internal error" not in err["message"], (seed, line, reply)
            sent += batch
            if not baseline:
                baseline = rss_kib(pid)  # after one round: modules loaded, buffers grown
        # Lines too long and messages that never end: an error, then the door.
        for total in (70_000, 4 << 20):
            assert endless(daemon.socket, total)
            sent += 1
    finally:
        for s in idle:
            s.close()
    grown = rss_kib(pid) - baseline
    assert grown < RSS_GROWTH_KIB, f"daemon RSS grew {grown} KiB over {sent} messages"
    assert without_ages(daemon.show()) == before  # nothing changed state
    assert containers.ping("c1", "ext")
    record("control messages fuzzed (real daemon)", sent)
    record("idle control clients", len(idle))
    print(f"seed {seed}: {sent} messages, RSS +{grown} KiB")


def test_stream_framing_fuzz(lab: Lab, daemon: DaemonProcess) -> None:
    sockdir = public_dir()
    add_vm(daemon, "vm0", "stream", sockdir / "vm0.sock")
    add_vm(daemon, "vm1", "stream", sockdir / "vm1.sock")
    vm0_mac, vm1_mac = mac_of(daemon, "vm0"), mac_of(daemon, "vm1")
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    good = StreamVM(sockdir / "vm1.sock")  # a well-behaved neighbour throughout
    ext = lab.ext_socket()
    pid = daemon.pid
    baseline = 0
    frames = bad = 0
    try:
        for n in range(STREAM_CONNECTIONS):
            try:
                vm = StreamVM(sockdir / "vm0.sock", timeout=2)
            except OSError:
                time.sleep(0.05)
                continue
            try:
                for _ in range(rng.randrange(0, 6)):
                    size = rng.choice([0, 1, 13, 14, 60, 1514, rng.randrange(65_600)])
                    data = rng.choice([vm0_mac + rng.randbytes(max(0, size - 6)),
                                       rng.randbytes(size)])[:size]  # fmt: skip
                    vm.send(data)
                    frames += 1
                end = rng.random()
                if end < 0.3:  # a length no frame may have: the daemon hangs up
                    vm.sock.sendall(struct.pack(">I", rng.randrange(65_600, 1 << 32)))
                    bad += 1
                    vm.sock.settimeout(3)
                    try:
                        while vm.sock.recv(1 << 16):
                            pass
                    except (ConnectionResetError, TimeoutError) as exc:
                        assert not isinstance(exc, TimeoutError), "daemon kept a bad stream"
                elif end < 0.6:  # half a header, or a frame cut short, then gone
                    vm.sock.sendall(rng.choice([b"\0", b"\0\0\x05", b"\0\0\x05\xdc" + bytes(99)]))
            except OSError:
                pass  # refused: the previous client was not yet noticed gone
            finally:
                vm.close()
            time.sleep(0.005)
            if n % 50 == 0:
                # The neighbour still talks both ways.
                ext.flush()
                good.send(frame(lab.ext_mac, vm1_mac, b"neighbour %d" % n))
                assert wait_until(lambda n=n: any(
                    b"neighbour %d" % n in c.data for c in ext.read_all()), 3)  # fmt: skip
                ext.send(frame(vm1_mac, lab.ext_mac, b"to vm1 %d" % n))
                assert good.wait_for(lambda f, n=n: b"to vm1 %d" % n in f)
                if not baseline:
                    baseline = rss_kib(pid)
        # Afterwards a proper VM on vm0 works both ways.
        assert wait_until(lambda: _connects(sockdir / "vm0.sock"), 5)
        vm = StreamVM(sockdir / "vm0.sock")
        try:
            time.sleep(0.1)
            ext.flush()
            vm.send(frame(lab.ext_mac, vm0_mac, b"after the fuzz"))
            assert wait_until(lambda: any(b"after the fuzz" in c.data for c in ext.read_all()), 3)
            ext.send(frame(vm0_mac, lab.ext_mac, b"to vm0"))
            assert vm.wait_for(lambda f: b"to vm0" in f)
        finally:
            vm.close()
    finally:
        good.close()
        ext.close()
    tx = stats(daemon, "vm0")["stats64"]["tx"]
    assert tx["errors"] >= bad > 0, (tx, bad)
    grown = rss_kib(pid) - baseline
    assert grown < RSS_GROWTH_KIB, f"daemon RSS grew {grown} KiB"
    record("stream frames and bad lengths fuzzed (real daemon)", frames + bad)
    record("stream connections cut mid-frame or with bad lengths", STREAM_CONNECTIONS)
    print(f"seed {seed}: {frames} frames, {bad} bad lengths, RSS +{grown} KiB")


def _connects(path: Path) -> bool:
    try:
        vm = StreamVM(path, timeout=0.5)
    except OSError:
        return False
    try:
        vm.sock.settimeout(0.2)
        try:
            return vm.sock.recv(1) != b""  # closed at once: refused
        except TimeoutError:
            return True
    finally:
        vm.close()


def random_vnet(rng: random.Random) -> bytes:
    if rng.random() < 0.5:
        return bytes(10)
    return struct.pack(
        "<BBHHHH",
        rng.choice([0, 1, 2, rng.randrange(256)]),
        rng.choice([0, 1, 3, 4, 5, 0x81, rng.randrange(256)]),
        rng.randrange(1 << 16),
        rng.choice([0, 536, 1448, rng.randrange(1 << 16)]),
        rng.randrange(1 << 16),
        rng.randrange(1 << 16),
    )


def test_raw_frames_through_the_daemon_data_path(
    lab: Lab, daemon: DaemonProcess, containers: Containers
) -> None:
    """Any bytes, any vnet header, into a container's netdev; any frames in from ext."""
    ns = containers.add("c1", "bridge")
    containers.add("c2", "bridge")
    c1_mac, c2_mac = mac_of(daemon, "c1"), mac_of(daemon, "c2")
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    pid = daemon.pid
    raw = vnet_packet_socket(ns, "eth0")
    ext = lab.ext_socket()
    sent_c1 = sent_ext = refused = unseeable = 0
    baseline = 0
    dsts = [c1_mac, c2_mac, lab.ext_mac, BROADCAST, bytes.fromhex("01005e000001"), rng.randbytes(6)]
    i = 0
    try:
        while sent_c1 + sent_ext < RAW_FRAMES:
            i += 1
            size = rng.choice(
                [rng.randrange(0, 120), rng.randrange(0, 1600), rng.randrange(65_600)]
            )
            body = rng.choice(dsts) + rng.randbytes(max(0, size - 6))
            try:
                raw.send(random_vnet(rng) + body[:size])
                sent_c1 += 1
            except OSError:
                refused += 1  # the kernel refused that header or length before the daemon
            else:
                if len(body[:size]) < 20 and body[12:14] in VLAN_TYPES:
                    # Counted as sent by the netdev, then dropped by the receive path on the
                    # peer before anything can see it: too short for the tag it announces
                    # (skb_vlan_untag), on either data path.
                    unseeable += 1
            try:
                ext.send(rng.choice(dsts) + rng.randbytes(rng.randrange(8, 1514)))
                sent_ext += 1
            except OSError:
                refused += 1
            if i % 200 == 199:
                time.sleep(0.01)  # let the daemon breathe; this is fuzz, not load
            if i == 1000:
                baseline = rss_kib(pid)
    finally:
        raw.close()
        ext.close()
    assert sent_c1 > i // 5 and sent_ext > i // 2

    # No frame lost without a counter: every frame the daemon read off c1's tap
    # (the kernel counts those as the netdev's tx_packets) is in tx packets,
    # dropped or errors of the endpoint.
    def balanced() -> bool:
        kernel = ip_json(ns, "-s", "link", "show", "dev", "eth0")[0]["stats64"]["tx"]["packets"]
        tx = stats(daemon, "c1")["stats64"]["tx"]
        return bool(kernel - unseeable == tx["packets"] + tx["dropped"] + tx["errors"])

    assert wait_until(balanced, 5), (
        unseeable,
        ip_json(ns, "-s", "link", "show", "dev", "eth0")[0]["stats64"],
        stats(daemon, "c1")["stats64"],
    )
    grown = rss_kib(pid) - baseline
    assert grown < RSS_GROWTH_KIB, f"daemon RSS grew {grown} KiB"
    assert containers.ping("c1", "ext") and containers.ping("c2", "c1")
    record("raw frames fuzzed through the real daemon", sent_c1 + sent_ext)
    print(f"seed {seed}: c1 {sent_c1}, ext {sent_ext}, refused by the kernel {refused}")
