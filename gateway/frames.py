"""API v4 binary frames (sans-I/O): several RPC messages in one WebSocket frame.

A v3 frame always starts with a msgpack map. v4 frames start with ``0xc1``, the one byte
msgpack never uses, so a v4 peer tells them apart from the first byte and a v3 parser
rejects them outright (a v3 peer is never sent one).

Batch frame::

    0xc1 'B' ( u32 big-endian length, message bytes )*

Each message is a complete v3 message (``msgpack(header) + msgpack(extra)?``).
"""

from __future__ import annotations

import struct
from typing import Iterable

MAGIC = 0xC1
BATCH = ord("B")
BATCH_PREFIX = bytes((MAGIC, BATCH))
_LENGTH = struct.Struct(">I")
#: Per-message overhead of a batch frame.
OVERHEAD = _LENGTH.size


class FrameError(ValueError):
    """A v4 frame that cannot be split."""


def is_v4(frame: bytes) -> bool:
    return len(frame) > 0 and frame[0] == MAGIC


def encode_batch(messages: Iterable[bytes]) -> bytes:
    parts = [BATCH_PREFIX]
    for message in messages:
        parts.append(_LENGTH.pack(len(message)))
        parts.append(message)
    return b"".join(parts)


def decode_batch(frame: bytes) -> list[bytes]:
    """Split a batch frame into its messages; ``FrameError`` if it is not a whole batch."""
    if frame[:2] != BATCH_PREFIX:
        raise FrameError("not a v4 batch frame")
    view = memoryview(frame)
    messages = []
    offset, end = 2, len(frame)
    while offset < end:
        if offset + 4 > end:
            raise FrameError("truncated length in batch frame")
        (length,) = _LENGTH.unpack_from(frame, offset)
        offset += 4
        if offset + length > end:
            raise FrameError("truncated message in batch frame")
        messages.append(bytes(view[offset:offset + length]))
        offset += length
    return messages
