"""The hop between two gateway workers: every Ray call carries a batch.

Frames for a peer worker are collected while a call to it is in flight (and within one event
loop pass when none is), then sent as one call. One call in flight per link keeps frames in
order, and makes the batch grow exactly when the peer is slower than the traffic: adaptive
batching with no timer and no latency tax when idle.

Each peer reached over Ray calls has two links: the ordered link for messages (``deliver`` on
the peer), and a bulk link through the node's chunking actor for the chunks of large messages,
so a large transfer never queues small messages behind it (a same-node peer on the Unix socket
has only the ordered link: chunks take their turn there). A stream's last chunk takes the
ordered link once the bulk link has delivered the others (``hold``), which keeps the order of
whole messages.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rhizomorph.background import spawn

log = logging.getLogger("rhizomorph.peer")

#: One routed frame: (target address, event type for broadcasts or None, stamped frame).
Item = tuple[str, "str | None", bytes]
#: Bytes one call carries at most (beyond its first item): a large transfer then goes in
#: slices, and what is queued behind it waits for one slice, not the whole.
MAX_CALL_BYTES = 1 << 20

Call = Callable[[list[Item]], Awaitable[Any]]


class PeerLink:
    def __init__(
        self,
        worker_id: str,
        handle: Any,
        on_failure: Callable[[list[Item]], None],
        call: Call | None = None,
        kind: str = "ray",
        try_call: Callable[[list[Item]], bool] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.handle = handle
        self.kind = kind  # how the batches travel: "ray" calls, a "socket", the "chunk-actor"
        self._call_peer: Call = call or (lambda items: handle.deliver.remote(items))
        #: Sends a batch at once if it can (True), else the link falls back to ``call``.
        self._try_call = try_call
        self._on_failure = on_failure
        self._items: list[Item] = []
        self._scheduled = False  # a flush is due on the next loop pass
        self._in_flight = False  # a call is under way: at most one, which keeps the order
        self._gate: asyncio.Future | None = None
        self._waiting_on: asyncio.Future | None = None
        self._idle_waiters: list[asyncio.Future] = []
        self.calls = 0
        self.frames = 0

    def send(self, item: Item) -> None:
        self._items.append(item)
        self._kick()

    def hold(self, gate: asyncio.Future) -> None:
        """Send nothing more until ``gate`` is done (frames queue up meanwhile, in order)."""
        self._gate = gate

    def idle(self) -> asyncio.Future:
        """A future done once everything sent so far has been delivered."""
        future = asyncio.get_running_loop().create_future()
        if self._items or self._in_flight or self._scheduled:
            self._idle_waiters.append(future)
        else:
            future.set_result(None)
        return future

    def _kick(self) -> None:
        """Schedule the next call if one may start now; idempotent."""
        if self._in_flight or self._scheduled or not self._items:
            return
        gate = self._gate
        if gate is not None and not gate.done():
            if self._waiting_on is not gate:
                self._waiting_on = gate
                gate.add_done_callback(lambda _: self._kick())
            return
        self._gate = None
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if self._in_flight or not self._items:
            return
        if self._gate is not None and not self._gate.done():
            self._kick()  # held since this flush was scheduled
            return
        while self._items:
            items = self._next_call()
            self.calls += 1
            self.frames += len(items)
            if self._try_call is not None and self._try_call(items):
                continue  # written already: no call to wait for
            self._in_flight = True
            spawn(self._call(items)).add_done_callback(self._after)
            return
        self._wake_idle_waiters()

    def _next_call(self) -> list[Item]:
        """What the next call carries: everything queued, or up to ``MAX_CALL_BYTES``."""
        items, size = self._items, 0
        for count, item in enumerate(items):
            size += len(item[2])
            if size > MAX_CALL_BYTES and count > 0:
                items, self._items = items[:count], items[count:]
                return items
        self._items = []
        return items

    async def _call(self, items: list[Item]) -> None:
        try:
            await self._call_peer(items)
        except Exception as exc:  # the peer died: its targets are gone, tell the senders
            log.warning("peer %s unreachable (%s); failing %d frames", self.worker_id, exc, len(items))
            self._on_failure(items)

    def _after(self, _: asyncio.Future) -> None:
        self._in_flight = False
        if not self._items:
            self._wake_idle_waiters()
        self._kick()

    def _wake_idle_waiters(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
