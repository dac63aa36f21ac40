"""DeviceSocket on a real veth / tap: receive, send, offloads, filters."""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from io_helpers import (
    ETH_P_EXPERIMENTAL,
    MakeNetns,
    RawSocket,
    Veth,
    collect,
    eth_frame,
    sh,
    sysfs,
)

from pymacvtap.core.frame import (
    VIRTIO_NET_HDR_F_NEEDS_CSUM,
    VIRTIO_NET_HDR_GSO_TCPV4,
    Frame,
    VnetHeader,
)
from pymacvtap.io import netlink
from pymacvtap.io.afpacket import DeviceSocket, FrameRejected
from pymacvtap.io.netns import entered
from pymacvtap.io.tap import Tap

IFF_PROMISC = 0x100
SRC = bytes.fromhex("02000000aa01")
FOREIGN = bytes.fromhex("02000000bb02")


def _lower(ns: str, ifname: str, **kw: bool) -> DeviceSocket:
    with entered(ns):
        return DeviceSocket(ifname, **kw)


def _mac(ns: str, ifname: str) -> bytes:
    return bytes.fromhex(sysfs(ns, ifname, "address").replace(":", ""))


def _promisc(ns: str, ifname: str) -> bool:
    return bool(int(sysfs(ns, ifname, "flags"), 16) & IFF_PROMISC)


def _ours(frames: list[Frame]) -> list[Frame]:
    return [f for f in frames if f.ethertype == ETH_P_EXPERIMENTAL]


def _drain(lower: DeviceSocket, settle: float = 0.1) -> list[Frame]:
    time.sleep(settle)
    return lower.recv_batch(10_000)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def test_identity(veth: Veth) -> None:
    with _lower(veth.ns_b, veth.b) as lower:
        assert lower.mac == _mac(veth.ns_b, veth.b)
        assert lower.mtu == 1500
        assert lower.ifindex == int(sysfs(veth.ns_b, veth.b, "ifindex"))
        sh("ip", "-n", veth.ns_b, "link", "set", veth.b, "mtu", "1400")
        assert lower.mtu == 1400
    with pytest.raises(OSError, match="no such device"):
        _lower(veth.ns_b, "nonexistent0")


def test_receives_frames_injected_from_the_peer(veth: Veth) -> None:
    inj = RawSocket(veth.ns_a, veth.a)
    with _lower(veth.ns_b, veth.b) as lower:
        dst = _mac(veth.ns_b, veth.b)
        sent = [eth_frame(dst, SRC, bytes([i]) * (46 + i)) for i in range(5)]
        sent.append(eth_frame(b"\xff" * 6, SRC, b"broadcast".ljust(46, b".")))
        for data in sent:
            inj.send(data)
        got = collect(lambda: _ours(lower.recv_batch(64)), lower.fileno(), len(sent))
        assert [f.data for f in got] == sent  # type: ignore[attr-defined]
        assert all(f.vnet is None for f in got)  # type: ignore[attr-defined]
        assert lower.recv_batch(64) == []
    inj.close()


def test_recv_batch_honours_the_limit(veth: Veth) -> None:
    inj = RawSocket(veth.ns_a, veth.a)
    with _lower(veth.ns_b, veth.b, restore_vlan=False) as lower:
        for i in range(10):
            inj.send(eth_frame(b"\xff" * 6, SRC, bytes([i]) * 46))
        time.sleep(0.1)
        first = lower.recv_batch(4)
        rest = lower.recv_batch(100)
        assert len(_ours(first)) == 4
        assert [f.data[14] for f in _ours(first + rest)] == list(range(10))
    inj.close()


def test_send_reaches_the_peer_and_is_not_received_back(veth: Veth) -> None:
    cap = RawSocket(veth.ns_a, veth.a)
    with _lower(veth.ns_b, veth.b) as lower:
        frames = [Frame(eth_frame(FOREIGN, lower.mac, bytes([i]) * 60)) for i in range(3)]
        frames.append(Frame(eth_frame(FOREIGN, SRC, b"zero vnet".ljust(46)), VnetHeader()))
        for f in frames:
            assert lower.send(f)
        got = cap.recv_all(lambda d: d[12:14] == b"\x88\xb5", count=4)
        assert got == [f.data for f in frames]
        assert _ours(_drain(lower)) == []  # PACKET_IGNORE_OUTGOING
    cap.close()


