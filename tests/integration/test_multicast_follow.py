"""IP multicast joins in a container reach the endpoint's filter at once (RTM_NEWMULTICAST).

The group poll reads every netdev's list once a second; a socket joining an IP group makes
the kernel send RTM_NEWMULTICAST to the namespace's rtnetlink group (Linux 6.13 and on),
and the daemon re-reads that netdev's groups then.  Three groups joined one after the
other each reach the container well within a poll period: by the poll alone, all three
would be that quick about once in sixty runs.
"""

from __future__ import annotations

import socket
import struct
import time

from lab import PacketSocket, ip_json
from lab.fixtures import Containers
from lab.netns import socket_in

QUICK = 0.25  # seconds; the poll's period is 1 s


def test_a_socket_joining_a_group_gets_its_frames_without_waiting_for_the_poll(
    containers: Containers,
) -> None:
    ns = containers.add("c1", "vepa")
    ext_mac = bytes.fromhex("02000000ee01")
    eth0 = int(ip_json(ns, "link", "show", "eth0")[0]["ifindex"])
    with (
        PacketSocket(containers.lab.ext, "eth0") as ext,
        PacketSocket(ns, "eth0") as inside,
        socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM) as member,
    ):
        for n in (1, 2, 3):
            group = f"239.7.7.{n}"
            group_mac = bytes([0x01, 0x00, 0x5E, 0x07, 0x07, n])
            frame = group_mac + ext_mac + b"\x88\xb5" + bytes(46)  # not IPv4: br_netfilter
            inside.flush()
            mreq = socket.inet_aton(group) + socket.inet_aton("0.0.0.0") + struct.pack("i", eth0)
            joined = time.monotonic()
            member.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
            got = None
            while time.monotonic() - joined < 3.0:
                ext.send(frame)
                time.sleep(0.02)
                if any(c.data[:6] == group_mac and not c.outgoing for c in inside.read_all()):
                    got = time.monotonic() - joined
                    break
            assert got is not None, f"{group}: never received"
            assert got < QUICK, f"{group}: received after {got:.2f} s (the poll's pace)"
