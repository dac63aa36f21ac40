"""Counters: every frame handed to the engine is counted, every drop by its name.

Where a frame went is told by :mod:`pymacvtap.core.disposition`; what it cost
whom is counted here, per lower and per endpoint (SPEC 2.2).
"""

from __future__ import annotations

import enum


class DropReason(enum.Enum):
    """Why a frame was dropped, and so which counter went up.

    The value is ``(charged object, counter)``: ``lower`` or ``endpoint`` (the
    sender for ``tx_*``, the receiver for ``rx_*``).
    """

    # The third element is the reason's own name: without it, reasons charging
    # the same counter would be one enum member under several names.
    RUNT_FROM_LOWER = ("lower", "rx_errors", "runt_from_lower")
    OVERSIZE_FROM_LOWER = ("lower", "rx_errors", "oversize_from_lower")
    BCQUEUE_FULL = ("lower", "rx_dropped", "bcqueue_full")
    PASSTHRU_DOWN = ("lower", "rx_dropped", "passthru_down")
    RUNT_FROM_ENDPOINT = ("endpoint", "tx_errors", "runt_from_endpoint")
    OVERSIZE_FROM_ENDPOINT = ("endpoint", "tx_errors", "oversize_from_endpoint")
    ENDPOINT_DOWN = ("endpoint", "tx_dropped", "endpoint_down")
    LOWER_DOWN = ("endpoint", "tx_dropped", "lower_down")
    SPOOFED = ("endpoint", "tx_dropped", "spoofed")
    WIRE_QUEUE_FULL = ("endpoint", "tx_dropped", "wire_queue_full")
    RX_QUEUE_FULL = ("endpoint", "rx_dropped", "rx_queue_full")
    # A macnat endpoint's frame that cannot go on the wire translated (core/macnat.py's
    # MacNatDrop; the third element is its value).
    MACNAT_RUNT = ("endpoint", "tx_dropped", "macnat_runt")
    MACNAT_NON_IP = ("endpoint", "tx_dropped", "macnat_non_ip")
    MACNAT_ARP_UNSUPPORTED = ("endpoint", "tx_dropped", "macnat_arp_unsupported")
    MACNAT_ICMPV6_MALFORMED = ("endpoint", "tx_dropped", "macnat_icmpv6_malformed")
    MACNAT_ND_REDIRECT = ("endpoint", "tx_dropped", "macnat_nd_redirect")

    @property
    def counter(self) -> str:
        return self.value[1]


class EndpointStats:
    """Per-endpoint counters, named as in ``struct rtnl_link_stats64``."""

    __slots__ = (
        "drops",
        "rx_bytes",
        "rx_dropped",
        "rx_errors",
        "rx_multicast",
        "rx_packets",
        "tx_bytes",
        "tx_dropped",
        "tx_errors",
        "tx_packets",
    )

    def __init__(self) -> None:
        self.rx_packets = 0
        self.rx_bytes = 0
        self.rx_errors = 0
        self.rx_dropped = 0
        self.rx_multicast = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        self.tx_errors = 0
        self.tx_dropped = 0
        self.drops: dict[DropReason, int] = {}

    def as_dict(self) -> dict[str, dict[str, int]]:
        """The shape of ``ip -j -s link``'s ``stats64``."""
        return {
            "rx": {
                "bytes": self.rx_bytes,
                "packets": self.rx_packets,
                "errors": self.rx_errors,
                "dropped": self.rx_dropped,
                "multicast": self.rx_multicast,
            },
            "tx": {
                "bytes": self.tx_bytes,
                "packets": self.tx_packets,
                "errors": self.tx_errors,
                "dropped": self.tx_dropped,
            },
        }


class LowerStats:
    """Per-lower counters: what came in from the wire and what went out."""

    __slots__ = (
        "bcqueue_dropped",
        "drops",
        "rx_bytes",
        "rx_dropped",
        "rx_errors",
        "rx_not_ours",
        "rx_packets",
        "tx_bytes",
        "tx_errors",
        "tx_packets",
    )

    def __init__(self) -> None:
        self.rx_packets = 0
        self.rx_bytes = 0
        self.rx_errors = 0
        self.rx_dropped = 0
        self.rx_not_ours = 0
        self.tx_errors = 0  # frames the lower's socket refused (counted by the I/O layer)
        self.bcqueue_dropped = 0
        self.tx_packets = 0
        self.tx_bytes = 0
        self.drops: dict[DropReason, int] = {}

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__ if name != "drops"}
