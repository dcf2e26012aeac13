"""The routing envelope of a hypha-rpc binary frame (sans-I/O).

A v3 binary frame is ``msgpack(header) + msgpack(extra)?``. The router reads only the
header (the first msgpack object), normalises ``to``, overwrites ``from``/``ws``/``user``
and re-packs it in front of the untouched remaining bytes. The payload is never decoded.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import msgpack

BROADCAST = "*"


class EnvelopeError(ValueError):
    """A binary frame whose header cannot be routed."""


@dataclass(slots=True)
class Envelope:
    """A parsed binary frame: the header dict plus where the payload starts."""

    header: dict[str, Any]
    payload_offset: int
    frame: bytes | memoryview  # a view when the frame is the data of a chunk frame

    @property
    def payload(self) -> memoryview:
        return memoryview(self.frame)[self.payload_offset :]


#: The header is read from at most this many leading bytes through a reused unpacker (no
#: per-frame allocation, no copy of the payload); a longer header falls back to a fresh one.
_HEAD_LIMIT = 16384
#: The first look is shorter: the unpacker copies in what it is fed and the rest is copied out
#: again to empty it, and a routing header is a few hundred bytes.
_FIRST_LOOK = 1024
_local = threading.local()  # one reused unpacker per thread (each event loop is single-threaded)


def parse(frame: bytes | memoryview) -> Envelope:
    """Read the header of a binary frame, leaving the payload undecoded (and uncopied)."""
    whole = len(frame) <= _FIRST_LOOK
    try:
        header, offset = _unpack_head(frame if whole else memoryview(frame)[:_FIRST_LOOK])
    except msgpack.OutOfData:
        if whole:
            raise EnvelopeError("truncated msgpack header") from None
        header, offset = _longer_head(frame)
    if type(header) is not dict:  # msgpack makes plain dicts: one check, no isinstance call
        raise EnvelopeError("header must be a msgpack map")
    to = header.get("to")
    if type(to) is not str or not to:
        raise EnvelopeError("header has no string 'to'")
    if not isinstance(header.get("type", ""), str):
        raise EnvelopeError("header 'type' must be a string")
    return Envelope(header, offset, frame)


def _longer_head(frame: bytes | memoryview) -> tuple[Any, int]:
    """The header of a frame whose first look held only part of it."""
    if len(frame) <= _HEAD_LIMIT:
        try:
            return _unpack_head(frame)
        except msgpack.OutOfData:
            raise EnvelopeError("truncated msgpack header") from None
    try:
        return _unpack_head(memoryview(frame)[:_HEAD_LIMIT])
    except msgpack.OutOfData:
        return _unpack_whole(frame)  # a header over _HEAD_LIMIT bytes: rare, allowed


def _unpack_head(head: bytes | memoryview) -> tuple[Any, int]:
    unpacker = getattr(_local, "unpacker", None)
    if unpacker is None:
        unpacker = _local.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=_HEAD_LIMIT)
    unpacker.feed(head)
    try:
        header = unpacker.unpack()
    except msgpack.OutOfData:
        _local.unpacker = None  # it holds a partial header: the next frame starts clean
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        _local.unpacker = None
        raise EnvelopeError(f"malformed msgpack header: {exc}") from None
    # The rest of ``head`` is read out (the buffer is empty again): what is left says where the
    # header ended, without two ``tell`` calls around it.
    return header, len(head) - len(unpacker.read_bytes(len(head)))


def _unpack_whole(frame: bytes | memoryview) -> tuple[Any, int]:
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(frame))
    unpacker.feed(frame)
    try:
        return unpacker.unpack(), unpacker.tell()
    except msgpack.OutOfData:
        raise EnvelopeError("truncated msgpack header") from None
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise EnvelopeError(f"malformed msgpack header: {exc}") from None


def normalize_target(to: str, workspace: str) -> str:
    """Make a target absolute: ``*`` -> ``<ws>/*``, ``client`` -> ``<ws>/client``."""
    if "/" in to:  # the common case first: already absolute
        return to
    if to == BROADCAST:
        return f"{workspace}/*"
    return f"{workspace}/{to}"


def is_broadcast(target: str) -> bool:
    return target.endswith("/*")


#: Every manager address starts so (``*/manager-<server_id>``); no client can be in workspace ``*``.
MANAGER_PREFIX = "*/manager-"