def test_host_transmissions_are_not_received(veth: Veth) -> None:
    sh("ip", "-n", veth.ns_a, "addr", "add", "10.77.0.1/24", "dev", veth.a)
    sh("ip", "-n", veth.ns_b, "addr", "add", "10.77.0.2/24", "dev", veth.b)
    cap = RawSocket(veth.ns_a, veth.a)
    mac_b = _mac(veth.ns_b, veth.b)
    with _lower(veth.ns_b, veth.b) as lower:
        with entered(veth.ns_b):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(3):
            udp.sendto(b"hello", ("10.77.0.1", 9))
        udp.close()
        seen_on_wire = cap.recv_all(lambda d: d[6:12] == mac_b, count=2)
        assert seen_on_wire  # the host did send (ARP, then UDP)
        got = _drain(lower, 0.2)
        assert [f for f in got if f.src == mac_b] == []
        assert any(f.dst == mac_b for f in got)  # the peer's ARP reply is received
    cap.close()


def test_a_fanout_group_does_not_see_frames_leaving_the_device(veth: Veth) -> None:
    """A fanout group (a multi-queue VM tap's sockets) has a packet hook of its own: the
    members' PACKET_IGNORE_OUTGOING does not reach it, the group's flag must."""
    other = RawSocket(veth.ns_b, veth.b)  # someone else sending out of vb: the host, a program
    inj = RawSocket(veth.ns_a, veth.a)
    group = [_lower(veth.ns_b, veth.b) for _ in range(2)]
    try:
        for sock in group:
            sock.join_fanout(4321)
        other.send(eth_frame(FOREIGN, SRC, b"leaving".ljust(46, b".")))
        inj.send(eth_frame(b"\xff" * 6, SRC, b"arriving".ljust(46, b".")))
        time.sleep(0.2)
        got = [f.data[14:22] for sock in group for f in _ours(sock.recv_batch(64))]
        assert got == [b"arriving"]
    finally:
        for sock in group:
            sock.close()
        other.close()
        inj.close()


def test_oversize_frame_is_rejected(veth: Veth) -> None:
    with _lower(veth.ns_b, veth.b) as lower:
        with pytest.raises(FrameRejected):
            lower.send(Frame(eth_frame(FOREIGN, lower.mac, b"x" * 3000)))
        assert lower.send(Frame(eth_frame(FOREIGN, lower.mac, b"x" * 1500)))


def test_stripped_vlan_tag_is_restored(veth: Veth) -> None:
    """The receive path untags 802.1Q into skb metadata on every device, veth included."""
    inj = RawSocket(veth.ns_a, veth.a)
    dst = _mac(veth.ns_b, veth.b)
    tagged = dst + SRC + b"\x81\x00\x20\x2a" + b"\x88\xb5" + b"tagged".ljust(46, b".")
    with _lower(veth.ns_b, veth.b) as lower, _lower(veth.ns_b, veth.b, restore_vlan=False) as raw:
        inj.send(tagged)
        got = collect(lambda: lower.recv_batch(8), lower.fileno(), 1)
        assert [f.data for f in got] == [tagged]  # type: ignore[attr-defined]
        plain = collect(lambda: raw.recv_batch(8), raw.fileno(), 1)
        assert [f.data for f in plain] == [tagged[:12] + tagged[16:]]  # type: ignore[attr-defined]
    inj.close()


def test_tcp_stream_arrives_as_gso_super_frames(veth: Veth) -> None:
    sh("ip", "-n", veth.ns_a, "addr", "add", "10.78.0.1/24", "dev", veth.a)
    sh("ip", "-n", veth.ns_b, "addr", "add", "10.78.0.2/24", "dev", veth.b)
    total = 4 << 20
    with _lower(veth.ns_b, veth.b) as lower:
        with entered(veth.ns_b):
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.bind(("10.78.0.2", 5001))
            server.listen(1)
        with entered(veth.ns_a):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.settimeout(10)
        client.connect(("10.78.0.2", 5001))
        sender = threading.Thread(target=client.sendall, args=(b"x" * total,))
        sender.start()
        conn, _ = server.accept()
        conn.settimeout(10)
        received = 0
        while received < total:
            chunk = conn.recv(1 << 20)
            assert chunk
            received += len(chunk)
        sender.join()
        for s in (conn, client, server):
            s.close()
        frames = _drain(lower, 0.05)
    tcp = [f for f in frames if f.ethertype == 0x0800 and f.data[23] == 6]
    gso = [f for f in tcp if f.vnet is not None and f.vnet.is_gso]
    assert gso, f"{len(tcp)} TCP frames, none GSO"
    big = max(gso, key=len)
    assert big.vnet is not None
    assert big.vnet.gso_type & 0x7F == VIRTIO_NET_HDR_GSO_TCPV4
    assert 1000 <= big.vnet.gso_size <= 1448
    assert len(big) > 1514
    assert big.segment_size() <= 1500


