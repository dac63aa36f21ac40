"""A DHCPv4 client for endpoints, sans-I/O: messages in, messages and lease events out.

The daemon (not this package) owns the clock, the frames and the state file.  One
client per endpoint, driven like this (``now``: wall-clock seconds, so that a saved
lease means the same after a restart)::

    client = DhcpClient(ep.mac, os.urandom, client_id=client_id_for(name, ep.mac),
                        hostname=name)
    client.start(now, saved_lease)          # saved_lease: Lease.from_dict(...) or None
    ...
    client.receive_frame(frame, now)        # each frame delivered to the endpoint
    client.handle_timer(now)                # when now >= client.get_timer()
    for frame in client.frames_to_send():   # send as if the endpoint had sent it
        ...
    while (event := client.next_event()) is not None:
        ...                                 # LeaseAcquired: put the address on the netdev
                                            # LeaseRenewed: save event.lease.to_dict()
                                            # LeaseLost: take the address off
    client.release(now)                     # at link del; not at daemon stop
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
