"""Tap devices: frames both ways with vnet headers, queues, namespaces, ownership."""

from __future__ import annotations

import os
import socket
from collections import deque

import pytest
from io_helpers import ETH_P_EXPERIMENTAL, MakeNetns, RawSocket, collect, eth_frame, sh, sysfs

from pymacvtap.core.frame import (
    VIRTIO_NET_HDR_GSO_UDP_L4,
    Frame,
    VnetHeader,
)
from pymacvtap.io import netlink
from pymacvtap.io.netns import entered
from pymacvtap.io.tap import IFF_MULTI_QUEUE, IFF_VNET_HDR, TUN_F_USO4, Tap, tun_features

PEER = bytes.fromhex("02000000cc01")
SOL_UDP = 17
UDP_SEGMENT = 103


def _tap(ns: str, ifname: str, **kw: object) -> Tap:
    tap = Tap.open(ifname, netns=ns, **kw)  # type: ignore[arg-type]
    netlink.set_link(ifname, ns, up=True)
    return tap


def _with_address(ns: str, ifname: str, cidr: str) -> None:
    sh("ip", "-n", ns, "addr", "add", cidr, "dev", ifname)


def _write(tap: Tap, frame: Frame, queue_index: int = 0) -> tuple[int, int]:
    """One frame through Tap.write_batch: (written, rejected)."""
    return tap.write_batch(deque([frame]), 1, queue_index)


def _udp(ns: str) -> socket.socket:
    with entered(ns):
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def test_tap_lives_in_the_namespace_it_was_created_in(make_netns: MakeNetns) -> None:
    assert tun_features() & (IFF_VNET_HDR | IFF_MULTI_QUEUE) == IFF_VNET_HDR | IFF_MULTI_QUEUE
    ns = make_netns()
    with _tap(ns, "ptap0") as tap:
        assert netlink.link_exists("ptap0", ns)
        assert not netlink.link_exists("ptap0")
        info = netlink.link_info("ptap0", ns)
        assert info.kind == "tun" and info.up and info.carrier
        assert tap.queues == 1 and tap.vnet_hdr_size == 10
    # not persistent: gone with its last fd
    assert not netlink.link_exists("ptap0", ns)


def test_frames_written_appear_on_the_netdev(make_netns: MakeNetns) -> None:
    """The fd was made inside the namespace and is used from the test's own one."""
    ns = make_netns()
    with _tap(ns, "ptap1") as tap:
        cap = RawSocket(ns, "ptap1")
        mac = bytes.fromhex(sysfs(ns, "ptap1", "address").replace(":", ""))
        frames = [
            Frame(eth_frame(mac, PEER, b"plain".ljust(46))),
            Frame(eth_frame(b"\xff" * 6, PEER, b"zero vnet".ljust(46)), VnetHeader()),
            Frame(eth_frame(mac, PEER, b"big".ljust(1400, b"!"))),
        ]
        for f in frames:
            assert _write(tap, f) == (1, 0)
        got = cap.recv_all(lambda d: d[12:14] == ETH_P_EXPERIMENTAL.to_bytes(2, "big"), 3)
        assert got == [f.data for f in frames]
        cap.close()


def test_write_batch_takes_what_it_wrote_and_counts_refusals(make_netns: MakeNetns) -> None:
    ns = make_netns()
    with _tap(ns, "pbatch0") as tap:
        cap = RawSocket(ns, "pbatch0")
        mac = bytes.fromhex(sysfs(ns, "pbatch0", "address").replace(":", ""))
        frames = [
            Frame(eth_frame(mac, PEER, f"frame {i}".encode().ljust(46)), vnet)
            for i, vnet in enumerate([None, VnetHeader(), None, None, VnetHeader()])
        ]
        queue = deque(frames)
        assert tap.write_batch(queue, 3) == (3, 0)  # the budget stops it
        assert list(queue) == frames[3:]
        assert tap.write_batch(queue, 10) == (2, 0)
        assert not queue
        got = cap.recv_all(lambda d: d[12:14] == ETH_P_EXPERIMENTAL.to_bytes(2, "big"), 5)
        assert got == [f.data for f in frames]  # in order, headers stripped by the kernel
        cap.close()
        # Down: every frame is refused (EIO), counted and removed, none left waiting.
        netlink.set_link("pbatch0", ns, up=False)
        queue = deque(frames[:2])
        assert tap.write_batch(queue, 10) == (0, 2)
        assert not queue


