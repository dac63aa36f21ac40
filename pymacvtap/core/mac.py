"""Ethernet MAC addresses as 6-byte ``bytes``, with the kernel's validity rules.

The engine keys every table by the raw 6 bytes (hashable, cheap to slice out of
a frame); text only appears at the edges, through :func:`parse_mac` and
:func:`format_mac`.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

BROADCAST = b"\xff\xff\xff\xff\xff\xff"
ZERO = b"\x00\x00\x00\x00\x00\x00"
_HEX = frozenset("0123456789abcdefABCDEF")


class MacError(ValueError):
    """A MAC address that cannot be used; the message names the address."""


def parse_mac(text: str) -> bytes:
    """Parse ``aa:bb:cc:dd:ee:ff`` (or ``-`` separated) into 6 bytes."""
    parts = text.replace("-", ":").split(":")
    if len(parts) != 6 or not all(0 < len(p) <= 2 and set(p) <= _HEX for p in parts):
        raise MacError(f"address {text}: not a MAC address (expected xx:xx:xx:xx:xx:xx)")
    return bytes(int(p, 16) for p in parts)


def format_mac(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


def is_multicast(mac: bytes) -> bool:
    """True for group addresses, broadcast included (I/G bit of the first octet)."""
    return bool(mac[0] & 1)


def is_valid_unicast(mac: bytes) -> bool:
    """The kernel's is_valid_ether_addr(): not multicast, not all-zero."""
    return len(mac) == 6 and not (mac[0] & 1) and mac != ZERO


def check_unicast(mac: bytes) -> bytes:
    """Return ``mac`` if an endpoint may carry it, else raise :class:`MacError`."""
    if len(mac) != 6:
        raise MacError(f"address {mac.hex()}: must be 6 bytes")
    if mac[0] & 1:
        raise MacError(f"address {format_mac(mac)}: is a multicast address")
    if mac == ZERO:
        raise MacError(f"address {format_mac(mac)}: is the all-zero address")
    return mac


def check_multicast(mac: bytes) -> bytes:
    if len(mac) != 6 or not mac[0] & 1:
        raise MacError(f"address {format_mac(mac)}: is not a multicast address")
    return mac


def random_local_unicast(entropy: Callable[[int], bytes]) -> bytes:
    """A random locally administered unicast address, like eth_random_addr().

    ``entropy`` is injected (``os.urandom`` in the daemon, a seeded generator in
    tests) so the engine never reads an entropy source itself.
    """
    raw = bytearray(entropy(6))
    raw[0] = (raw[0] & 0xFE) | 0x02  # clear I/G (unicast), set U/L (local)
    mac = bytes(raw)
    return mac if mac != b"\x02\x00\x00\x00\x00\x00" else random_local_unicast(entropy)
