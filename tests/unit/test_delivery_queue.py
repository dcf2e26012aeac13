"""The per-target delivery queue with a fake socket and a fake clock: the writer task, full
batches written at once in ``put`` (``DirectWrite``), and failed writes handed back."""

from __future__ import annotations

import asyncio

import pytest

from rhizomorph.gateway.delivery import WRITES, DeliveryQueue
from rhizomorph.protocol import frames
from rhizomorph.protocol.batching import BatchPolicy

TIMER = BatchPolicy(timeout_ms=10.0, max_messages=3, max_size=100, wait="timer")
SOCKET = BatchPolicy(timeout_ms=10.0, max_messages=3, max_size=100, wait="socket")


class FakeSocket:
    """Records what is written, by which path; ``ready`` can be turned off; ``fail`` breaks it."""

    def __init__(self) -> None:
        self.written: list[tuple[str, bytes]] = []
        self.is_ready = True
        self.fail = False
        self.block: asyncio.Event | None = None

    async def send(self, data: bytes) -> None:
        if self.block is not None:
            await self.block.wait()
        if self.fail:
            raise ConnectionError("gone")
        self.written.append(("task", data))

    def ready(self) -> bool:
        return self.is_ready

    def write(self, messages: list[bytes]) -> None:
        if self.fail:
            raise ConnectionError("gone")
        self.written.extend(("direct", m) for m in messages)

    def messages(self) -> list[bytes]:
        """Every message written, batch frames split, in the order written."""
        out: list[bytes] = []
        for _, data in self.written:
            out.extend(frames.decode_batch(data) if frames.is_v4(data) else [data])
        return out


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def settle(rounds: int = 5) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def make_queue(policy: BatchPolicy, socket: FakeSocket, clock: Clock, **kwargs) -> DeliveryQueue:
    """A v4 queue that gathers each event-loop turn's frames (the v4 client's outbox)."""
    kwargs.setdefault("gather_turn", True)
    return DeliveryQueue("ws/c", socket.send, policy, wire_v4=True, direct=socket, clock=clock, **kwargs)


def message(i: int, size: int = 10) -> bytes:
    return bytes([i]) * size


@pytest.mark.parametrize("policy", [TIMER, SOCKET], ids=["timer", "socket"])
async def test_full_batches_leave_in_put_and_the_rest_follows_in_order(policy: BatchPolicy) -> None:
    socket, clock = FakeSocket(), Clock()
    queue = make_queue(policy, socket, clock)
    sent = [message(i) for i in range(8)]
    for m in sent:
        queue.put(m)
    # Before the writer's first turn: two full batches of 3 are already written.
    assert [(path, len(frames.decode_batch(data))) for path, data in socket.written] == [("direct", 3), ("direct", 3)]
    clock.now = 0.011  # past the timer: the rest leaves under either rule
    await asyncio.sleep(0.02)
    assert socket.messages() == sent
    assert queue.depth == 0 and queue.frames_written == 3


async def test_a_lone_message_after_a_direct_write_emptied_the_buffer_does_not_wait_for_the_timer() -> None:
    socket, clock = FakeSocket(), Clock()
    socket.block = asyncio.Event()
    socket.is_ready = False  # as a real socket with a send in progress (flow control paused it)
    queue = make_queue(TIMER, socket, clock)
    queue.put(message(0))
    await settle()  # idle: the writer task takes it at once; the write blocks
    queue.put(message(1))
    queue.put(message(2))  # arrive during the write: they wait for company
    socket.block.set()
    socket.is_ready = True
    await settle()  # the write completes; the writer sleeps on the timer
    assert queue.depth == 2
    queue.put(message(3))  # full: written in put, the buffer is empty
    assert [path for path, _ in socket.written] == ["task", "direct"] and queue.depth == 0
    queue.put(message(4))  # the target is idle again: this one leaves at the writer's next turn
    await settle()
    assert [path for path, _ in socket.written] == ["task", "direct", "task"]  # the woken writer took it
    assert socket.messages() == [message(i) for i in range(5)]  # the clock never moved: no timer ran out


