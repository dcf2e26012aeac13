"""Unit tests for rhizomorph/protocol/ws_frames.py, against websockets' own frame serializer."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from rhizomorph.protocol import ws_frames
from rhizomorph.protocol.ws_frames import Header


def client_frame(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True, extensions=[])


@pytest.mark.parametrize("length", [0, 1, 125, 126, 65535, 65536, 300_000])
def test_header_of_a_masked_client_frame(length: int) -> None:
    data = b"\x07" * length
    frame = client_frame(Opcode.BINARY, data)
    header = ws_frames.parse_header(b"pad" + frame, 3)
    assert isinstance(header, Header)
    assert (header.fin, header.rsv, header.opcode, header.masked, header.length) == (True, 0, 2, True, length)
    assert header.payload + header.length == 3 + len(frame)  # the payload ends where the frame does


def test_continuation_and_text_and_reserved_bits() -> None:
    header = ws_frames.parse_header(client_frame(Opcode.CONT, b"ab", fin=False), 0)
    assert isinstance(header, Header) and (header.fin, header.opcode) == (False, ws_frames.OP_CONT)
    header = ws_frames.parse_header(client_frame(Opcode.TEXT, b"ab"), 0)
    assert isinstance(header, Header) and header.opcode == ws_frames.OP_TEXT
    rsv1 = bytes((0xC2, 0x80 | 2)) + b"mask" + b"ab"
    header = ws_frames.parse_header(rsv1, 0)
    assert isinstance(header, Header) and header.rsv == 0x40


@given(st.integers(0, 70_000), st.data())
def test_an_incomplete_header_says_how_many_bytes_it_needs(length: int, data: st.DataObject) -> None:
    frame = client_frame(Opcode.BINARY, b"x" * length)
    full = ws_frames.parse_header(frame, 0)
    assert isinstance(full, Header)
    header_size = full.payload
    cut = data.draw(st.integers(0, header_size - 1))
    need = ws_frames.parse_header(frame[:cut], 0)
    assert isinstance(need, int) and cut < need <= header_size
    # Given what it asked for, it either reads the header or asks for more (never less than before).
    again = ws_frames.parse_header(frame[:need], 0)
    assert isinstance(again, Header) or again > need


def test_unmasked_frames_are_reported_as_such() -> None:
    frame = Frame(Opcode.BINARY, b"abc").serialize(mask=False, extensions=[])
    header = ws_frames.parse_header(frame, 0)
    assert isinstance(header, Header) and not header.masked and header.payload == 2


@pytest.mark.parametrize("length", [0, 1, 124, 125, 126, 127, 65535, 65536, 1 << 20])
@pytest.mark.parametrize("opcode", [Opcode.BINARY, Opcode.TEXT])
def test_server_header_is_websockets_serialization(length: int, opcode: Opcode) -> None:
    data = b"z" * length
    expected = Frame(opcode, data).serialize(mask=False, extensions=[])
    assert ws_frames.server_header(length, opcode.value) + data == expected
