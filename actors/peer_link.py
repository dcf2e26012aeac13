"""The hop between two gateway workers: every Ray call carries a batch.

Frames for a peer worker are collected while a call to it is in flight (and within one event
loop pass when none is), then sent as one ``deliver`` call. One call in flight per peer keeps
frames from one worker to another in order, and makes the batch grow exactly when the peer
is slower than the traffic: adaptive batching with no timer and no latency tax when idle.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

log = logging.getLogger("rhizomorph.peer")

#: One routed frame: (target address, event type for broadcasts or None, stamped frame).
Item = tuple[str, "str | None", bytes]
#: Bytes one call carries at most (beyond its first item): a large transfer between two workers
#: then goes in slices, and small frames queued behind it wait for one slice, not the whole.
MAX_CALL_BYTES = 1 << 20


class PeerLink:
    def __init__(self, worker_id: str, handle: Any, on_failure: Callable[[list[Item]], None]) -> None:
        self.worker_id = worker_id
        self.handle = handle
        self._on_failure = on_failure
        self._items: list[Item] = []
        self._busy = False
        self.calls = 0
        self.frames = 0

    def send(self, item: Item) -> None:
        self._items.append(item)
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        items, size = self._items, 0
        for count, item in enumerate(items):
            size += len(item[2])
            if size > MAX_CALL_BYTES and count > 0:
                items, self._items = items[:count], items[count:]
                break
        else:
            self._items = []
        self.calls += 1
        self.frames += len(items)
        task = asyncio.ensure_future(self._call(items))
        task.add_done_callback(self._after)

    async def _call(self, items: list[Item]) -> None:
        try:
            await self.handle.deliver.remote(items)
        except Exception as exc:  # the peer died: its targets are gone, tell the senders
            log.warning("peer %s unreachable (%s); failing %d frames", self.worker_id, exc, len(items))
            self._on_failure(items)

    def _after(self, _: asyncio.Future) -> None:
        if self._items:
            self._flush()
        else:
            self._busy = False
