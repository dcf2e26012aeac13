"""WebSocket frame headers (RFC 6455 §5.2), read and written without websockets' parser (sans-I/O).

The gateway reads a client's binary frames itself (``RouterServerConnection``,
``rhizomorph/gateway/connection.py``): the header is parsed here and the payload unmasked
straight out of the bytes the socket gave, where websockets' generator parser copies every
payload into its buffer and out of it again before unmasking it. Anything that is not a
plain masked data frame (control frames, reserved bits, text) is left to websockets, whole.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

OP_CONT, OP_TEXT, OP_BINARY = 0x0, 0x1, 0x2
FIN = 0x80
#: The longest header: 2 bytes, a 64-bit length and a 4-byte mask.
MAX_HEADER = 14


class Header(NamedTuple):
    """One frame's header; the frame is ``data[start:end]``, its payload ``data[payload:end]``."""

    fin: bool
    rsv: int  # the three reserved bits, as they are in the first byte (0 without extensions)
    opcode: int
    masked: bool
    payload: int  # where the payload starts (after the mask, if any)
    length: int  # payload length


def parse_header(data: bytes, start: int) -> Header | int:
    """The header of the frame at ``data[start:]``, or the number of bytes (counted from
    ``start``) needed before it can be read."""
    available = len(data) - start
    if available < 2:
        return 2
    first, second = data[start], data[start + 1]
    length = second & 0x7F
    at = start + 2
    if length == 126:
        if available < 4:
            return 4
        length = int.from_bytes(data[at : at + 2], "big")
        at += 2
    elif length == 127:
        if available < 10:
            return 10
        length = int.from_bytes(data[at : at + 8], "big")
        at += 8
    masked = second > 0x7F  # the mask bit, the top one: a comparison, not a bool() call
    if masked:
        at += 4
        if available < at - start:
            return at - start
    # tuple.__new__ straight: the NamedTuple's own __new__ is a Python function (one call per frame)
    return tuple.__new__(Header, (first > 0x7F, first & 0x70, first & 0x0F, masked, at, length))


#: The longest header of a server's (unmasked) frame: 2 bytes and a 64-bit length.
MAX_SERVER_HEADER = 10
_SHORT_BINARY = [bytes((FIN | OP_BINARY, length)) for length in range(126)]  # one per message: made once
#: The two longer forms, each packed in one call (not bytes(), to_bytes and a concatenation).
_HEADER_16 = struct.Struct(">BBH").pack
_HEADER_64 = struct.Struct(">BBQ").pack


def server_header(length: int, opcode: int = OP_BINARY) -> bytes:
    """The header of an unmasked, unfragmented frame of ``length`` payload bytes (server to client)."""
    if length < 126 and opcode == OP_BINARY:
        return _SHORT_BINARY[length]
    first = FIN | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return _HEADER_16(first, 126, length)
    return _HEADER_64(first, 127, length)
