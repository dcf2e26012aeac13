"""The per-target delivery queue: every frame to a connected client goes through its queue.

The queue is owned by the worker that holds the client's socket, so local delivery needs no
Ray hop. It owns the target's batch buffer (``rhizomorph/protocol/batching.py`` decides when to flush) and
one writer task, which keeps frames in the order they were queued and means a slow socket
never blocks the sender. A flush goes out as consecutive frames to a v3 client (in one socket
write when the connection offers ``send_frames``), and as one batch frame to a v4 client.
A batch that is full when its last message arrives (``Batcher.full``) is written at once, in
``put``, when the connection offers a ``DirectWrite`` that is ready: it does not wait for the
writer's turn (``rhizomorph/gateway/direct_write.py``). With such a socket the writer's turn
itself is a plain callback (``loop.call_soon``) that writes what gathered in that turn, not a
task: an idle target's lone message then costs little more than with batching off; the writer
task runs only when the socket is not ready or a batch waits for its timer.

A v3 client reads one message per frame, so for it batching can only put several frames in one
socket write; a frame can share a write only with frames that really wait. Those are the frames
routed from one read (``WRITES``: a socket's ``data_received`` that held several frames, a peer
worker's batch), whose v3 writes are deferred to the read's end (``WriteGroup.end``), and frames
that arrive while the socket is busy. A v3 target's frame outside a read group, with nothing
ahead of it and the socket ready, takes the path it takes with batching off: written in ``put``,
no writer's turn.

The router's queues treat a v4 target alike (a batch frame from a v4 client counts as one read):
its frames of one read leave in one batch frame at the read's end, and a frame outside a read
group, with nothing ahead of it and the socket ready, is written in ``put``. Only the v4
client's own outbox (``gather_turn``) keeps the writer's turn for such a frame: there the calls
made in one event-loop turn arrive as separate callbacks, and the turn is where they meet.

A queue can be held (``hold``): it writes nothing until ``release``, as for a client that
reconnected and does not listen yet (``rhizomorph/gateway/reconnecting.py``).

Nothing queued is lost without its sender being told: frames never written come back from
``close``, and when a write fails (the socket went away under it) the frames of that flush and
everything still buffered go to ``on_unwritten`` at once (the router answers them as it
answers any undeliverable message). Frames of a failed write may have reached the client in
part: their senders are told anyway, as a client that lost its socket cannot answer them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from rhizomorph.protocol import frames as v4frames
from rhizomorph.protocol.batching import Batcher, BatchMetrics, BatchPolicy

log = logging.getLogger("rhizomorph.delivery")

Send = Callable[[bytes], Awaitable[None]]
SendFrames = Callable[[list[bytes]], Awaitable[None]]


class DirectWrite(Protocol):
    """A socket that can take whole messages now, without awaiting (``DirectWriter``)."""

    def ready(self) -> bool: ...

    def write(self, messages: list[bytes]) -> None: ...


class WriteGroup:
    """Frames routed from one read: the router's writes wait for the outermost ``end``, so the
    frames of one read to one target leave in one socket write (``DeliveryQueue.put``).
    One per worker process (``WRITES``); the readers call ``begin`` and ``end`` (in a
    ``finally``) around reads that hold more than one frame."""

    __slots__ = ("depth", "queues")

    def __init__(self) -> None:
        self.depth = 0
        self.queues: list[DeliveryQueue] = []

    def begin(self) -> None:
        self.depth += 1

    def end(self) -> None:
        self.depth -= 1
        if self.depth or not self.queues:
            return
        queues, self.queues = self.queues, []
        for queue in queues:
            queue._turn()


#: The worker's read group (the event loop runs one read at a time).
WRITES = WriteGroup()


class DeliveryQueue:
    def __init__(
        self,
        address: str,
        send: Send,
        policy: BatchPolicy,
        *,
        wire_v4: bool = False,
        send_frames: SendFrames | None = None,
        direct: DirectWrite | None = None,
        max_bytes: int = 0,
        on_overflow: Callable[[str], None] | None = None,
        on_unwritten: Callable[[list[bytes]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        gather_turn: bool = False,
    ) -> None:
        self.address = address
        self.wire_v4 = wire_v4
        #: A frame with nothing queued ahead of it waits for the writer's turn, so that the frames
        #: put in the same event-loop turn share its flush (the v4 client: the calls of one turn
        #: reach it as separate callbacks). Else (the router) only the frames routed from one read
        #: wait together (``WRITES``), and a frame outside a read is written at once.
        self.gather_turn = gather_turn
        self.batcher = Batcher(policy)
        self.frames_written = 0
        self._send = send
        self._send_frames = send_frames  # several v3 frames in one socket write, if the socket can
        self._direct = direct  # full batches written in ``put``, if the socket can
        self._clock = clock
        self._writer: asyncio.Task | None = None
        self._turn_pending = False  # a ``_turn`` callback is scheduled (a DirectWrite's writer turn)
        self._arrived: asyncio.Future | None = None  # pending while the writer waits for the timer
        self._progress = asyncio.Event()  # set after every flush (for senders that pace themselves)
        self._closed = False
        self._held = False  # writes wait for ``release`` (the client does not listen yet)
        #: Bound on buffered bytes (0: none) and what to do when a put would pass it, or a write
        #: stalls: the connection evicts the slow consumer.
        self.max_bytes = max_bytes
        self.on_overflow = on_overflow
        #: Gets the frames of a failed write and what was buffered behind them (else ``close``
        #: returns them).
        self.on_unwritten = on_unwritten
        self._unwritten: list[bytes] = []
        self._write_started: float | None = None

    @property
    def depth(self) -> int:
        return len(self.batcher)

    @property
    def batch_metrics(self) -> BatchMetrics:
        """Delivery counts of this target (batch sizes, flush reasons) since it connected."""
        return self.batcher.metrics

    def set_policy(self, policy: BatchPolicy) -> None:
        self.batcher.policy = policy
        self._nudge()

    def put(self, frame: bytes) -> bool:
        """Queue one frame; ``False`` if the target is gone (the caller tells the sender)."""
        if self._closed:
            return False
        if self.max_bytes and self.batcher.buffered_bytes + len(frame) > self.max_bytes:
            self.overflow(f"delivery queue over {self.max_bytes} bytes")
            return False
        # A chunk of a stream is not a message: it never shares a batch frame (docs/protocol-v4.md).
        alone = frame[:1] == b"\xc1"
        batcher = self.batcher
        direct = self._direct
        if not self._socket_free(direct):
            batcher.add(frame, self._clock(), alone=alone)
        elif not self.gather_turn and not WRITES.depth and batcher.pass_lone(frame, alone):
            # A frame that nothing waits with: written now, as with batching off (never buffered,
            # so ``_write_now``'s ``batcher.written`` has nothing to do: written here).
            assert direct is not None
            try:
                direct.write([frame])
            except Exception as exc:
                self._fail(exc, [frame])
                return True
            self.frames_written += 1
            self._progress.set()
            return True
        else:
            batcher.add(frame, self._clock(), alone=alone)
            if batcher.full():
                assert direct is not None
                self._write_full(direct)
                if not len(batcher):
                    return True
        if self._writer is None:
            if self._held or self._turn_pending:
                pass
            elif direct is not None:
                self._turn_pending = True  # messages of this turn may still join: write them next turn
                if WRITES.depth and not self.gather_turn:
                    WRITES.queues.append(self)  # at the read's end (``WriteGroup.end``)
                else:
                    asyncio.get_running_loop().call_soon(self._turn)
            else:
                self._writer = asyncio.get_running_loop().create_task(self._drain())
        elif self._arrived is not None and self.batcher.complete():
            self._nudge()  # else the writer sleeps on: the timer, or a later message, wakes it
        return True

    def _write_full(self, direct: DirectWrite) -> None:
        """Write the full batches at the head of the buffer now (the writer holds no flush:
        ``_write_started`` is unset, so the order of frames is kept)."""
        batcher = self.batcher
        while batcher.full() and direct.ready():
            flush = batcher.take(self._clock())
            assert flush is not None  # a full head is always due
            if not self._write_now(direct, flush.frames):
                return
        self._progress.set()
        if not len(batcher):
            self._nudge()  # a writer asleep on the timer has nothing left: it ends, the next put starts one

    def _turn(self) -> None:
        """The writer's turn without a task: write every due flush at once if the socket takes
        it, else (not ready, or a batch waits for its timer) hand over to the writer task."""
        self._turn_pending = False
        direct = self._direct
        if self._closed or self._held or self._writer is not None or direct is None:
            return
        batcher = self.batcher
        wrote = False
        while direct.ready() and (flush := batcher.take(self._clock())) is not None:
            if not self._write_now(direct, flush.frames):
                return
            wrote = True
        if wrote:
            self._progress.set()
        if len(batcher):
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    def _write_now(self, direct: DirectWrite, frames: list[bytes]) -> bool:
        """Hand a flush's ``frames`` to the socket at once; ``False``: the write failed (its
        senders are told, as for a failed write in the writer)."""
        messages = frames if len(frames) == 1 else self._messages(frames)  # one frame: itself
        try:
            direct.write(messages)
        except Exception as exc:
            self._fail(exc, frames)
            return False
        self.frames_written += len(messages)
        self.batcher.written()
        return True

    def _messages(self, frames: list[bytes]) -> list[bytes]:
        """The WebSocket messages a flush goes out as: one batch frame to a v4 client, else each frame."""
        return [v4frames.encode_batch(frames)] if self.wire_v4 and len(frames) > 1 else frames

    def _fail(self, exc: Exception, frames: list[bytes]) -> None:
        log.debug("delivery to %s stopped: %s", self.address, exc)
        self._stop()
        unwritten = frames + self.batcher.drain()
        if self.on_unwritten is not None:
            self.on_unwritten(unwritten)
        else:
            self._unwritten.extend(unwritten)

    def _stop(self) -> None:
        """Deliver nothing more; a paced sender waiting for progress wakes, to find it closed."""
        self._closed = True
        self._progress.set()

    def hold(self) -> None:
        """Write nothing until ``release``; frames queue meanwhile (bounded as ever)."""
        self._held = True

    def release(self) -> None:
        """Write what waited, and from now on as it comes."""
        self._held = False
        if self._writer is None and not self._closed and len(self.batcher):
            self._writer = asyncio.get_running_loop().create_task(self._drain())

    def _nudge(self) -> None:
        if self._arrived is not None:
            _wake(self._arrived)

    async def _drain(self) -> None:
        batcher = self.batcher
        flush = None
        try:
            while not self._closed and not self._held:
                flush = batcher.take(self._clock())
                if flush is None:
                    deadline = batcher.deadline()
                    if deadline is None:
                        break  # idle: the next put starts a new writer
                    await self._wait_until(deadline)
                    continue
                self._write_started = self._clock()
                messages = self._messages(flush.frames)
                if self._send_frames is not None and len(messages) > 1:
                    await self._send_frames(messages)
                else:
                    for message in messages:
                        await self._send(message)
                self.frames_written += len(messages)
                self._write_started = None
                flush = None  # written: not for ``on_unwritten``
                batcher.written()
                self._progress.set()
        except Exception as exc:  # the socket closed under us; the connection's cleanup follows
            self._fail(exc, flush.frames if flush is not None else [])
        finally:
            self._writer = None
            self._write_started = None

    async def _wait_until(self, deadline: float) -> None:
        """Sleep until the batch timer expires, or a new message may complete the batch."""
        # A bare future and a timer handle: asyncio.wait_for would wrap a task around each wait.
        loop = asyncio.get_running_loop()
        self._arrived = arrived = loop.create_future()
        timer = loop.call_later(max(0.0, deadline - self._clock()), _wake, arrived)
        try:
            await arrived
        finally:
            timer.cancel()
            self._arrived = None

    def stalled(self, now: float, timeout: float) -> bool:
        """Whether a write has been blocked (the client is not reading) for over ``timeout``."""
        return self._write_started is not None and now - self._write_started > timeout

    def overflow(self, reason: str) -> None:
        """Give up on this target (it does not drain): stop queueing and call ``on_overflow`` once."""
        if self.on_overflow is not None and not self._closed:
            self._stop()
            self.on_overflow(reason)

    async def wait_below(self, depth: int) -> None:
        """Wait until fewer than ``depth`` frames are queued (a paced sender's flow control)."""
        while self.depth >= depth and not self._closed:
            self._progress.clear()
            await self._progress.wait()

    def writable(self) -> bool:
        """Whether a frame that must go alone, put now, is written at once (``put`` writes it
        with what is queued ahead of it): nothing is queued, or what is queued only waits for
        the writer's turn while the socket can take a write."""
        return not len(self.batcher) or (self._writer is None and self._socket_free(self._direct))

    def _socket_free(self, direct: DirectWrite | None) -> bool:
        """Whether a flush may be handed to ``direct`` now: a socket that takes direct writes,
        not held, no write of the writer in flight, ready."""
        return direct is not None and not self._held and self._write_started is None and direct.ready()

    async def wait_writable(self) -> None:
        """Wait until ``writable`` (a chunk stream's pacing): unlike ``wait_below(1)``, a message
        that only waits for the writer's turn (batching on) does not hold the next chunk back."""
        while not self._closed and not self.writable():
            self._progress.clear()
            await self._progress.wait()

    def close(self) -> list[bytes]:
        """Stop delivering; returns the frames that were never written."""
        self._stop()
        self._nudge()
        unwritten, self._unwritten = self._unwritten, []
        return unwritten + self.batcher.drain()

    def metrics(self) -> dict:
        stats = self.batcher.metrics.as_dict()
        stats.update(depth=self.depth, frames_written=self.frames_written, wire="v4" if self.wire_v4 else "v3")
        return stats


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)