def is_manager(target: str) -> bool:
    """A frame for the router's manager: its address, or that of an earlier start of the router.
    After a restart (a new server id) released clients keep calling the manager id they first
    got (hypha-rpc skips the first ``manager_refreshed`` event); the router is still their manager."""
    return target.startswith(MANAGER_PREFIX)


_TO = msgpack.packb("to")
_FIXMAP_HEADS = [bytes((0x80 | count,)) for count in range(16)]  # msgpack map headers, 0-15 entries
_PACKER = msgpack.Packer(use_bin_type=True)  # reused: the router's event loop is single-threaded


def identity_suffix(sender: str, workspace: str, user: dict[str, Any]) -> bytes:
    """The packed ``from``/``ws``/``user`` entries of a connection, computed once per client."""
    return b"".join(msgpack.packb(x, use_bin_type=True) for x in ("from", sender, "ws", workspace, "user", user))


def stamp(
    envelope: Envelope, *, target: str, sender: str, workspace: str, user: dict[str, Any], suffix: bytes | None = None
) -> bytes:
    """Re-pack the header with server-trusted ``from``/``ws``/``user`` and the normalised ``to``.

    Client-supplied values of these fields are overwritten, never trusted. ``suffix`` is the
    connection's ``identity_suffix`` (packed once instead of per message); the header dict is
    updated to the stamped values too, for callers that read it afterwards.
    """
    header = envelope.header
    if suffix is None:
        suffix = identity_suffix(sender, workspace, user)
    pop = header.pop  # the client's values go (the dict gets ours back below)
    pop("to", None), pop("from", None), pop("ws", None), pop("user", None)
    count = len(header) + 4
    rest = _PACKER.pack(header)
    # Splice: a map header for ``count`` entries, the packed entries of ``rest``, then ours.
    body = rest[1:] if rest[0] & 0xF0 == 0x80 else rest[3:] if rest[0] == 0xDE else rest[5:]
    head = (
        _FIXMAP_HEADS[count]
        if count < 16
        else (b"\xde" + count.to_bytes(2, "big") if count < 65536 else b"\xdf" + count.to_bytes(4, "big"))
    )
    header["to"], header["from"], header["ws"], header["user"] = target, sender, workspace, user
    frame, offset = envelope.frame, envelope.payload_offset
    # A large payload is copied once (by the join), a small one is cheaper to slice.
    payload = frame[offset:] if len(frame) - offset < 4096 else memoryview(frame)[offset:]
    return b"".join((head, body, _TO, _PACKER.pack(target), suffix, payload))


def encode(header: dict[str, Any], extra: dict[str, Any] | None = None) -> bytes:
    """Pack a two-segment message (the extra segment is optional)."""
    data: bytes = msgpack.packb(header, use_bin_type=True)
    if extra is not None:
        data += msgpack.packb(extra, use_bin_type=True)
    return data


def decode(frame: bytes) -> dict[str, Any]:
    """Decode a whole message (header merged with the extra segment), as a client does.

    Used only for messages addressed to the router itself (the workspace manager).
    """
    envelope = parse(frame)
    message = dict(envelope.header)
    if envelope.payload_offset < len(frame):
        unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(frame))
        unpacker.feed(envelope.payload)
        try:
            extra = unpacker.unpack()
        except (msgpack.OutOfData, ValueError, TypeError, msgpack.UnpackException) as exc:
            raise EnvelopeError(f"malformed msgpack payload: {exc}") from None
        if not isinstance(extra, dict):
            raise EnvelopeError("extra segment must be a msgpack map")
        message.update(extra)
    return message


def reject_frame(
    *, caller: str, target: str, session: str, message: str, workspace: str, user: dict[str, Any]
) -> bytes:
    """The synthetic ``<session>.reject`` a caller gets when its target is not connected."""
    header = {
        "type": "method",
        "from": target,
        "to": caller,
        "method": f"{session}.reject",
        "ws": workspace,
        "user": user,
    }
    return encode(header, {"args": [{"_rtype": "error", "_rvalue": message, "_rtrace": ""}]})


def peer_not_found_frame(*, caller: str, target: str, message: str) -> bytes:
    """Tell a sender of a session-less message that its peer is gone.

    hypha-rpc >= 0.21.20 then fails every pending call it has towards that peer at once.
    """
    return encode({"type": "peer_not_found", "to": caller, "peer_id": target, "error": message})


def event_frame(event_type: str, data: Any) -> bytes:
    """A server event broadcast to subscribers (single segment, no from/ws/user)."""
    return encode({"type": event_type, "to": BROADCAST, "data": data})
