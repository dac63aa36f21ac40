"""pymacvtap: a user-space macvlan/macvtap.

The forwarding policy lives in :mod:`pymacvtap.core`, a sans-I/O engine (frames
in, decisions out).  Everything that touches a file descriptor lives at the
edges: :mod:`pymacvtap.io` (lowers, netlink), :mod:`pymacvtap.frontends`
(taps, sockets, vhost-user) and :mod:`pymacvtap.control` (the control socket).
"""

__version__ = "0.1.0"
