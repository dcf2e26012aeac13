"""The batcher's flush rules with a fake clock, and v4 batch framing round trips (pure)."""

from __future__ import annotations

import copy

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhizomorph.protocol import frames
from rhizomorph.protocol.batching import PRESETS, Batcher, BatchPolicy

POLICY = BatchPolicy(timeout_ms=10.0, max_messages=3, max_size=100, wait="timer")
SOCKET = BatchPolicy(timeout_ms=10.0, max_messages=3, max_size=100, wait="socket")


def fill(batcher: Batcher, *sizes: int, now: float = 0.0) -> None:
    for i, size in enumerate(sizes):
        batcher.add(bytes([i % 256]) * size, now)


def test_idle_target_flushes_a_lone_message_at_once():
    batcher = Batcher(POLICY)
    fill(batcher, 10)
    flush = batcher.take(now=0.0)
    assert flush is not None and flush.reason == "idle" and len(flush.frames) == 1


def test_messages_arriving_during_a_write_wait_for_count():
    batcher = Batcher(POLICY)
    fill(batcher, 10)
    batcher.take(0.0)  # written... but before it completes two more arrive
    fill(batcher, 10, 10, now=0.001)
    batcher.written()
    assert batcher.take(0.002) is None  # not full, timer not due: wait for company
    assert batcher.deadline() == pytest.approx(0.011)
    fill(batcher, 10, now=0.003)
    flush = batcher.take(0.003)
    assert flush.reason == "count" and len(flush.frames) == 3


def test_timer_flushes_a_partial_batch_at_its_deadline():
    batcher = Batcher(POLICY)
    fill(batcher, 10)
    batcher.take(0.0)
    fill(batcher, 10, now=0.001)
    batcher.written()
    assert batcher.take(0.0109) is None
    flush = batcher.take(0.011)
    assert flush.reason == "timer" and len(flush.frames) == 1
    batcher.written()
    fill(batcher, 10, now=0.5)
    assert batcher.take(0.5).reason == "idle"  # the buffer emptied: idle again


def test_size_limit_and_large_messages_bypass_in_order():
    batcher = Batcher(POLICY)
    fill(batcher, 10)
    batcher.take(0.0)
    fill(batcher, 40, 40, 40, 200, 5, now=0.001)
    batcher.written()
    first = batcher.take(0.001)
    assert first.reason == "size" and [len(f) for f in first.frames] == [40, 40]
    second = batcher.take(0.001)
    assert second.reason == "large" and [len(f) for f in second.frames] == [40]  # flushed ahead of the large one
    third = batcher.take(0.001)
    assert third.reason == "large" and [len(f) for f in third.frames] == [200]
    assert batcher.take(0.001) is None  # the 5-byte one waits for company or the timer
    assert batcher.take(0.02).reason == "timer"


def test_a_batch_of_exactly_max_size_leaves_without_the_timer():
    # The delivery queue wakes its writer when complete() says so; take() must then flush.
    batcher = Batcher(POLICY)
    fill(batcher, 10)
    batcher.take(0.0)
    fill(batcher, 1, 99, now=0.001)
    batcher.written()
    assert batcher.complete()
    flush = batcher.take(0.001)
    assert flush is not None and flush.reason == "size" and [len(f) for f in flush.frames] == [1, 99]


@pytest.mark.parametrize("policy", [POLICY, SOCKET], ids=["timer", "socket"])
def test_a_message_over_half_of_max_size_leaves_at_once_with_those_before_it(policy):
    # With max_size 100, no later message of 51 bytes or more could join a 51-byte one:
    # it leaves without waiting for the writer's turn, company or the timer.
    batcher = Batcher(policy)
    fill(batcher, 10)
    batcher.take(0.0)  # a write is under way: the target is not idle
    fill(batcher, 10, 50, now=0.001)
    assert not batcher.full()  # 50 is half, not more: a second 50 could still join
    batcher.add(b"z" * 51, 0.001)
    assert batcher.full() and batcher.complete()
    batcher.written()
    flush = batcher.take(0.001)  # before the timer, under either wait
    assert flush.reason == "size" and [len(f) for f in flush.frames] == [10, 50]  # 10+50+51 > 100
    assert batcher.full()  # the 51 is still buffered
    flush = batcher.take(0.001)
    assert flush.reason == "half" and [len(f) for f in flush.frames] == [51]
    assert not batcher.full() and batcher.take(0.001) is None


