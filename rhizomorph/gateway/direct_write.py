"""Writing whole messages to a websockets connection at once, without awaiting.

``DeliveryQueue`` writes from its writer task, which runs at the event loop's next turn. A batch
that is already full (``Batcher.full``) need not wait for that turn: while the connection is
open, no fragmented send is in progress and its transport is not paused, the messages go to the
transport as they fill. A sender that produces many messages in one turn (a burst of calls)
then overlaps with the peer that handles them, instead of handing everything over at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from websockets.protocol import OPEN


class DirectWriter:
    """``ready``/``write`` for a ``websockets.asyncio`` connection (client or server)."""

    __slots__ = ("_connection", "write")

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        #: Each of ``messages`` as one binary message, handed to the transport now: the gateway's
        #: server connections' own ``write_binary`` itself (one call less per write), else
        #: websockets' ``send_binary`` and ``send_data``.
        self.write: Callable[[list[bytes]], None] = getattr(connection, "write_binary", None) or self._send_binary

    def ready(self) -> bool:
        """Whether a write now would neither interleave with another send nor pass flow control."""
        connection = self._connection
        return connection.protocol.state is OPEN and connection.send_in_progress is None and not connection.paused

    def _send_binary(self, messages: list[bytes]) -> None:
        connection = self._connection
        for message in messages:
            connection.protocol.send_binary(message)
        connection.send_data()


def direct_writer(connection: Any) -> DirectWriter | None:
    """A ``DirectWriter`` for ``connection`` if it is a ``websockets.asyncio`` connection, else ``None``."""
    has = all(hasattr(connection, name) for name in ("protocol", "send_in_progress", "paused", "send_data"))
    return DirectWriter(connection) if has else None
