"""DHCPv4 messages (RFC 2131, options RFC 2132): bytes to a :class:`Message` and back.

Decoding is total: :func:`decode` returns None for anything that is not a
well-formed BOOTP/DHCP message and never raises, because its input comes from
the wire.  Options are kept as raw bytes by code; a code that appears several
times is concatenated (RFC 3396), and option overload (52) pulls options out of
the ``file`` and ``sname`` fields.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from ipaddress import IPv4Address

from pymacvtap.core.dhcp.value import Value

BOOTREQUEST = 1
BOOTREPLY = 2
CLIENT_PORT = 68
SERVER_PORT = 67
MAGIC_COOKIE = b"\x63\x82\x53\x63"
FLAG_BROADCAST = 0x8000
ANY = IPv4Address(0)
BROADCAST_IP = IPv4Address("255.255.255.255")

# op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file
_FIXED = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")
FIXED_SIZE = _FIXED.size  # 236
MIN_SIZE = 300  # BOOTP's minimum; some servers and relays drop shorter messages


class MessageType(IntEnum):
    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8


class Option(IntEnum):
    PAD = 0
    SUBNET_MASK = 1
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    DOMAIN_NAME = 15
    MTU = 26
    BROADCAST_ADDRESS = 28
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_REQUEST_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_TIME = 58
    REBINDING_TIME = 59
    CLIENT_ID = 61
    END = 255


class Message(Value):
    """One BOOTP/DHCP message; ``options`` maps an option code to its (joined) bytes."""

    __slots__ = (
        "chaddr", "ciaddr", "flags", "giaddr", "hops", "op", "options", "secs", "siaddr",
        "xid", "yiaddr",
    )  # fmt: skip

    def __init__(
        self,
        op: int,
        xid: int,
        chaddr: bytes,  # the client's hardware address (6 bytes for Ethernet)
        options: dict[int, bytes] | None = None,
        secs: int = 0,
        flags: int = 0,
        ciaddr: IPv4Address = ANY,
        yiaddr: IPv4Address = ANY,
        siaddr: IPv4Address = ANY,
        giaddr: IPv4Address = ANY,
        hops: int = 0,
    ) -> None:
        self.op = op
        self.xid = xid
        self.chaddr = chaddr
        self.options: dict[int, bytes] = {} if options is None else options
        self.secs = secs
        self.flags = flags
        self.ciaddr = ciaddr
        self.yiaddr = yiaddr
        self.siaddr = siaddr
        self.giaddr = giaddr
        self.hops = hops

    # -- typed views of the options that the client uses --------------------------------

    @property
    def message_type(self) -> MessageType | None:
        value = self.options.get(Option.MESSAGE_TYPE)
        if value is None or len(value) != 1 or value[0] not in MessageType._value2member_map_:
            return None
        return MessageType(value[0])

    def address(self, code: int) -> IPv4Address | None:
        """A single-address option, None when absent or not 4 bytes long."""
        value = self.options.get(code)
        return IPv4Address(value) if value is not None and len(value) == 4 else None

    def addresses(self, code: int) -> list[IPv4Address]:
        """A list-of-addresses option (routers, DNS); a ragged tail is ignored."""
        value = self.options.get(code, b"")
        return [IPv4Address(value[i : i + 4]) for i in range(0, len(value) - 3, 4)]

    def seconds(self, code: int) -> int | None:
        """A 32-bit time option (lease, T1, T2), None when absent or malformed."""
        value = self.options.get(code)
        return int.from_bytes(value, "big") if value is not None and len(value) == 4 else None

    def text(self, code: int) -> str | None:
        value = self.options.get(code)
        return value.decode("utf-8", "replace") if value is not None else None


# -- encoding --------------------------------------------------------------------------


def _encode_options(options: dict[int, bytes]) -> bytes:
    out = bytearray()
    for code, value in options.items():
        if code in (Option.PAD, Option.END):
            continue
        # Longer than one option can carry: split into several of the same code (RFC 3396).
        chunks = [value[i : i + 255] for i in range(0, len(value), 255)] or [b""]
        for chunk in chunks:
            out += bytes((code, len(chunk))) + chunk
    out.append(Option.END)
    return bytes(out)


def encode(message: Message) -> bytes:
    """The message's bytes, padded to BOOTP's 300-byte minimum."""
    fixed = _FIXED.pack(
        message.op,
        1,  # htype: Ethernet
        len(message.chaddr),
        message.hops,
        message.xid,
        message.secs,
        message.flags,
        message.ciaddr.packed,
        message.yiaddr.packed,
        message.siaddr.packed,
        message.giaddr.packed,
        message.chaddr,
        b"",
        b"",
    )
    data = fixed + MAGIC_COOKIE + _encode_options(message.options)
    return data + bytes(max(0, MIN_SIZE - len(data)))


# -- decoding --------------------------------------------------------------------------


def _parse_options(data: bytes, into: dict[int, bytes]) -> bool:
    """Add the options in ``data`` to ``into``; False when one runs past the end."""
    i = 0
    while i < len(data):
        code = data[i]
        if code == Option.END:
            return True
        if code == Option.PAD:
            i += 1
            continue
        if i + 1 >= len(data):
            return False
        length = data[i + 1]
        value = data[i + 2 : i + 2 + length]
        if len(value) != length:
            return False
        into[code] = into.get(code, b"") + value
        i += 2 + length
    return True  # no END: tolerated, as most clients do


def decode(data: bytes) -> Message | None:
    """The message in ``data``, or None when it is not a well-formed DHCP message."""
    if len(data) < FIXED_SIZE + len(MAGIC_COOKIE):
        return None
    fields = _FIXED.unpack_from(data)
    op, _htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr = fields[:12]
    sname, file = fields[12:]
    if op not in (BOOTREQUEST, BOOTREPLY) or hlen > 16:
        return None
    if data[FIXED_SIZE : FIXED_SIZE + 4] != MAGIC_COOKIE:
        return None
    options: dict[int, bytes] = {}
    if not _parse_options(data[FIXED_SIZE + 4 :], options):
        return None
    overload = options.pop(Option.OVERLOAD, b"")
    if len(overload) == 1:
        # RFC 2132 9.3: 1 = file holds options, 2 = sname, 3 = both (file first).
        extra = [(1, file), (2, sname)]
        for bit, field in extra:
            if overload[0] & bit and not _parse_options(field, options):
                return None
    return Message(
        op=op,
        xid=xid,
        chaddr=bytes(chaddr[:hlen]),
        options=options,
        secs=secs,
        flags=flags,
        ciaddr=IPv4Address(ciaddr),
        yiaddr=IPv4Address(yiaddr),
        siaddr=IPv4Address(siaddr),
        giaddr=IPv4Address(giaddr),
        hops=hops,
    )
