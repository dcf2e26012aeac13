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
from collections.abc import Iterable

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
        messages.append(bytes(view[offset : offset + length]))
        offset += length
    return messages


# -- chunk streams -----------------------------------------------------------------------------
#
# A large message travels as a stream of chunk frames::
#
#     0xc1 'S' stream id (u64) index (u32) flags (u8) data
#
# The first chunk (index 0) starts with the message itself, so its msgpack header — which
# the router reads and stamps — is at the front of chunk 0. ``LAST`` marks the final chunk.
# Stream ids are chosen by the sender and rewritten by the router, so they are unique per
# receiving connection.

STREAM = ord("S")
STREAM_PREFIX = bytes((MAGIC, STREAM))
_CHUNK = struct.Struct(">QIB")
CHUNK_HEADER = 2 + _CHUNK.size
LAST = 0x01
ABORT = 0x02  # the sender went away mid-stream: drop what arrived


def is_stream(frame: bytes) -> bool:
    return frame[:2] == STREAM_PREFIX


def encode_chunk(stream_id: int, index: int, last: bool, data: bytes | memoryview, *, abort: bool = False) -> bytes:
    flags = (LAST if last else 0) | (ABORT if abort else 0)
    return b"".join((STREAM_PREFIX, _CHUNK.pack(stream_id, index, flags), data))  # data copied once


def decode_chunk(frame: bytes) -> tuple[int, int, int, memoryview]:
    """``(stream_id, index, flags, data)`` of a chunk frame; ``data`` is a view into ``frame``
    (chunks are up to a MiB: the router re-frames them without copying the data twice)."""
    if len(frame) < CHUNK_HEADER or not is_stream(frame):
        raise FrameError("not a v4 chunk frame")
    stream_id, index, flags = _CHUNK.unpack_from(frame, 2)
    return stream_id, index, flags, memoryview(frame)[CHUNK_HEADER:]


def split_stream(message: bytes, stream_id: int, chunk_size: int) -> list[bytes]:
    """Cut a message into the chunk frames of one stream."""
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    count = max(1, -(-len(message) // chunk_size))
    view = memoryview(message)
    return [
        encode_chunk(stream_id, i, i == count - 1, view[i * chunk_size : (i + 1) * chunk_size]) for i in range(count)
    ]


class StreamAssembler:
    """Joins the chunks of concurrent streams; a gap or an unknown stream is a ``FrameError``."""

    def __init__(self, max_streams: int = 64) -> None:
        self._parts: dict[int, list[bytes | memoryview]] = {}  # views into the chunk frames
        self._max_streams = max_streams

    def add(self, frame: bytes) -> bytes | None:
        """Feed one chunk frame; returns the whole message when its last chunk arrives."""
        stream_id, index, flags, data = decode_chunk(frame)
        if flags & ABORT:
            self._parts.pop(stream_id, None)
            return None
        last = flags & LAST
        parts = self._parts.get(stream_id)
        if parts is None:
            if index != 0:
                raise FrameError(f"stream {stream_id} starts at chunk {index}")
            if len(self._parts) >= self._max_streams:
                raise FrameError("too many concurrent streams")
            parts = self._parts[stream_id] = []
        elif index != len(parts):
            del self._parts[stream_id]
            raise FrameError(f"stream {stream_id}: chunk {index} after {len(parts) - 1}")
        parts.append(data)
        if not last:
            return None
        del self._parts[stream_id]
        return b"".join(parts)

    def __len__(self) -> int:
        return len(self._parts)
