"""The per-target delivery queue: every frame to a connected client goes through its queue.

The queue is owned by the worker that holds the client's socket, so local delivery needs no
Ray hop. One writer task per target drains it, which keeps frames in the order they were
queued and means a slow socket never blocks the sender. Frames queued while a write is in
flight go out back to back in the writer's next pass.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Awaitable, Callable, Iterable

log = logging.getLogger("rhizomorph.delivery")

Send = Callable[[bytes], Awaitable[None]]


class DeliveryQueue:
    def __init__(self, address: str, send: Send) -> None:
        self.address = address
        self._send = send
        self._frames: deque[bytes] = deque()
        self._writer: asyncio.Task | None = None
        self._closed = False
        self.delivered = 0

    @property
    def depth(self) -> int:
        return len(self._frames)

    def put(self, frame: bytes) -> bool:
        """Queue one frame; ``False`` if the target is gone (the caller tells the sender)."""
        if self._closed:
            return False
        self._frames.append(frame)
        self._wake()
        return True

    def put_many(self, frames: Iterable[bytes]) -> bool:
        if self._closed:
            return False
        self._frames.extend(frames)
        self._wake()
        return True

    def _wake(self) -> None:
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        frames = self._frames
        try:
            while frames:
                await self._send(frames.popleft())
                self.delivered += 1
        except Exception as exc:  # the socket closed under us; the connection's cleanup follows
            log.debug("delivery to %s stopped: %s", self.address, exc)
            self.close()
        finally:
            self._writer = None

    def close(self) -> list[bytes]:
        """Stop delivering; returns the frames that were never written."""
        self._closed = True
        undelivered = list(self._frames)
        self._frames.clear()
        return undelivered
