"""Fixtures of the I/O tests (defined in io_helpers).

tests/io has no __init__.py on purpose: as a package it would be named ``io``,
which the standard library owns, and nothing under it could be imported.
"""

from io_helpers import make_netns, veth

__all__ = ["make_netns", "veth"]
