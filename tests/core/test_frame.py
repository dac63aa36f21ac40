"""VnetHeader: read once, written out again as read, shared; changed only through replace()."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pymacvtap.core import frame
from pymacvtap.core.frame import VNET_HDR_LEN, VnetHeader

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)


@given(u8, u8, u16, u16, u16, u16, st.binary(max_size=4))
def test_a_header_read_packs_to_the_bytes_it_was_read_from(
    flags: int, gso: int, hdr_len: int, size: int, start: int, off: int, tail: bytes
) -> None:
    raw = struct.pack("<BBHHHH", flags, gso, hdr_len, size, start, off)
    buf = bytearray(b"\x99" + raw + tail)  # at an offset, followed by other bytes
    header = VnetHeader.unpack(buf, 1)
    assert header.pack() == raw
    assert (header.flags, header.gso_type, header.hdr_len) == (flags, gso, hdr_len)
    assert (header.gso_size, header.csum_start, header.csum_offset) == (size, start, off)
    buf[1:11] = bytes(VNET_HDR_LEN)  # the buffer is reused for the next frame
    assert header.pack() == raw


@given(u16, u16)
def test_replace_makes_a_new_header_with_the_change_packed(hdr_len: int, start: int) -> None:
    original = VnetHeader.unpack(struct.pack("<BBHHHH", 1, 1, 54, 1448, 34, 16))
    changed = original.replace(hdr_len=hdr_len, csum_start=start)
    assert changed.pack() == struct.pack("<BBHHHH", 1, 1, hdr_len, 1448, start, 16)
    assert original.pack() == struct.pack("<BBHHHH", 1, 1, 54, 1448, 34, 16)
    assert changed == VnetHeader(1, 1, hdr_len, 1448, start, 16)


def test_headers_read_are_shared_immutable_and_remembered_within_a_bound() -> None:
    raw = struct.pack("<BBHHHH", 1, 0, 0, 0, 34, 6)
    first = VnetHeader.unpack(bytearray(raw))
    assert VnetHeader.unpack(raw) is first  # the same bytes: the same object
    assert VnetHeader.unpack(struct.pack("<BBHHHH", 1, 0, 0, 0, 34, 16)) is not first
    with pytest.raises(AttributeError):
        first.csum_start = 0  # type: ignore[misc]
    assert first.csum_start == 34
    for gso_size in range(frame._SEEN_MAX + 10):  # many distinct headers: bounded memory
        VnetHeader.unpack(struct.pack("<BBHHHH", 1, 1, 54, gso_size, 34, 16))
    assert len(frame._SEEN) <= frame._SEEN_MAX
