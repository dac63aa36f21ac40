"""The netdev of a ``macvlan`` endpoint: one end of a veth pair, the other end the daemon's.

The named end (``ifname``) is in the endpoint's namespace with the endpoint's
MAC; its peer stays in the daemon's namespace, named after the endpoint
(:func:`peer_name`) so that ``ip link`` tells whose it is.  The Python data path
reads and writes the peer through an AF_PACKET socket: what the container sends
arrives at the peer's ingress, and what the daemon sends on the peer is
received by the container.  The kernel fast path (SPEC 7) attaches its program
to the same peer and reaches the container with ``bpf_redirect_peer``, which
only a veth allows: that is why this is not a tap any more.

The peer is a port, not a host interface: no addresses, ARP and IPv6 off.  Its
admin state is the container end's carrier, so carrier following is setting
the peer up or down.  Its MTU is the largest a veth takes: the endpoint's MTU
is checked by the engine (and the programs), as it was on the tap.  Both ends
persist across a daemon restart (SPEC 5): the next daemon re-attaches by name.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable

from pymacvtap.core.frame import Frame
from pymacvtap.frontends.base import WRITE_BUDGET, FrontendDefaults
from pymacvtap.io import netlink
from pymacvtap.io.afpacket import DeviceSocket

PEER_PREFIX = "pmv-"
IFNAMSIZ = 16
PEER_MTU = 65535  # veth's max_mtu
# No receive ring: a ring's pages count in the daemon's RSS (1 MiB per endpoint made 100
# endpoints cost 105 MiB, SPEC 7 allows 50 KB each), and on the peer it saves little
# (bench/README.md, tap or veth): the container's send already paid for the copy.
PEER_RING_SIZE = 0


def peer_name(endpoint: str) -> str:
    """``pmv-<endpoint>``, or when that is too long, a prefix and a hash: always the same."""
    name = PEER_PREFIX + endpoint
    if len(name) < IFNAMSIZ:
        return name
    digest = hashlib.sha1(endpoint.encode()).hexdigest()[:5]
    keep = IFNAMSIZ - 1 - len(PEER_PREFIX) - len(digest)
    return f"{PEER_PREFIX}{endpoint[:keep]}{digest}"


class VethFrontend(FrontendDefaults):
    """A veth pair: the endpoint's netdev in its namespace, the peer read by the daemon."""

    # Frames left unread keep the socket readable: a read may stop at any count.
    level_triggered = True

    def __init__(self, ifname: str, netns: str | None, peer: str, sock: DeviceSocket) -> None:
        self.ifname = ifname
        self.netns = netns
        self.peer = peer
        self.sock = sock
        self.dropped = 0  # frames the peer refused (down)
        self.errors = 0
        self._missed_elsewhere: Callable[[], int] | None = None

    @classmethod
    def create(
        cls, endpoint: str, ifname: str, netns: str | None, mac: bytes, mtu: int, *, reattach: bool
    ) -> VethFrontend:
        """Create the pair (or, when ``reattach``, take over the existing one by name)."""
        peer = peer_name(endpoint)
        exists = netlink.link_exists(ifname, netns)
        peer_exists = netlink.link_exists(peer)
        if exists and peer_exists and reattach:
            netlink.set_link(ifname, netns, address=mac)
        elif exists and (not reattach or not peer_exists):
            raise FileExistsError(f"a device named {ifname} exists already")
        elif peer_exists:
            raise FileExistsError(f"a device named {peer} exists already")
        else:
            make_veth(ifname, netns, peer, mac, mtu)
        created = not exists
        try:
            netlink.disable_ipv6(peer)
            netlink.set_link(peer, None, noarp=True, up=True)
            sock = DeviceSocket(peer, restore_vlan=True, ring_size=PEER_RING_SIZE)
        except BaseException:
            if created:
                netlink.delete_link(peer)
            raise
        return cls(ifname, netns, peer, sock)

    @property
    def missed(self) -> int:
        """Frames the container sent that the daemon's socket had no room for.

        A tap's queue refused them, and the container's netdev counted them as its
        tx_dropped; a veth hands every frame to its peer, so the socket is where they go
        (on the fast path, the daemon's socket for this peer on its inbox).
        """
        if self._missed_elsewhere is not None:
            return self._missed_elsewhere()
        return self.sock.stats()["drops"]

    def moved(self, ifname: str, netns: str | None) -> None:
        """The named end was renamed or moved by someone else (Docker does both); the peer,
        which is what the daemon reads and writes, stays where it is."""
        self.ifname, self.netns = ifname, netns

    def set_carrier(self, on: bool) -> None:
        """Carrier follows the lower, as a kernel macvlan's does: the peer's admin state."""
        netlink.set_link(self.peer, None, up=on)

    def stop_reading(self, missed: Callable[[], int]) -> None:
        """The fast path hands the daemon this peer's frames on its inbox (``missed`` counts
        what it had no room for there): keep the socket for writing only, off the peer's
        receive path."""
        self.sock.stop_receiving()
        self._missed_elsewhere = missed

    def readable_fds(self) -> list[int]:
        return [self.sock.fileno()] if self.sock.receiving else []

    def read(self, fd: int, budget: int) -> list[Frame]:
        return self.sock.recv_batch(budget)

    def write(self, queue: deque[Frame]) -> int | None:
        sent, rejected = self.sock.send_batch(queue, WRITE_BUDGET)
        # Rejected: the peer is down (no carrier); the frames are lost and counted.
        self.dropped += rejected
        if queue and sent + rejected < WRITE_BUDGET:
            return self.sock.fileno()  # the socket is full: wait until it is writable
        return None

    def close(self, *, delete: bool) -> None:
        """Close our socket; with ``delete`` also remove the pair (both ends go together)."""
        self.sock.close()
        if delete:
            netlink.delete_link(self.peer)


def make_veth(ifname: str, netns: str | None, peer: str, mac: bytes, mtu: int) -> None:
    """Where an endpoint's veth pair is made: the named end starts down, like `ip link add`."""
    netlink.create_veth(ifname, netns, peer, address=mac, mtu=mtu, peer_mtu=PEER_MTU)
