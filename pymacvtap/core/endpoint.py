"""One endpoint: a MAC address on a lower, with a mode and a receive queue."""

from __future__ import annotations

from collections import deque

from pymacvtap.core.mac import BROADCAST
from pymacvtap.core.modes import Mode
from pymacvtap.core.stats import EndpointStats
from pymacvtap.defaults import BCQUEUELEN

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pymacvtap.core.frame import Frame
    from pymacvtap.core.port import Port

DEFAULT_RX_QUEUE_LEN = 500  # macvtap's tx_queue_len (TUN_READQ_SIZE)
DEFAULT_BCQUEUELEN = BCQUEUELEN


class Endpoint:
    """Forwarding state of one endpoint; the frontend reads ``rx_queue``.

    Configuration changes go through :class:`pymacvtap.core.engine.Engine`,
    which keeps the lower's lookup tables in step; forwarding reads the
    attributes directly.
    """

    __slots__ = (
        "allmulti",
        "bcqueuelen",
        "mac",
        "mc_groups",
        "mode",
        "mtu",
        "name",
        "port",
        "rx_queue",
        "rx_queue_len",
        "source_macs",
        "spoofchk",
        "stats",
        "up",
    )

    def __init__(
        self,
        name: str,
        port: Port,
        mode: Mode,
        mac: bytes,
        mtu: int,
        *,
        spoofchk: bool = False,
        bcqueuelen: int = DEFAULT_BCQUEUELEN,
        rx_queue_len: int = DEFAULT_RX_QUEUE_LEN,
    ) -> None:
        self.name = name
        self.port: Port | None = port
        self.mode = mode
        self.mac = mac
        self.mtu = mtu
        self.up = False
        self.spoofchk = spoofchk
        self.bcqueuelen = bcqueuelen
        # Exact multicast filter (SPEC 2.3): joined groups; broadcast always passes.
        self.mc_groups: set[bytes] = set()
        self.allmulti = False
        self.source_macs: set[bytes] = set()
        self.rx_queue_len = rx_queue_len
        self.rx_queue: deque[Frame] = deque()
        self.stats = EndpointStats()

    def accepts_group(self, dst: bytes) -> bool:
        """The endpoint's own multicast filter (macvlan's per-vlan mc_filter)."""
        return self.allmulti or dst == BROADCAST or dst in self.mc_groups

    def __repr__(self) -> str:
        state = "up" if self.up else "down"
        return f"Endpoint({self.name!r}, {self.mode.label}, {self.mac.hex(':')}, {state})"
