"""The ``tap`` frontend of a ``macvtap`` endpoint: a user-owned tap a VM opens.

A tap has two sides.  QEMU holds the queue fds: what the guest sends is
written there and enters the kernel as if *received* on the tap netdev; what
the kernel *transmits* on the netdev is read by QEMU.  So the daemon must not
hold a queue fd itself (the kernel would hash some flows to a queue nobody
reads).  It works on the netdev side instead, with AF_PACKET sockets bound
to the tap: their ingress is the guest's traffic, and frames sent on them are
transmitted by the tap to the guest.  Offloads pass through both ways with
PACKET_VNET_HDR; if the guest took no TSO the kernel segments for it.

The netdev is a port, not a host interface: no addresses, IPv6 and ARP off,
so the host stack never answers through it (SPEC 3).  It is persistent and
owned by the endpoint's owner/group, so QEMU run by that user can open it by
name (``-netdev tap,ifname=``), and it survives a daemon restart with the VM
still attached.  With several queues, one socket per queue joins a
queue-mapped fanout group: socket *i* sees the frames of the guest's queue *i*.
On the fast path (:meth:`VmTapFrontend.stop_reading`) one socket, for writing
only, is left: the daemon gets the guest's frames on its inbox, each with the
queue it came on.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable

from pymacvtap.core.frame import Frame
from pymacvtap.core.mac import format_mac
from pymacvtap.frontends.base import WRITE_BUDGET, FrontendDefaults
from pymacvtap.io import netlink
from pymacvtap.io.afpacket import DeviceSocket
from pymacvtap.io.netns import entered
from pymacvtap.io.tap import Tap

# One VM's traffic per socket: a smaller receive ring than a lower's keeps a
# 4-queue VM from pinning 16 MiB.
VM_RING_SIZE = 1 << 20
_fanout_ids = itertools.count(0x5000)


class VmTapFrontend(FrontendDefaults):
    def __init__(self, ifname: str, netns: str | None, queues: int, socks: list[DeviceSocket]):
        self.ifname = ifname
        self.netns = netns
        self.queues = queues
        self.socks = socks
        self._by_fd = {s.fileno(): i for i, s in enumerate(socks)}
        self.queue_frames = [0] * queues  # frames from the guest, per queue
        self.queue_bytes = [0] * queues
        self.dropped = 0
        self.errors = 0
        self._missed_elsewhere: Callable[[], int] | None = None

    @classmethod
    def create(
        cls,
        ifname: str,
        netns: str | None,
        mac: bytes,
        mtu: int,
        *,
        queues: int,
        owner: int | None,
        group: int | None,
        reattach: bool,
    ) -> VmTapFrontend:
        with entered(netns):
            exists = netlink.link_exists(ifname)
        if exists and not reattach:
            raise FileExistsError(f"a device named {ifname} exists already")
        if not exists:
            # Created, made persistent and handed to its owner; our queue fd is
            # closed again at once so every queue is the VM's.
            Tap.open(
                ifname,
                netns=netns,
                queues=1,
                multi_queue=queues > 1,
                persist=True,
                # Neither given: root's.  A tap with no owner and no group may be
                # attached by anyone who can open /dev/net/tun (tun_not_capable).
                owner=0 if owner is None and group is None else owner,
                group=group,
            ).close()
        socks: list[DeviceSocket] = []
        try:
            netlink.set_link(ifname, netns, address=format_mac(mac), mtu=mtu, noarp=True, up=True)
            netlink.disable_ipv6(ifname, netns)
            with entered(netns):
                for _ in range(queues):
                    socks.append(DeviceSocket(ifname, restore_vlan=True, ring_size=VM_RING_SIZE))
            if queues > 1:
                group_id = next(_fanout_ids) & 0xFFFF
                for sock in socks:
                    sock.join_fanout(group_id)
        except BaseException:
            for sock in socks:
                sock.close()
            if not exists:
                netlink.delete_link(ifname, netns)
            raise
        return cls(ifname, netns, queues, socks)

    def open_queue_fds(self, count: int, owner: int | None, group: int | None) -> list[int]:
        """Fresh queue fds for the VM (helper, exec); the caller passes and closes them."""
        tap = Tap.open(
            self.ifname,
            netns=self.netns,
            queues=count,
            multi_queue=self.queues > 1,
            persist=True,
            owner=owner,
            group=group,
        )
        return tap.detach_fds()

    @property
    def missed(self) -> int:
        """Frames of the guest the daemon's socket had no room for (counted on the fast
        path's inbox; the queue sockets' drops are not kept)."""
        return 0 if self._missed_elsewhere is None else self._missed_elsewhere()

    def stop_reading(self, missed: Callable[[], int]) -> None:
        """The fast path hands the daemon the guest's frames on its inbox (``missed`` counts
        what it had no room for there): one socket is kept, for writing only and off the
        tap's receive path (a fanout group's member cannot leave it, so a new one)."""
        self._missed_elsewhere = missed
        if self.socks and not self.socks[0].receiving:
            return
        with entered(self.netns):
            sock = DeviceSocket(self.ifname, receive=False)
        for old in self.socks:
            old.close()
        self.socks = [sock]
        self._by_fd = {}

    def from_guest(self, queue: int, frame: Frame) -> None:
        """Count a frame the guest sent on ``queue``, handed over by the fast path."""
        if 0 <= queue < self.queues:
            self.queue_frames[queue] += 1
            self.queue_bytes[queue] += len(frame.data)

    def readable_fds(self) -> list[int]:
        return [s.fileno() for s in self.socks if s.receiving]

    def read(self, fd: int, budget: int) -> list[Frame]:
        index = self._by_fd.get(fd)
        if index is None:
            return []
        frames = self.socks[index].recv_batch(budget)
        if frames:
            self.queue_frames[index] += len(frames)
            self.queue_bytes[index] += sum(len(f.data) for f in frames)
        return frames

    def write(self, queue: deque[Frame]) -> int | None:
        sock = self.socks[0]
        sent, rejected = sock.send_batch(queue, WRITE_BUDGET)
        self.dropped += rejected
        if queue and sent + rejected < WRITE_BUDGET:
            return sock.fileno()  # the socket is full: wait until it is writable
        return None

    def queue_stats(self) -> list[dict[str, int]]:
        return [
            {"queue": i, "tx_packets": self.queue_frames[i], "tx_bytes": self.queue_bytes[i]}
            for i in range(self.queues)
        ]

    def moved(self, ifname: str, netns: str | None) -> None:
        """Renamed or moved by someone else: the queue fds go along, only the names change."""
        self.ifname, self.netns = ifname, netns

    def close(self, *, delete: bool) -> None:
        for sock in self.socks:
            sock.close()
        self.socks = []
        if delete:
            netlink.delete_link(self.ifname, self.netns)