def test_gso_super_frame_is_segmented_by_the_kernel(make_netns: MakeNetns) -> None:
    """A tap without offloads forces software GSO: the super-frame leaves as segments."""
    ns = make_netns()
    with entered(ns):
        tap = Tap.open("pgso0", vnet_hdr=False)
    netlink.set_link("pgso0", ns, up=True)
    with tap, _lower(ns, "pgso0") as lower:
        payload = bytes(range(256)) * 16  # 4096 bytes
        saddr, daddr = socket.inet_aton("10.0.0.1"), socket.inet_aton("10.0.0.2")
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 7, 0x4000, 64, 6, 0,
                         saddr, daddr)  # fmt: skip
        ip = ip[:10] + struct.pack("!H", 0xFFFF - _csum(ip)) + ip[12:]
        pseudo = _csum(saddr + daddr + struct.pack("!HH", 6, 20 + len(payload)))
        tcp = struct.pack("!HHIIBBHHH", 1234, 5678, 1000, 1, 0x50, 0x18, 65535, pseudo, 0)
        frame = Frame(
            eth_frame(FOREIGN, lower.mac, ip + tcp + payload, 0x0800),
            VnetHeader(VIRTIO_NET_HDR_F_NEEDS_CSUM, VIRTIO_NET_HDR_GSO_TCPV4, 54, 1000, 34, 16),
        )
        assert lower.send(frame)
        got = collect(lambda: tap.read_batch(0, 64), tap.fileno(0), 5)
    segs = [f.data for f in got if f.ethertype == 0x0800]  # type: ignore[attr-defined]
    assert [len(s) for s in segs] == [1054, 1054, 1054, 1054, 150]
    for i, seg in enumerate(segs):
        seq = struct.unpack("!I", seg[38:42])[0]
        assert seq == 1000 + 1000 * i
        assert seg[54:] == payload[1000 * i : 1000 * (i + 1)]
        iplen = struct.unpack("!H", seg[16:18])[0]
        assert iplen == len(seg) - 14
        assert _csum(seg[14:34]) == 0xFFFF
        tcp_len = iplen - 20
        assert _csum(saddr + daddr + struct.pack("!HH", 6, tcp_len) + seg[34:]) == 0xFFFF


def test_unicast_membership_on_veth(veth: Veth) -> None:
    """veth has no unicast filter: it hears every MAC anyway, and a filter entry makes it
    promiscuous (what the kernel does for devices without IFF_UNICAST_FLT)."""
    inj = RawSocket(veth.ns_a, veth.a)
    lower = _lower(veth.ns_b, veth.b)
    inj.send(eth_frame(FOREIGN, SRC, b"before".ljust(46)))
    assert [f.dst for f in _ours(_drain(lower))] == [FOREIGN]
    assert not _promisc(veth.ns_b, veth.b)
    lower.add_unicast(FOREIGN)
    lower.add_unicast(FOREIGN)  # idempotent
    assert _promisc(veth.ns_b, veth.b)
    inj.send(eth_frame(FOREIGN, SRC, b"after".ljust(46)))
    assert [f.dst for f in _ours(_drain(lower))] == [FOREIGN]
    lower.del_unicast(FOREIGN)
    lower.del_unicast(FOREIGN)  # absent: no-op
    assert not _promisc(veth.ns_b, veth.b)
    lower.add_unicast(FOREIGN)
    assert _promisc(veth.ns_b, veth.b)
    lower.close()  # memberships die with the socket: crash cleanup
    assert not _promisc(veth.ns_b, veth.b)
    inj.close()


