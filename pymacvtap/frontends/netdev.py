"""The ``tap`` frontend of a ``macvlan`` endpoint: a network device for a container or the host.

The daemon creates a tap named ``ifname`` inside the endpoint's network
namespace, gives it the endpoint's MAC, and keeps the tap fd: frames the
container sends are read from the fd, frames for it are written to the fd.  The
tap is persistent so that the netdev, its addresses and routes survive a daemon
restart (SPEC 5); the next daemon re-attaches by name.  A vnet header with TSO
and checksum offloads lets super-frames pass through unsegmented.

A tap rather than a veth whose peer the daemon reads through AF_PACKET (SPEC 3
allows either): measured by ``bench/netdev_choice.py``, the tap costs the daemon
less per frame written and about the same per frame read (bench/README.md, tap or veth).
"""

from __future__ import annotations

from collections import deque

from pymacvtap.core.frame import Frame
from pymacvtap.core.mac import format_mac
from pymacvtap.frontends.base import WRITE_BUDGET, FrontendDefaults
from pymacvtap.io import netlink
from pymacvtap.io.netns import entered
from pymacvtap.io.tap import Tap


class NetdevFrontend(FrontendDefaults):
    """A persistent tap netdev in a namespace, read and written by the daemon."""

    # Frames left unread keep the tap fd readable: a read may stop at any count.
    level_triggered = True

    def __init__(self, ifname: str, netns: str | None, tap: Tap) -> None:
        self.ifname = ifname
        self.netns = netns
        self.tap = tap
        self.dropped = 0  # frames the tap refused (device down, bad header)
        self.errors = 0

    @classmethod
    def create(
        cls, ifname: str, netns: str | None, mac: bytes, mtu: int, *, reattach: bool
    ) -> NetdevFrontend:
        """Create the tap (or, when ``reattach``, take over the existing one by name)."""
        with entered(netns):
            exists = netlink.link_exists(ifname)
            if exists and not reattach:
                raise FileExistsError(f"a device named {ifname} exists already")
            # Created root's: a tap without owner is anyone's to attach (tun_not_capable).
            tap = Tap.open(ifname, persist=True, owner=None if exists else 0)
        frontend = cls(ifname, netns, tap)
        try:
            if not exists:
                netlink.set_link(ifname, netns, address=format_mac(mac), mtu=mtu, up=False)
            else:
                netlink.set_link(ifname, netns, address=format_mac(mac))
        except BaseException:
            frontend.close(delete=not exists)
            raise
        return frontend

    def moved(self, ifname: str, netns: str | None) -> None:
        """Renamed or moved by someone else: the tap fd goes along, only the names change."""
        self.ifname, self.netns = ifname, netns

    def set_carrier(self, on: bool) -> None:
        """Carrier follows the lower, as a kernel macvlan's does."""
        self.tap.set_carrier(on)

    def readable_fds(self) -> list[int]:
        return [self.tap.fileno(0)]

    def read(self, fd: int, budget: int) -> list[Frame]:
        return self.tap.read_batch(0, budget)

    def write(self, queue: deque[Frame]) -> int | None:
        written, rejected = self.tap.write_batch(queue, WRITE_BUDGET)
        # Rejected: EIO while the container has the device down; the frames are
        # lost, as they would be on a down netdev, and counted.
        self.dropped += rejected
        if queue and written + rejected < WRITE_BUDGET:
            return self.tap.fileno(0)  # full: wait until it is writable
        return None

    def close(self, *, delete: bool) -> None:
        """Close our fd; with ``delete`` also remove the netdev (link del)."""
        self.tap.close()
        if delete:
            netlink.delete_link(self.ifname, self.netns)
