"""What the router must make of a binary frame's header, written from docs/protocol.md rather
than from rhizomorph.protocol.envelope: the tests' independent oracle."""

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