def test_unicast_membership_on_a_filtering_device(veth: Veth) -> None:
    """A kernel macvlan has IFF_UNICAST_FLT: the MAC goes into its filter, no promisc.

    (Its own lower, a veth, is promiscuous already: the macvlan's MAC sits in the
    veth's unicast list.)  A macvlan only passes up frames for its own MAC, so a
    filter entry on it does not bring frames for other MACs: a lower must be a
    real Ethernet device or a veth, not a kernel macvlan.
    """
    sh("ip", "-n", veth.ns_b, "link", "add", "link", veth.b, "name", "mvf0", "type", "macvlan")
    sh("ip", "-n", veth.ns_b, "link", "set", "mvf0", "up")
    assert _promisc(veth.ns_b, veth.b)
    inj = RawSocket(veth.ns_a, veth.a)
    with _lower(veth.ns_b, "mvf0") as lower:
        lower.add_unicast(FOREIGN)
        assert lower.unicast == {FOREIGN}
        assert not _promisc(veth.ns_b, "mvf0")
        inj.send(eth_frame(FOREIGN, SRC, b"to foreign".ljust(46)))
        assert _ours(_drain(lower)) == []
        lower.del_unicast(FOREIGN)
        assert not _promisc(veth.ns_b, "mvf0")
    inj.close()


def test_promisc_and_multicast_membership(veth: Veth) -> None:
    group = bytes.fromhex("01005e010203")
    with _lower(veth.ns_b, veth.b) as lower:
        lower.set_promisc(True)
        lower.set_promisc(True)
        assert lower.promisc and _promisc(veth.ns_b, veth.b)
        lower.set_promisc(False)
        assert not _promisc(veth.ns_b, veth.b)
        lower.add_multicast(group)
        assert group in netlink.multicast_groups(veth.b, veth.ns_b)
        lower.del_multicast(group)
        assert group not in netlink.multicast_groups(veth.b, veth.ns_b)


def _running_packet_sockets(ns: str) -> list[int]:
    """The ifindex of each packet socket in ``ns`` on a device's packet taps (R in the table)."""
    rows = sh("ip", "netns", "exec", ns, "cat", "/proc/net/packet").splitlines()[1:]
    return [int(row.split()[4]) for row in rows if row.split()[5] == "1"]


def test_a_socket_that_stops_receiving_keeps_its_memberships_and_sends(veth: Veth) -> None:
    """The fast path's sockets on lowers: off the device's taps, the filter entries kept."""
    group = bytes.fromhex("01005e010203")
    inj = RawSocket(veth.ns_a, veth.a)
    with _lower(veth.ns_b, veth.b) as lower:
        ifindex = lower.ifindex
        lower.add_unicast(FOREIGN)
        lower.add_multicast(group)
        assert _running_packet_sockets(veth.ns_b) == [ifindex]
        old_fd = lower.fileno()
        lower.stop_receiving()
        lower.stop_receiving()  # once is enough
        assert not lower.receiving and lower.fileno() != old_fd
        assert _running_packet_sockets(veth.ns_b) == []
        assert _promisc(veth.ns_b, veth.b)
        assert group in netlink.multicast_groups(veth.b, veth.ns_b)
        assert lower.unicast == {FOREIGN}
        inj.send(eth_frame(FOREIGN, SRC, b"unread".ljust(46)))
        assert lower.recv_batch(8) == []
        lower.send(Frame(eth_frame(FOREIGN, lower.mac, b"still sends".ljust(46))))
        assert len(inj.recv_all(lambda data: b"still sends" in data)) == 1
    assert not _promisc(veth.ns_b, veth.b)  # and they go with it
    with _lower(veth.ns_b, veth.b, receive=False) as sender:
        assert _running_packet_sockets(veth.ns_b) == [] and not sender.receiving
        assert sender.send(Frame(eth_frame(FOREIGN, sender.mac, b"born sending".ljust(46))))
    inj.close()


def test_lower_down_and_up_again(veth: Veth) -> None:
    """Down: the socket reports ENETDOWN once (not raised) and send is a frame error;
    up again: frames flow without reopening."""
    inj = RawSocket(veth.ns_a, veth.a)
    for restore_vlan in (True, False):
        with _lower(veth.ns_b, veth.b, restore_vlan=restore_vlan) as lower:
            sh("ip", "-n", veth.ns_b, "link", "set", veth.b, "down")
            assert lower.recv_batch(8) == []
            assert lower.link_down_events == 1
            with pytest.raises(FrameRejected):
                lower.send(Frame(eth_frame(FOREIGN, lower.mac, b"x" * 46)))
            sh("ip", "-n", veth.ns_b, "link", "set", veth.b, "up")
            inj.send(eth_frame(b"\xff" * 6, SRC, b"back".ljust(46)))
            got = collect(lambda: _ours(lower.recv_batch(8)), lower.fileno(), 1)
            assert len(got) == 1
    inj.close()
