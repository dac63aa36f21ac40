"""AF_PACKET sockets bound to one device of one namespace: inject and capture frames."""

from __future__ import annotations

import errno
import selectors
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .netns import socket_in

ETH_P_ALL = 0x0003
PACKET_HOST = 0
PACKET_BROADCAST = 1
PACKET_MULTICAST = 2
PACKET_OTHERHOST = 3
PACKET_OUTGOING = 4


@dataclass(frozen=True)
class Captured:
    data: bytes
    pkttype: int

    @property
    def outgoing(self) -> bool:
        return self.pkttype == PACKET_OUTGOING


class PacketSocket:
    """A non-blocking ``AF_PACKET``/``SOCK_RAW`` socket bound to ``ifname`` in ``netns``.

    ``send`` writes a whole Ethernet frame to the device (for a macvlan that is
    ``macvlan_start_xmit``); ``read_all`` returns everything queued so far, both
    directions, tagged with the kernel's ``sll_pkttype``.
    """

    def __init__(self, netns: str | None, ifname: str, *, rcvbuf: int = 4 << 20) -> None:
        self.netns = netns
        self.ifname = ifname
        sock = socket_in(netns, socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((ifname, ETH_P_ALL))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, frame: bytes) -> int:
        """Transmit one frame on the device; raises OSError (e.g. ENETDOWN) on failure."""
        return self.sock.send(frame)

    def read_all(self) -> list[Captured]:
        out = []
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except BlockingIOError:
                return out
            except OSError as exc:
                # A socket on a device that went down reports ENETDOWN once.
                if exc.errno != errno.ENETDOWN:
                    raise
                continue
            out.append(Captured(data, addr[2]))

    def flush(self) -> None:
        self.read_all()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> PacketSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drain(
    sockets: Mapping[str, PacketSocket],
    *,
    quiet: float = 0.15,
    limit: float = 3.0,
    ingress_only: bool = True,
    interesting: Callable[[bytes], bool] | None = None,
) -> dict[str, list[bytes]]:
    """Collect frames from every socket until none ``interesting`` arrived for ``quiet`` s.

    Returns name -> frames (in arrival order).  Outgoing frames are skipped unless
    ``ingress_only`` is false; uninteresting frames (noise) are dropped.
    """
    got: dict[str, list[bytes]] = {name: [] for name in sockets}
    sel = selectors.DefaultSelector()
    try:
        for name, s in sockets.items():
            sel.register(s.sock, selectors.EVENT_READ, name)
        start = time.monotonic()
        last = start
        while True:
            now = time.monotonic()
            if now - last >= quiet or now - start >= limit:
                return got
            for key, _ in sel.select(timeout=quiet - (now - last)):
                name = key.data
                for c in sockets[name].read_all():
                    if ingress_only and c.outgoing:
                        continue
                    if interesting is not None and not interesting(c.data):
                        continue
                    got[name].append(c.data)
                    last = time.monotonic()
    finally:
        sel.close()