def test_an_idle_target_sends_a_half_message_as_half_and_batches_stay_as_big():
    batcher = Batcher(SOCKET)
    fill(batcher, 60)
    assert batcher.full() and batcher.take(0.0).reason == "half"
    fill(batcher, 60, 10, 10, now=0.001)  # piled up behind it: still one flush of three
    batcher.written()
    flush = batcher.take(0.001)
    assert flush.reason == "count" and [len(f) for f in flush.frames] == [60, 10, 10]
    fill(batcher, 10, 60, 10, now=0.002)
    batcher.written()
    flush = batcher.take(0.002)
    assert flush.reason == "count" and [len(f) for f in flush.frames] == [10, 60, 10]
    batcher.written()
    fill(batcher, 10, 60, now=0.003)
    assert batcher.take(0.003).reason == "half"
    assert batcher.metrics.as_dict()["reasons"]["half"] == 2


def test_a_new_policy_recounts_the_half_messages():
    batcher = Batcher(POLICY)
    fill(batcher, 10)
    batcher.take(0.0)
    fill(batcher, 60, now=0.001)
    assert batcher.full()
    batcher.policy = BatchPolicy(timeout_ms=10.0, max_messages=3, max_size=200, wait="timer")
    assert not batcher.full()  # 60 is under half of 200
    batcher.policy = POLICY
    assert batcher.full()
    batcher.drain()
    assert not batcher.full()
    fill(batcher, 10)
    assert not batcher.full()


# -- wait="socket": a busy target's batch leaves as soon as the socket is free ----------------


def test_the_default_policy_waits_for_the_socket_not_a_timer():
    assert BatchPolicy().wait == "socket" and PRESETS["balanced"].wait == "socket"
    with pytest.raises(ValueError):
        BatchPolicy(wait="never")


def test_messages_arriving_during_a_write_leave_together_once_it_completes():
    batcher = Batcher(SOCKET)
    fill(batcher, 10)
    assert batcher.take(0.0).reason == "idle"
    fill(batcher, 10, 10, now=0.001)  # arrive while the first write is in flight
    assert batcher.complete() and batcher.deadline() is None  # nothing to wait for
    batcher.written()
    flush = batcher.take(0.001)
    assert flush.reason == "free" and len(flush.frames) == 2
    batcher.written()
    fill(batcher, 10, now=0.5)
    assert batcher.take(0.5).reason == "idle"  # that write left the buffer empty: idle again


def test_a_free_socket_still_splits_what_piled_up_by_count_size_and_large():
    batcher = Batcher(SOCKET)
    fill(batcher, 10)
    batcher.take(0.0)
    fill(batcher, 10, 10, 10, 10, 60, 60, 200, 5, now=0.001)
    batcher.written()
    flushes = []
    while (flush := batcher.take(0.001)) is not None:
        flushes.append((flush.reason, [len(f) for f in flush.frames]))
    assert flushes == [
        ("count", [10, 10, 10]),
        ("size", [10, 60]),
        ("large", [60]),
        ("large", [200]),
        ("free", [5]),
    ]


def test_disabled_batching_flushes_one_message_each():
    batcher = Batcher(BatchPolicy(enabled=False))
    fill(batcher, 10, 10, 10)
    reasons = [batcher.take(0.0).reason for _ in range(3)]
    assert reasons == ["unbatched"] * 3 and batcher.take(0.0) is None


def test_metrics_count_reasons_sizes_and_depth():
    batcher = Batcher(POLICY)
    fill(batcher, 1, 1, 1, 1)
    batcher.take(0.0)
    metrics = batcher.metrics.as_dict()
    assert metrics["flushes"] == 1 and metrics["messages"] == 3 and metrics["batched_messages"] == 3
    assert metrics["reasons"]["count"] == 1 and metrics["max_depth"] == 4
    assert metrics["batch_sizes"] == {"5": 1}


@pytest.mark.parametrize("count", [1, 2, 3, 5, 6, 10, 11, 49, 50, 51, 100, 101, 5000])
def test_a_flush_counts_in_the_smallest_bucket_that_holds_it(count: int) -> None:
    batcher = Batcher(BatchPolicy(max_messages=10_000, max_size=1 << 30))
    fill(batcher, *[1] * count)
    flush = batcher.take(0.0)
    assert flush is not None and len(flush.frames) == count
    bounds = {1: "1", 2: "2", 3: "5", 5: "5", 6: "10", 10: "10", 11: "20", 49: "50", 50: "50", 51: "100", 100: "100"}
    assert batcher.metrics.as_dict()["batch_sizes"] == {bounds.get(count, "+Inf"): 1}
    assert batcher.metrics.bytes == count and not len(batcher) and batcher.buffered_bytes == 0


