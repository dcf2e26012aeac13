"""What the router must make of a binary frame, written from docs/protocol.md and
docs/protocol-v4.md rather than from rhizomorph.protocol: the tests' independent oracle."""

from __future__ import annotations

from typing import Any

import msgpack


def routable_header(frame: bytes) -> tuple[dict[str, Any], int] | None:
    """``(header, payload offset)`` if the frame's first msgpack object is a routable header (a
    map with a non-empty string ``to`` and, if present, a string ``type``), else ``None``."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(frame), 1))
    unpacker.feed(frame)
    try:
        header = unpacker.unpack()
    except Exception:
        return None
    if not isinstance(header, dict):
        return None
    to = header.get("to")
    if not (isinstance(to, str) and to) or not isinstance(header.get("type", ""), str):
        return None
    return header, unpacker.tell()


def expects_error(frame: bytes) -> bool:
    """docs/protocol.md: a binary frame on a v3 connection whose header cannot be routed — not
    msgpack, not a map, no non-empty string ``to``, a non-string ``type``, or a v4 frame — gets
    exactly one error text frame. Written from the spec, not from rhizomorph.protocol.envelope."""
    return frame[:1] == b"\xc1" or routable_header(frame) is None


def batch_messages(frame: bytes) -> list[bytes] | None:
    """docs/protocol-v4.md: ``0xc1 'B' (u32 length, message)*``; ``None`` unless exactly that."""
    if frame[:2] != b"\xc1B":
        return None
    messages, offset = [], 2
    while offset < len(frame):
        if offset + 4 > len(frame):
            return None
        length = int.from_bytes(frame[offset : offset + 4], "big")
        offset += 4
        if offset + length > len(frame):
            return None
        messages.append(frame[offset : offset + length])
        offset += length
    return messages


def expected_v4_errors(frame: bytes) -> int:
    """Error text frames a v4 connection gets for one binary frame (chunk frames not included):
    one for a frame that is not a whole batch, else one per unroutable message in it."""
    if frame[:1] != b"\xc1":
        return int(expects_error(frame))
    messages = batch_messages(frame)
    if messages is None:
        return 1
    return sum(expects_error(message) for message in messages)
