"""What the sender of an undeliverable message is told (docs/protocol.md).

A call (``type: method``) with a session gets a reject: hypha-rpc fails the pending call with
the message. A call without one gets ``peer_not_found``. Events and the router's own notices
are fire-and-forget: nobody is told.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rhizomorph.protocol import envelope, frames


@dataclass(frozen=True, slots=True)
class Answer:
    #: Who is told: the sender of the undeliverable message.
    to: str
    frame: bytes
    #: ``reject`` or ``peer_not_found`` (for the router's counters).
    kind: str


def answer(
    header: dict[str, Any], target: str, message: str, *, sender: Any, manager: str, server_user: dict[str, Any]
) -> Answer | None:
    """The answer to the sender of a message (``header``) that cannot reach ``target``, or
    ``None`` if nobody is to be told. ``manager`` is the address of the router's manager, whose
    own replies to a caller that left go unanswered."""
    if not isinstance(sender, str) or header.get("type") != "method":
        return None
    session = header.get("session")
    if sender == manager and "session" not in header:
        return None
    if isinstance(session, str):
        frame = envelope.reject_frame(
            caller=sender,
            target=target,
            session=session,
            message=message,
            workspace=sender.split("/", 1)[0],
            user=server_user,
        )
        return Answer(sender, frame, "reject")
    return Answer(
        sender, envelope.peer_not_found_frame(caller=sender, target=target, message=message), "peer_not_found"
    )


def not_connected(target: str) -> str:
    return f"Target peer {target} is not connected"


def lost_with_worker(target: str) -> str:
    """For calls that may have been lost with the gateway worker that held ``target``'s socket
    (it has reconnected since: call again)."""
    return f"Target peer {target} was connected through a gateway worker that was lost; its calls in flight are failed"


def header_of(frame: bytes | None) -> dict[str, Any] | None:
    """The header of a message, or of the message a chunk 0 starts (``None`` for other chunks
    and for what cannot be read)."""
    if frame is None:
        return None
    message: bytes | memoryview = frame
    try:
        if frames.is_stream(frame):
            _, index, _, data = frames.decode_chunk(frame)
            if index != 0:
                return None
            message = data
        return envelope.parse(message).header
    except (envelope.EnvelopeError, frames.FrameError):
        return None
