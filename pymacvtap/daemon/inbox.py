"""The fast path's inbox: the one device on which the programs hand the daemon its frames.

With the fast path on, the daemon has no receiving socket on the devices that
forward (lowers, container peers, VM taps): a packet socket there is one of the
taps every frame visits before tc, so it would cost each forwarded frame a
socket filter's second decision.  Instead, what a program leaves to the daemon
(group frames, source-mode copies, endpoints the daemon serves, frames it cannot
decide) is pushed a VLAN tag in skb metadata - its *label*, naming the device
it came from - and redirected into the ingress of the inbox, a veth end of the
daemon's own.  AF_PACKET sockets read the inbox, the label comes with each
frame (``PACKET_AUXDATA``, the ring's slot header) and is never part of it, and
``inbox_ingress`` drops the frame once a socket has it.

The sockets are one fanout group, socket *i* for label *i*: the group's classic
BPF program returns the label, which the kernel takes modulo the group's size,
and the group always has more members than the highest label in use (a label's
socket is made when the label is first given, and kept for its next holder).
So each device has its own queue, as on the Python path: an endpoint that floods
the daemon (a broadcast storm) fills its own socket, not the one its neighbours'
ARP waits in, the daemon reads the sockets in turn, and what a full socket drops
is the drop of exactly that device (:meth:`Inbox.missed`).

A lower's frames are labelled with an 802.1Q tag, an endpoint device's with an
802.1ad one; the 12-bit label is the daemon's own numbering, the lowest free one
first, and a multi-queue tap adds its receive queue in the top four bits.  The
inbox is named after the daemon's pid, so daemons of one namespace do not meet,
and one a killed daemon left is deleted by the next one to start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re

from pymacvtap.io import netlink
from pymacvtap.io.afpacket import PACKET_FANOUT_CBPF, DeviceSocket
from pymacvtap.io.bpf import MAX_LABELS

log = logging.getLogger("pymacvtap")

ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
INBOX_PREFIX = "pmvtin"
_PEER_PREFIX = "pmvtip"
_INBOX_NAME = re.compile(rf"^{INBOX_PREFIX}(\d+)$")
# Big enough for any frame a lower or an endpoint may hand over: a frame longer than
# the receiving device's MTU (and not GSO) is dropped on the way in.
INBOX_MTU = 65535
# A lower's socket gets a ring (the wire's broadcast can be heavy); an endpoint's does
# not: a ring's pages count in the daemon's RSS, and a container's frames to the daemon
# are few (its unicast is the programs').
LOWER_RING_SIZE = 1 << 20
_DRAIN_BATCHES = 64  # bounds the drain of a label given back (its device is quiet by then)
# The fanout program (classic BPF; struct sock_filter: code, jt, jf, k): the label,
# the frame's VLAN TCI without a multi-queue tap's queue bits.
_BPF_LD_W_ABS, _BPF_ALU_AND_K, _BPF_RET_A = 0x20, 0x54, 0x16
_SKF_AD_VLAN_TAG = 0xFFFFF000 + 44
_PICK_BY_LABEL = (
    (_BPF_LD_W_ABS, 0, 0, _SKF_AD_VLAN_TAG),
    (_BPF_ALU_AND_K, 0, 0, MAX_LABELS - 1),
    (_BPF_RET_A, 0, 0, 0),
)


def inbox_names(pid: int) -> tuple[str, str]:
    """The inbox veth pair of the daemon with ``pid``: (the end read, its peer)."""
    return f"{INBOX_PREFIX}{pid}", f"{_PEER_PREFIX}{pid}"


def remove_left_inboxes() -> None:
    """Delete inboxes of daemons that are gone (killed ones cannot delete their own)."""
    for link in netlink.links():
        match = _INBOX_NAME.match(link.name)
        if match and not _alive(int(match.group(1))):
            log.info("%s: removing the inbox a previous daemon left", link.name)
            netlink.delete_link(link.name)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _join_new_group(sock: DeviceSocket, first: int) -> int:
    """Make ``sock`` the first member of a fanout group; its id (the first one free from
    ``first`` on: group ids are the namespace's, and another daemon may have ours)."""
    for step in range(0x10000):
        group = (first + step) & 0xFFFF
        try:
            sock.join_fanout(group, PACKET_FANOUT_CBPF)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            continue
        return group
    raise OSError(errno.EBUSY, "no free packet fanout group id")


def key_of(endpoint: bool, label: int) -> int:
    """A label as a frame's tag reads back (:func:`rxring.label_of`), without queue bits."""
    return (ETH_P_8021AD if endpoint else ETH_P_8021Q) << 16 | label


class Inbox:
    """This daemon's inbox device, its sockets (one per label) and the labels given.

    Made with :meth:`open` (replacing a device of the same name); :meth:`close`
    deletes it.  :meth:`give` numbers a device and makes sure its label has a
    socket, returning the socket when it made one (for the caller to read).
    """

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self.ifindex = netlink.link_info(ifname).ifindex
        self.sockets: list[DeviceSocket] = []
        self._group = os.getpid() & 0xFFFF
        self._labels: dict[tuple[bool, str], int] = {}
        self._holders: dict[int, tuple[bool, str]] = {}
        # A socket's drop count when its label was last given: what it dropped before
        # was another holder's.
        self._drops_before: dict[int, int] = {}

    @classmethod
    def open(cls) -> Inbox:
        name, peer = inbox_names(os.getpid())
        netlink.delete_link(name)
        netlink.create_veth(
            name, None, peer, address=bytes((2, 0, 0, 0, 0, 1)), mtu=INBOX_MTU, peer_mtu=INBOX_MTU
        )
        try:
            for end in (name, peer):
                netlink.disable_ipv6(end)
            # Up to receive (a redirect into a down device is dropped); the peer stays
            # down, so nothing is ever sent on the inbox, and it has no carrier.
            netlink.set_link(name, None, noarp=True, up=True)
            return cls(name)
        except BaseException:
            netlink.delete_link(name)
            raise

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.sockets = []
        with contextlib.suppress(OSError):
            netlink.delete_link(self.ifname)

    def give(self, name: str, *, endpoint: bool) -> tuple[int, DeviceSocket | None]:
        """The label of device ``name`` (the same again if it has one), and the socket
        made for it if there was none for that label yet."""
        key = (endpoint, name)
        if key in self._labels:
            return self._labels[key], None
        label = next((i for i in range(MAX_LABELS) if i not in self._holders), None)
        if label is None:
            raise OSError(f"{name}: no fast-path label left ({MAX_LABELS} in use)")
        new = None
        if label == len(self.sockets):
            new = self._add_socket(ring=not endpoint)
        self._labels[key] = label
        self._holders[label] = key
        self._drops_before[label] = self.sockets[label].stats()["drops"]
        return label, new

    def take_back(self, name: str, *, endpoint: bool) -> int | None:
        """Free the device's label, once its programs are off it: what it sent that is
        still unread is thrown away, or the label's next holder would be taken for its
        sender."""
        label = self._labels.pop((endpoint, name), None)
        if label is not None:
            del self._holders[label]
            sock = self.sockets[label]
            for _ in range(_DRAIN_BATCHES):
                if not sock.recv_batch(256):
                    break
        return label

    def missed(self, label: int) -> int:
        """Frames of the label's device that its socket had no room for, since it was given."""
        return self.sockets[label].stats()["drops"] - self._drops_before.get(label, 0)

    def _add_socket(self, *, ring: bool) -> DeviceSocket:
        ring_size = LOWER_RING_SIZE if ring else 0
        sock = DeviceSocket(self.ifname, labelled=True, ring_size=ring_size)
        try:
            if self.sockets:
                sock.join_fanout(self._group, PACKET_FANOUT_CBPF)
            else:
                self._group = _join_new_group(sock, self._group)
                sock.set_fanout_program(_PICK_BY_LABEL)
        except BaseException:
            sock.close()
            raise
        self.sockets.append(sock)
        return sock
