"""The Docker network driver (``pymacvtap-docker``): libnetwork's remote driver protocol.

``driver`` answers the calls and keeps the driver's state; ``server`` carries
them over HTTP on Docker's plugin socket.
"""