def test_presets_match_the_report():
    assert PRESETS["balanced"] == BatchPolicy(True, 10.0, 10, 32768)
    assert PRESETS["latency"].timeout_ms == 5.0 and PRESETS["latency"].max_messages == 5
    assert PRESETS["throughput"] == BatchPolicy(True, 20.0, 20, 65536)
    with pytest.raises(ValueError):
        BatchPolicy(max_messages=0)


@given(st.lists(st.binary(max_size=300), max_size=50))
def test_batch_frame_round_trips_any_messages(messages):
    frame = frames.encode_batch(messages)
    assert frames.is_v4(frame)
    assert frames.decode_batch(frame) == messages


@given(st.lists(st.binary(min_size=1, max_size=64), min_size=1, max_size=10), st.data())
def test_truncated_batch_frames_are_refused(messages, data):
    frame = frames.encode_batch(messages)
    boundaries, offset = set(), 2
    for message in messages:
        offset += frames.OVERHEAD + len(message)
        boundaries.add(offset)  # cutting here leaves a shorter but whole batch
    cut = data.draw(st.integers(min_value=3, max_value=len(frame) - 1).filter(lambda n: n not in boundaries))
    with pytest.raises(frames.FrameError):
        frames.decode_batch(frame[:cut])


@given(st.lists(st.tuples(st.integers(1, 150), st.floats(0, 0.05)), max_size=60))
def test_batcher_never_loses_or_reorders(arrivals):
    """Whatever arrives, every frame leaves exactly once, in order, within the limits."""
    batcher = Batcher(POLICY)
    sent, now = [], 0.0
    for i, (size, gap) in enumerate(arrivals):
        now += gap
        batcher.add(i.to_bytes(2, "big") + b"x" * (size - 1), now)
        while (flush := batcher.take(now)) is not None:
            assert len(flush.frames) <= POLICY.max_messages
            assert len(flush.frames) == 1 or sum(map(len, flush.frames)) <= POLICY.max_size
            sent.extend(flush.frames)
            batcher.written()
    while (flush := batcher.take(now + 1.0)) is not None:
        sent.extend(flush.frames)
        batcher.written()
    assert [int.from_bytes(f[:2], "big") for f in sent] == list(range(len(arrivals)))


@given(st.lists(st.binary(max_size=2000), min_size=1, max_size=6), st.integers(1, 700), st.randoms())
def test_chunk_streams_round_trip_interleaved(messages, chunk_size, rng):
    """Any messages, cut into streams of any chunk size and interleaved, reassemble exactly."""
    streams = [frames.split_stream(m, stream_id, chunk_size) for stream_id, m in enumerate(messages, start=1)]
    assembler, done = frames.StreamAssembler(), {}
    cursors = [0] * len(streams)
    while any(c < len(s) for c, s in zip(cursors, streams)):
        i = rng.choice([i for i, s in enumerate(streams) if cursors[i] < len(s)])
        whole = assembler.add(streams[i][cursors[i]])
        cursors[i] += 1
        if whole is not None:
            done[i] = whole
    assert [done[i] for i in range(len(messages))] == messages
    assert len(assembler) == 0


def test_chunk_stream_errors_and_abort():
    first, second = frames.split_stream(b"abcdef", 7, 3)
    assembler = frames.StreamAssembler()
    with pytest.raises(frames.FrameError):
        assembler.add(second)  # a stream must start at chunk 0
    assert assembler.add(first) is None
    assembler.add(frames.encode_chunk(7, 0, True, b"", abort=True))
    assert len(assembler) == 0  # dropped
    with pytest.raises(frames.FrameError):
        frames.decode_chunk(b"\xc1S\x00")


def test_lone_frames_never_share_a_flush():
    """Chunks of a stream are not messages: even small ones go out alone, in order."""
    batcher = Batcher(POLICY)
    fill(batcher, 10)
    batcher.take(0.0)
    batcher.add(b"a" * 5, 0.001)
    batcher.add(b"\xc1S-chunk", 0.001, alone=True)
    batcher.add(b"b" * 5, 0.001)
    batcher.written()
    flushes = []
    while (flush := batcher.take(1.0)) is not None:
        flushes.append(flush.frames)
    assert flushes == [[b"a" * 5], [b"\xc1S-chunk"], [b"b" * 5]]
    assert batcher.buffered_bytes == 0


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=250), min_size=1, max_size=8),
    alone=st.lists(st.booleans(), min_size=8, max_size=8),
    enabled=st.booleans(),
    wait=st.sampled_from(["socket", "timer"]),
)
def test_complete_says_whether_a_busy_target_flushes_before_its_timer(sizes, alone, enabled, wait):
    # The delivery queue wakes its waiting writer only when complete() is true: it must be
    # exactly "take() returns a flush now", for a target that is not idle and before the timer.
    batcher = Batcher(BatchPolicy(enabled=enabled, timeout_ms=10.0, max_messages=3, max_size=100, wait=wait))
    fill(batcher, 10)
    batcher.take(0.0)  # a write is under way: the target is not idle
    for i, size in enumerate(sizes):
        batcher.add(b"x" * size, 0.001, alone=alone[i])
        before_timer = copy.deepcopy(batcher).take(0.0105)  # take() pops: ask a copy
        assert batcher.complete() == (before_timer is not None)


