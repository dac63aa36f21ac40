"""A DHCPv4 client for endpoints, sans-I/O: messages in, messages and lease events out.

The daemon (not this package) owns the clock, the frames and the state file:
see :class:`~pymacvtap.core.dhcp.client.DhcpClient` for the calls it makes.
"""

from pymacvtap.core.dhcp.client import (
    DhcpClient,
    Event,
    LeaseAcquired,
    LeaseLost,
    LeaseRenewed,
    State,
    client_id_for,
)
from pymacvtap.core.dhcp.lease import Lease, LeaseError
from pymacvtap.core.dhcp.message import Message, MessageType, Option, decode, encode
from pymacvtap.core.dhcp.packet import Datagram, build_frame, parse_frame

__all__ = [
    "Datagram",
    "DhcpClient",
    "Event",
    "Lease",
    "LeaseAcquired",
    "LeaseError",
    "LeaseLost",
    "LeaseRenewed",
    "Message",
    "MessageType",
    "Option",
    "State",
    "build_frame",
    "client_id_for",
    "decode",
    "encode",
    "parse_frame",
]