@pytest.mark.parametrize("policy", [TIMER, SOCKET], ids=["timer", "socket"])
async def test_with_a_ready_socket_the_writers_turn_is_a_callback_that_batches_that_turn(policy) -> None:
    socket, clock = FakeSocket(), Clock()
    queue = make_queue(policy, socket, clock)
    queue.put(message(0))
    queue.put(message(1))  # the same turn: they leave together at the writer's turn, no task
    assert socket.written == [] and queue._writer is None
    await asyncio.sleep(0)
    assert [(path, len(frames.decode_batch(data))) for path, data in socket.written] == [("direct", 2)]
    assert queue._writer is None and queue.depth == 0
    socket.is_ready = False  # not ready at the writer's turn: the writer task writes it
    queue.put(message(2))
    await settle()
    assert [path for path, _ in socket.written] == ["direct", "task"] and queue.depth == 0
    assert socket.messages() == [message(i) for i in range(3)]


async def test_a_failed_write_at_the_writers_turn_hands_its_frames_to_on_unwritten() -> None:
    socket, clock = FakeSocket(), Clock()
    lost: list[bytes] = []
    queue = make_queue(SOCKET, socket, clock, on_unwritten=lost.extend)
    queue.put(message(0))
    socket.fail = True
    await settle()
    assert lost == [message(0)] and not queue.put(message(1))


async def test_a_socket_that_is_not_ready_gets_the_full_batch_from_the_writer() -> None:
    socket, clock = FakeSocket(), Clock()
    socket.is_ready = False
    queue = make_queue(TIMER, socket, clock)
    for i in range(3):
        queue.put(message(i))
    assert socket.written == []
    await settle()
    assert [path for path, _ in socket.written] == ["task"] and socket.messages() == [message(i) for i in range(3)]


async def test_a_large_message_and_unbatched_ones_are_written_at_once() -> None:
    socket, clock = FakeSocket(), Clock()
    queue = make_queue(TIMER, socket, clock)
    queue.put(message(1, 200))
    assert socket.written == [("direct", message(1, 200))]
    off = make_queue(BatchPolicy(enabled=False), socket2 := FakeSocket(), clock)
    off.put(message(2))
    off.put(message(3))
    assert socket2.written == [("direct", message(2)), ("direct", message(3))]


async def test_a_failed_direct_write_hands_its_frames_and_the_rest_to_on_unwritten() -> None:
    socket, clock = FakeSocket(), Clock()
    unwritten: list[bytes] = []
    queue = make_queue(TIMER, socket, clock, on_unwritten=unwritten.extend)
    queue.put(message(0))
    queue.put(message(1))
    socket.fail = True
    assert queue.put(message(2))  # full: the direct write fails
    assert unwritten == [message(0), message(1), message(2)]
    assert not queue.put(message(3))  # the queue is closed: the caller tells the sender


@pytest.mark.parametrize("policy", [TIMER, SOCKET], ids=["timer", "socket"])
async def test_a_message_over_half_of_max_size_is_written_in_put(policy: BatchPolicy) -> None:
    # No later message of its size could share its flush: it does not wait for the writer's turn.
    socket, clock = FakeSocket(), Clock()
    queue = make_queue(policy, socket, clock)
    queue.put(message(1, 60))
    assert socket.written == [("direct", message(1, 60))] and queue.depth == 0
    queue.put(message(2, 50))  # half, not more: the writer takes it at its turn
    assert len(socket.written) == 1 and queue.depth == 1
    queue.put(message(3, 60))  # joins the 50 (110 > 100: two flushes), both written now
    assert [path for path, _ in socket.written] == ["direct"] * 3 and queue.depth == 0
    await settle()
    assert socket.messages() == [message(1, 60), message(2, 50), message(3, 60)]


def make_v3_queue(policy: BatchPolicy, socket: FakeSocket, clock: Clock) -> DeliveryQueue:
    return DeliveryQueue("ws/c", socket.send, policy, wire_v4=False, direct=socket, clock=clock)


@pytest.mark.parametrize("policy", [TIMER, SOCKET, BatchPolicy(enabled=False)], ids=["timer", "socket", "off"])
async def test_a_v3_targets_frame_that_nothing_waits_with_is_written_in_put(policy: BatchPolicy) -> None:
    socket, clock = FakeSocket(), Clock()
    queue = make_v3_queue(policy, socket, clock)
    queue.put(message(0))  # small: batching on would have waited for the writer's turn
    queue.put(message(1, size=60))  # over half of max_size
    queue.put(message(2, size=200))  # over max_size
    assert socket.written == [("direct", message(0)), ("direct", message(1, 60)), ("direct", message(2, 200))]
    assert queue.depth == 0 and queue._writer is None and not queue._turn_pending
    reasons = {r: n for r, n in queue.batch_metrics.reasons.items() if n}
    assert reasons == ({"unbatched": 3} if not policy.enabled else {"idle": 1, "half": 1, "large": 1})
    metrics = queue.batch_metrics  # each counted as a flush of its own, never buffered deeper than one
    assert (metrics.messages, metrics.flushes, metrics.bytes, metrics.batched_messages) == (3, 3, 270, 0)
    assert metrics.sizes == {1: 3} and metrics.max_depth == 1 and queue.frames_written == 3