def test_pass_lone_counts_an_idle_targets_frame_as_add_then_take_would() -> None:
    for policy, size, alone, reason in [
        (BatchPolicy(max_size=100), 10, False, "idle"),
        (BatchPolicy(max_size=100), 60, False, "half"),
        (BatchPolicy(max_size=100), 100, False, "large"),
        (BatchPolicy(max_size=100), 10, True, "large"),
        (BatchPolicy(enabled=False), 10, False, "unbatched"),
    ]:
        taken = Batcher(policy)
        taken.add(b"x" * size, 0.0, alone=alone)
        flush = taken.take(0.0)
        assert flush is not None and flush.frames == [b"x" * size] and flush.reason == reason
        taken.written()
        passed = Batcher(policy)
        assert passed.pass_lone(b"x" * size, alone)
        assert len(passed) == 0 and passed.buffered_bytes == 0 and not passed.full()
        assert passed.metrics == taken.metrics and passed.metrics.reasons[reason] == 1
        assert passed.take(0.0) is None and passed.deadline() is None


def test_pass_lone_leaves_a_frame_behind_buffered_ones_to_add() -> None:
    batcher = Batcher(BatchPolicy(max_size=100))
    batcher.add(b"a", 0.0)
    assert not batcher.pass_lone(b"b")
    assert len(batcher) == 1 and batcher.metrics.flushes == 0


def walk(sizes: list[int], policy: BatchPolicy, idle: bool, waited: bool) -> tuple[int, str] | None:
    """The rules of ``take`` spelled out as the module docstring states them (``waited``: the
    timer of the oldest frame is due): how many frames leave at the head, and why."""
    if not policy.enabled:
        return 1, "unbatched"
    if sizes[0] >= policy.max_size:
        return 1, "large"
    count, size = 0, 0
    for frame_size in sizes:
        if frame_size >= policy.max_size or count == policy.max_messages or size + frame_size > policy.max_size:
            break
        count, size = count + 1, size + frame_size
    if count == policy.max_messages:
        return count, "count"
    if count < len(sizes):
        return count, "size" if sizes[count] < policy.max_size else "large"
    if size >= policy.max_size:
        return count, "size"
    if any(s > policy.max_size // 2 for s in sizes):
        return count, "half"
    if idle:
        return count, "idle"
    if policy.wait == "socket":
        return count, "free"
    return (count, "timer") if waited else None


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=130), min_size=1, max_size=8),
    alone=st.lists(st.booleans(), min_size=8, max_size=8),
    max_messages=st.integers(1, 4),
    wait=st.sampled_from(["socket", "timer"]),
    idle=st.booleans(),
    waited=st.booleans(),
)
def test_take_gives_the_rules_flush_for_every_buffer(sizes, alone, max_messages, wait, idle, waited):
    # take() shortcuts the walk where the head is over half of max_size (no later frame of its
    # size could join it): the flush and its reason must be the rules' all the same.
    policy = BatchPolicy(timeout_ms=10.0, max_messages=max_messages, max_size=100, wait=wait)
    batcher = Batcher(policy)
    if not idle:
        fill(batcher, 10)
        batcher.take(0.0)  # a write is under way: the target is not idle
    frames_in = [bytes([i]) * size for i, size in enumerate(sizes)]
    for i, frame in enumerate(frames_in):
        batcher.add(frame, 0.0, alone=alone[i])
    batching_sizes = [1 << 62 if alone[i] else size for i, size in enumerate(sizes)]
    expected = walk(batching_sizes, policy, idle, waited)
    flush = batcher.take(0.0105 if waited else 0.0)
    if expected is None:
        assert flush is None
        return
    assert flush is not None and (len(flush.frames), flush.reason) == expected
    assert flush.frames == frames_in[: expected[0]]
    assert batcher.buffered_bytes == sum(sizes[expected[0] :]) and len(batcher) == len(sizes) - expected[0]
    rest = batching_sizes[expected[0] :]
    big_or_many = any(s > 50 for s in rest) or len(rest) >= max_messages or sum(sizes[expected[0] :]) >= 100
    assert batcher.full() == (bool(rest) and big_or_many)
