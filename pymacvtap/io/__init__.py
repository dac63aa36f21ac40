"""I/O at the edges: the event loop, lowers (AF_PACKET), taps, netlink, namespaces."""