async def test_a_v3_targets_lone_frame_whose_write_fails_goes_to_on_unwritten() -> None:
    socket, clock = FakeSocket(), Clock()
    unwritten: list[bytes] = []
    queue = DeliveryQueue("ws/c", socket.send, SOCKET, direct=socket, clock=clock, on_unwritten=unwritten.extend)
    socket.fail = True
    assert queue.put(message(0))  # handed over: its sender is told through on_unwritten
    assert unwritten == [message(0)] and queue.frames_written == 0
    assert not queue.put(message(1))  # the queue is closed: the caller tells the sender


async def test_the_frames_of_one_read_group_leave_a_v3_target_in_one_write_at_the_groups_end() -> None:
    socket, clock = FakeSocket(), Clock()
    queue, other = make_v3_queue(SOCKET, socket, clock), make_v3_queue(SOCKET, FakeSocket(), clock)
    WRITES.begin()
    try:
        queue.put(message(0))
        WRITES.begin()  # nested: only the outermost end writes
        queue.put(message(1))
        other.put(message(9))
        WRITES.end()
        assert socket.written == []
    finally:
        WRITES.end()
    assert socket.written == [("direct", message(0)), ("direct", message(1))]
    assert queue.batch_metrics.flushes == 1 and queue.batch_metrics.batched_messages == 2
    assert other.batch_metrics.flushes == 1 and queue._writer is None and other._writer is None


async def test_a_v3_group_whose_socket_is_busy_hands_over_to_the_writer_in_order() -> None:
    socket, clock = FakeSocket(), Clock()
    socket.is_ready = False
    queue = make_v3_queue(SOCKET, socket, clock)
    queue.put(message(0))  # not ready: no write in put, the writer's turn follows
    WRITES.begin()
    try:
        queue.put(message(1))
    finally:
        WRITES.end()
    socket.is_ready = True
    await settle()
    assert socket.messages() == [message(0), message(1)] and queue.depth == 0


async def test_the_v4_clients_outbox_still_batches_its_turn_outside_a_read_group() -> None:
    socket, clock = FakeSocket(), Clock()
    queue = make_queue(SOCKET, socket, clock)  # gather_turn: the calls of one turn meet at its end
    queue.put(message(0))
    queue.put(message(1))
    assert socket.written == []  # not the router's rule: the writer's turn batches them
    await asyncio.sleep(0)
    assert [(path, len(frames.decode_batch(data))) for path, data in socket.written] == [("direct", 2)]


def make_router_v4_queue(policy: BatchPolicy, socket: FakeSocket, clock: Clock) -> DeliveryQueue:
    return make_queue(policy, socket, clock, gather_turn=False)


@pytest.mark.parametrize("policy", [TIMER, SOCKET, BatchPolicy(enabled=False)], ids=["timer", "socket", "off"])
async def test_a_router_v4_targets_frame_that_nothing_waits_with_is_written_in_put(policy: BatchPolicy) -> None:
    socket, clock = FakeSocket(), Clock()
    queue = make_router_v4_queue(policy, socket, clock)
    queue.put(message(0))  # small, outside a read: no writer's turn, as with batching off
    queue.put(message(1, size=60))
    assert socket.written == [("direct", message(0)), ("direct", message(1, 60))]
    assert queue.depth == 0 and queue._writer is None and not queue._turn_pending
    reasons = {r: n for r, n in queue.batch_metrics.reasons.items() if n}
    assert reasons == ({"unbatched": 2} if not policy.enabled else {"idle": 1, "half": 1})