def test_stack_frames_are_read_with_their_vnet_header(make_netns: MakeNetns) -> None:
    ns = make_netns()
    with _tap(ns, "ptap2") as tap:
        assert tap.offloads & TUN_F_USO4  # kernel >= 6.2
        _with_address(ns, "ptap2", "10.79.0.1/24")
        sh("ip", "-n", ns, "neigh", "add", "10.79.0.2", "lladdr", "02:00:00:00:cc:01",
           "dev", "ptap2")  # fmt: skip
        udp = _udp(ns)
        # An unresolved neighbour: the stack sends an ARP request (no offload metadata).
        udp.sendto(b"who", ("10.79.0.3", 9))
        (arp,) = collect(lambda: tap.read_batch(0, 8), tap.fileno(0), 1)
        assert arp.ethertype == 0x0806 and arp.vnet is None  # type: ignore[attr-defined]
        # UDP GSO: one 3000-byte super-frame with a UDP_L4 vnet header.
        udp.setsockopt(SOL_UDP, UDP_SEGMENT, 1000)
        udp.sendto(b"u" * 3000, ("10.79.0.2", 9))
        udp.close()
        (sup,) = collect(lambda: tap.read_batch(0, 8), tap.fileno(0), 1)
        assert sup.vnet is not None  # type: ignore[attr-defined]
        assert sup.vnet.gso_type == VIRTIO_NET_HDR_GSO_UDP_L4  # type: ignore[attr-defined]
        assert sup.vnet.gso_size == 1000  # type: ignore[attr-defined]
        assert sup.vnet.needs_csum and sup.vnet.csum_start == 34  # type: ignore[attr-defined]
        assert len(sup) == 14 + 20 + 8 + 3000  # type: ignore[arg-type]
        # TCP SYN: checksum left partial for the reader (offloaded).
        with entered(ns):
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setblocking(False)
        with pytest.raises(BlockingIOError):
            tcp.connect(("10.79.0.2", 80))
        (syn,) = collect(lambda: tap.read_batch(0, 8), tap.fileno(0), 1)
        tcp.close()
        assert syn.data[23] == 6 and syn.vnet.needs_csum  # type: ignore[attr-defined]
        assert (syn.vnet.csum_start, syn.vnet.csum_offset) == (34, 16)  # type: ignore[attr-defined]


def test_vnet_header_of_12_bytes(make_netns: MakeNetns) -> None:
    ns = make_netns()
    with _tap(ns, "ptap3", vnet_hdr_size=12) as tap:
        assert tap.vnet_hdr_size == 12
        cap = RawSocket(ns, "ptap3")
        frame = Frame(eth_frame(b"\xff" * 6, PEER, b"twelve".ljust(46)))
        assert _write(tap, frame) == (1, 0)
        assert cap.recv_all(lambda d: d[6:12] == PEER) == [frame.data]
        _with_address(ns, "ptap3", "10.80.0.1/24")
        udp = _udp(ns)
        udp.sendto(b"x", ("10.80.0.3", 9))
        udp.close()
        (arp,) = collect(lambda: tap.read_batch(0, 8), tap.fileno(0), 1)
        assert arp.data[:6] == b"\xff" * 6 and arp.ethertype == 0x0806  # type: ignore[attr-defined]
        cap.close()


def test_multi_queue_tap(make_netns: MakeNetns) -> None:
    ns = make_netns()
    with entered(ns):  # opened the frontend's way: netns=None while inside
        tap = Tap.open("pmq0", queues=2)
    netlink.set_link("pmq0", ns, up=True)
    with tap:
        assert tap.queues == 2 and len(set(tap.filenos())) == 2
        cap = RawSocket(ns, "pmq0")
        frames = [Frame(eth_frame(b"\xff" * 6, PEER, bytes([q]) * 46)) for q in range(2)]
        for q, f in enumerate(frames):
            assert _write(tap, f, q) == (1, 0)
        assert cap.recv_all(lambda d: d[6:12] == PEER, 2) == [f.data for f in frames]
        cap.close()
        # The stack spreads flows over the queues.
        _with_address(ns, "pmq0", "10.81.0.1/24")
        sh("ip", "-n", ns, "neigh", "add", "10.81.0.2", "lladdr", "02:00:00:00:cc:01",
           "dev", "pmq0")  # fmt: skip
        flows = 32
        for port in range(flows):
            udp = _udp(ns)
            udp.sendto(b"flow", ("10.81.0.2", 10000 + port))
            udp.close()
        per_queue = [0, 0]
        deadline = 50
        while sum(per_queue) < flows and deadline:
            deadline -= 1
            for q in range(2):
                got = collect(lambda q=q: tap.read_batch(q, 64), tap.fileno(q), 1, 0.05)
                per_queue[q] += len(got)
        assert sum(per_queue) == flows
        assert min(per_queue) > 0, per_queue
        # A third queue can join later, from outside the namespace: it must join
        # this tap, not create a namesake in the namespace we are in.
        assert tap.attach_queue() == 2 and tap.queues == 3
        assert not netlink.link_exists("pmq0")
        cap = RawSocket(ns, "pmq0")
        assert _write(tap, frames[0], 2) == (1, 0)
        assert cap.recv_all(lambda d: d[6:12] == PEER) == [frames[0].data]
        cap.close()


def test_single_queue_tap_refuses_more_queues(make_netns: MakeNetns) -> None:
    ns = make_netns()
    with _tap(ns, "psq0") as tap, pytest.raises(ValueError):
        tap.attach_queue()


def test_owner_group_and_persistence(make_netns: MakeNetns) -> None:
    ns = make_netns()
    tap = _tap(ns, "pown0", persist=True, owner=12345, group=23456)
    assert sysfs(ns, "pown0", "owner") == "12345"
    assert sysfs(ns, "pown0", "group") == "23456"
    tap.close()
    assert netlink.link_exists("pown0", ns)  # persistent: outlives its fds
    with entered(ns):  # the frontend's way: open while inside the namespace
        again = Tap.open("pown0", persist=True)  # what a restarted daemon does
    assert sysfs(ns, "pown0", "owner") == "12345"
    again.set_persist(False)
    again.close()
    assert not netlink.link_exists("pown0", ns)


def test_write_to_a_down_tap_is_a_frame_error(make_netns: MakeNetns) -> None:
    ns = make_netns()
    with _tap(ns, "pdown0") as tap:
        netlink.set_link("pdown0", ns, up=False)
        assert _write(tap, Frame(eth_frame(b"\xff" * 6, PEER, b"x" * 46))) == (0, 1)
        assert tap.read_batch(0, 8) == []
    assert os.path.exists("/dev/net/tun")
