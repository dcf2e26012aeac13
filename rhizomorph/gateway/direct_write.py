"""Writing whole messages to a websockets connection at once, without awaiting.

``DeliveryQueue`` writes from its writer task, which runs at the event loop's next turn. A batch
that is already full (``Batcher.full``) need not wait for that turn: while the connection is
open, no fragmented send is in progress and its transport is not paused, the messages go to the
transport as they fill. A sender that produces many messages in one turn (a burst of calls)
then overlaps with the peer that handles them, instead of handing everything over at the end.
"""

from __future__ import annotations

from typing import Any

from websockets.protocol import State


class DirectWriter:
    """``ready``/``write`` for a ``websockets.asyncio`` connection (client or server)."""

    __slots__ = ("_connection", "_write_binary")

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._write_binary = getattr(connection, "write_binary", None)  # the gateway's server connections

    def ready(self) -> bool:
        """Whether a write now would neither interleave with another send nor pass flow control."""
        connection = self._connection
        return connection.protocol.state is State.OPEN and connection.send_in_progress is None and not connection.paused

    def write(self, messages: list[bytes]) -> None:
        """Each of ``messages`` as one binary message, handed to the transport now."""
        if self._write_binary is not None:
            self._write_binary(messages)
            return
        connection = self._connection
        for message in messages:
            connection.protocol.send_binary(message)
        connection.send_data()


def direct_writer(connection: Any) -> DirectWriter | None:
    """A ``DirectWriter`` for ``connection`` if it is a ``websockets.asyncio`` connection, else ``None``."""
    has = all(hasattr(connection, name) for name in ("protocol", "send_in_progress", "paused", "send_data"))
    return DirectWriter(connection) if has else None