@pytest.mark.parametrize("policy", [TIMER, SOCKET], ids=["timer", "socket"])
async def test_the_frames_of_one_read_group_leave_a_v4_target_in_one_batch_frame_at_the_groups_end(policy) -> None:
    socket, clock = FakeSocket(), Clock()
    queue = make_router_v4_queue(policy, socket, clock)
    WRITES.begin()
    try:
        queue.put(message(0))
        queue.put(message(1))
        assert socket.written == []
    finally:
        WRITES.end()  # no event-loop turn passes: the group's end writes them
    assert [(path, frames.decode_batch(data)) for path, data in socket.written] == [
        ("direct", [message(0), message(1)])
    ]
    assert queue.depth == 0 and queue._writer is None and not queue._turn_pending


async def test_a_chunk_is_not_held_back_by_a_message_that_only_waits_for_the_writers_turn() -> None:
    # A chunk stream's pacing (``wait_writable``): with batching on, a small message queued this
    # turn does not make the next chunk wait for that turn; put writes both at once, in order.
    socket, clock = FakeSocket(), Clock()
    queue = make_queue(SOCKET, socket, clock)
    queue.put(message(0))
    assert queue.depth == 1 and queue.writable()
    waiting = queue.wait_writable()
    with pytest.raises(StopIteration):  # it returns at its first step: no turn passes
        waiting.send(None)
    assert socket.written == []
    chunk = frames.encode_chunk(1, 0, False, b"x" * 10)
    queue.put(chunk)
    assert socket.written == [("direct", message(0)), ("direct", chunk)] and queue.depth == 0


async def test_a_chunk_waits_while_the_socket_cannot_take_a_write() -> None:
    socket, clock = FakeSocket(), Clock()
    socket.block = asyncio.Event()
    socket.is_ready = False
    queue = make_queue(SOCKET, socket, clock)
    queue.put(message(0))
    assert not queue.writable()
    waited = asyncio.ensure_future(queue.wait_writable())
    await settle()  # the writer task's write blocks
    assert not waited.done()
    socket.is_ready = True
    socket.block.set()
    await settle()
    assert waited.done() and queue.depth == 0 and socket.messages() == [message(0)]


@pytest.mark.parametrize("how", ["write fails", "overflow"])
async def test_a_paced_sender_is_woken_when_the_queue_stops_delivering(how: str) -> None:
    # A chunk stream waiting for the socket (the v4 client's send_stream) must learn that the
    # queue gave up, not wait on forever: its call's timer starts only once the send returns.
    socket, clock = FakeSocket(), Clock()
    socket.block = asyncio.Event()
    socket.is_ready = False
    queue = make_queue(SOCKET, socket, clock)
    queue.on_overflow = lambda reason: None
    queue.put(message(0))
    waiting = asyncio.ensure_future(queue.wait_writable())
    paced = asyncio.ensure_future(queue.wait_below(1))
    await settle()  # the writer task's write blocks
    assert not waiting.done() and not paced.done()
    if how == "write fails":
        socket.fail = True
        socket.block.set()
    else:
        queue.overflow("not draining")
    await settle()
    assert waiting.done() and paced.done()
    assert not queue.put(message(1))  # and the sender's next put is refused: it is told


async def burst_behind_a_busy_socket(policy: BatchPolicy) -> tuple[list[tuple[str, bytes]], dict[str, int]]:
    """Frames over half of max_size, two per read, to a v3 target whose socket is busy at first."""
    socket, clock = FakeSocket(), Clock()
    socket.is_ready = False
    queue = make_v3_queue(policy, socket, clock)
    for i in range(0, 6, 2):
        WRITES.begin()
        try:
            queue.put(message(i, size=60))
            queue.put(message(i + 1, size=60))
        finally:
            WRITES.end()
    await settle()
    socket.is_ready = True
    queue.put(message(6, size=60))
    await settle()
    assert queue.depth == 0
    return socket.written, {r: n for r, n in queue.batch_metrics.reasons.items() if n}


async def test_frames_no_later_frame_can_join_leave_a_busy_v3_target_as_with_batching_off() -> None:
    # Batching cannot help such frames (none shares a flush): on must take off's path, each
    # frame its own send from the writer while the socket is busy, in put once it is free.
    on, on_reasons = await burst_behind_a_busy_socket(SOCKET)
    off, off_reasons = await burst_behind_a_busy_socket(BatchPolicy(enabled=False, max_size=100))
    expected = [("task", message(i, size=60)) for i in range(6)] + [("direct", message(6, size=60))]
    assert on == off == expected
    assert off_reasons == {"unbatched": 7} and on_reasons == {"size": 5, "half": 2}
