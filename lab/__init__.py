"""A reusable network-namespace lab (SPEC section 8) for tests, benchmarks and the demo.

* :mod:`.netns`    -- unique namespace names, ``ip``/``bridge`` helpers, ``in_netns``
* :mod:`.capture`  -- AF_PACKET sockets to inject and capture frames on one device
* :mod:`.topology` -- :class:`Lab`: switch ``br0`` (hairpin ports), host lowers, ext
"""

from .capture import PACKET_OUTGOING, Captured, PacketSocket, drain
from .netns import (
    CommandError,
    bridge,
    cleanup_leftovers,
    create_netns,
    delete_netns,
    in_netns,
    ip,
    ip_batch,
    ip_json,
    list_netns,
    run,
    socket_in,
    sysctl,
    unique_prefix,
)
from .topology import Lab, Lower, mac_bytes, mac_str

__all__ = [
    "PACKET_OUTGOING",
    "Captured",
    "CommandError",
    "Lab",
    "Lower",
    "PacketSocket",
    "bridge",
    "cleanup_leftovers",
    "create_netns",
    "delete_netns",
    "drain",
    "in_netns",
    "ip",
    "ip_batch",
    "ip_json",
    "list_netns",
    "mac_bytes",
    "mac_str",
    "run",
    "socket_in",
    "sysctl",
    "unique_prefix",
]
