"""Connections whose input is held back, so that one client cannot stall its worker.

A connection over its budget of lookups of unknown targets (``rhizomorph/protocol/lookups.py``)
is flooding the worker with calls nobody can answer. Refusing each one is cheap, but a socket
read hands the router up to 256 KiB of frames at once, all routed before any other client's
turn. So the connection is held: its socket is not read for ``pause`` seconds, the frames of
the read under way wait in its backlog, and are then routed ``slice`` per event-loop pass,
between other clients' frames; once the backlog is empty the socket is read again. Its frames
keep their order and each is answered (nothing is dropped); the flood waits in its own socket
buffers instead of in the worker.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from rhizomorph.gateway.connection import ClientConnection

#: Seconds a held connection is not read from before its backlog is routed (docs/protocol.md).
PAUSE = 0.1
#: Frames of a held connection routed per event-loop pass.
SLICE = 64


class Throttle:
    def __init__(
        self, route: Callable[[ClientConnection, bytes], None], *, pause: float = PAUSE, slice: int = SLICE
    ) -> None:
        self._route = route
        self.pause = pause
        self.slice = slice
        #: Held connections and the frames they sent since; the router appends to these.
        self.backlogs: dict[ClientConnection, deque[bytes]] = {}
        self.holds = 0

    def hold(self, conn: ClientConnection) -> None:
        """Hold ``conn`` (no-op if it is held already or has no socket to pause)."""
        if conn in self.backlogs:
            return
        transport = getattr(conn.websocket, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.pause_reading()
        self.backlogs[conn] = deque()
        self.holds += 1
        asyncio.get_running_loop().call_later(self.pause, self._work, conn)

    def _work(self, conn: ClientConnection) -> None:
        backlog = self.backlogs.get(conn)
        if backlog is None:
            return  # released meanwhile
        for _ in range(min(self.slice, len(backlog))):
            self._route(conn, backlog.popleft())
            if self.backlogs.get(conn) is not backlog:
                return  # released by what was routed
        if backlog:
            asyncio.get_running_loop().call_soon(self._work, conn)
            return
        del self.backlogs[conn]
        transport = getattr(conn.websocket, "transport", None)
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    def release(self, conn: ClientConnection) -> None:
        """``conn`` is closing: route what it sent, now, in order (it is not held again)."""
        backlog = self.backlogs.pop(conn, None)
        while backlog:
            self._route(conn, backlog.popleft())
