"""Per-target batching (sans-I/O): when to flush a target's buffer, and how much.

The rules, for one target:

- A message at least ``max_size`` bytes long bypasses batching: it is flushed alone (after
  the messages queued before it, which keeps the order).
- A message longer than half of ``max_size`` leaves at once, with the messages queued before
  it (reason ``half``): no later message of at least its size could join its flush, so
  waiting for the writer's turn or the timer gains nothing (``full`` is true while one is
  buffered). With the default 32 KiB a 20 KB message never shares a flush with another one.
- When the target's socket is idle (its last flush left the buffer empty), the next flush
  happens at once: a lone call pays no batching delay (reason ``idle``).
- Messages that arrive while a write is in flight accumulate. What happens after the write
  is the policy's ``wait``:

  - ``socket`` (the default): they leave as soon as the socket is free, in flushes of at most
    ``max_messages`` messages and ``max_size`` bytes (``free``). The batch is what piled up
    while the socket was busy: it grows exactly when the target is slower than the traffic,
    and no message ever waits for a timer while the socket could take it.
  - ``timer`` (the hypha-rpc batching report's rule): the buffer is flushed as soon as it
    holds ``max_messages`` messages (``count``) or ``max_size`` bytes (``size``), and at the
    latest ``timeout`` after its oldest message arrived (``timer``).
- With batching disabled every message is flushed alone (``unbatched``).

``Batcher`` holds no I/O and takes the time as an argument, so the rules are unit-tested
with a fake clock; ``rhizomorph/gateway/delivery.py`` drives it from the event loop.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

FLUSH_REASONS = ("idle", "free", "count", "size", "half", "timer", "large", "unbatched")
#: What a busy target's batch waits for once its socket is free (see the module docstring).
WAITS = ("socket", "timer")
_ALONE = 1 << 62  # the batching size of a frame that must be flushed alone
#: Upper bounds of the batch-size histogram buckets (messages per flush).
BATCH_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100)
_INF = float("inf")
#: Messages per flush -> its bucket, up to the last bound (recorded once per flush: a lookup, no walk).
_BUCKET_OF = [next(b for b in BATCH_SIZE_BUCKETS if n <= b) for n in range(BATCH_SIZE_BUCKETS[-1] + 1)]


@dataclass(frozen=True)
class BatchPolicy:
    """The knobs of hypha-rpc's batching report, applied per target by the router."""

    enabled: bool = True
    timeout_ms: float = 10.0
    max_messages: int = 10
    max_size: int = 32768
    wait: str = "socket"

    def __post_init__(self) -> None:
        if self.timeout_ms < 0 or self.max_messages < 1 or self.max_size < 1 or self.wait not in WAITS:
            raise ValueError(f"invalid batch policy: {self}")


PRESETS: dict[str, BatchPolicy] = {
    "latency": BatchPolicy(timeout_ms=5.0, max_messages=5, max_size=32768),
    "balanced": BatchPolicy(),
    "throughput": BatchPolicy(timeout_ms=20.0, max_messages=20, max_size=65536),
}


@dataclass
class BatchMetrics:
    """What one target's batcher did: ready to be read by the manager or exported."""

    messages: int = 0
    batched_messages: int = 0  # messages that left in a flush of more than one
    flushes: int = 0
    bytes: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    sizes: Counter[float] = field(default_factory=Counter)  # bucket upper bound (or inf) -> flushes
    max_depth: int = 0

    def record(self, count: int, size: int, reason: str) -> None:
        self.flushes += 1
        self.messages += count
        self.bytes += size
        if count > 1:
            self.batched_messages += count
        self.reasons[reason] += 1
        self.sizes[_BUCKET_OF[count] if count < len(_BUCKET_OF) else _INF] += 1

    def merge(self, other: BatchMetrics) -> None:
        """Add another target's counts (a worker keeps the totals of targets that left)."""
        self.messages += other.messages
        self.batched_messages += other.batched_messages
        self.flushes += other.flushes
        self.bytes += other.bytes
        self.reasons.update(other.reasons)
        self.sizes.update(other.sizes)
        self.max_depth = max(self.max_depth, other.max_depth)

    def as_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "batched_messages": self.batched_messages,
            "flushes": self.flushes,
            "bytes": self.bytes,
            "reasons": {r: self.reasons.get(r, 0) for r in FLUSH_REASONS},
            "batch_sizes": {("+Inf" if b == float("inf") else str(b)): n for b, n in sorted(self.sizes.items())},
            "max_depth": self.max_depth,
        }


@dataclass(slots=True)
class Flush:
    frames: list[bytes]
    reason: str


class Batcher:
    def __init__(self, policy: BatchPolicy) -> None:
        self.metrics = BatchMetrics()
        self._frames: deque[bytes] = deque()
        self._sizes: deque[int] = deque()  # batching size of each frame (``_ALONE`` for a lone one)
        self._arrivals: deque[float] = deque()
        self._bytes = 0
        self._idle = True  # the last flush emptied the buffer
        self.policy = policy

    @property
    def policy(self) -> BatchPolicy:
        return self._policy

    @policy.setter
    def policy(self, policy: BatchPolicy) -> None:
        self._policy = policy
        self._half = policy.max_size // 2  # a frame longer than this closes its flush
        # Buffered frames longer than half of max_size (lone ones included): a count, so that
        # ``full`` (asked on every put) does not scan the buffer.
        self._big = sum(1 for size in self._sizes if size > self._half)

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def buffered_bytes(self) -> int:
        return self._bytes

    def add(self, frame: bytes, now: float, alone: bool = False) -> None:
        """Buffer a frame; ``alone`` frames (chunks of a stream) never share a flush."""
        self._arrivals.append(now)
        self._frames.append(frame)
        size = _ALONE if alone else len(frame)
        self._sizes.append(size)
        if size > self._half:
            self._big += 1
        self._bytes += len(frame)
        if len(self._frames) > self.metrics.max_depth:
            self.metrics.max_depth = len(self._frames)

    def full(self) -> bool:
        """Whether the buffer's head is a flush no later message could join (``count``, ``size``,
        ``half``, ``large``, or batching off): it may leave at once, before the writer's turn."""
        policy = self._policy
        if not self._frames:
            return False
        # A frame longer than half of max_size either ends the head flush or lies beyond it.
        return (
            self._big > 0
            or not policy.enabled
            or len(self._frames) >= policy.max_messages
            or self._bytes >= policy.max_size
        )

    def complete(self) -> bool:
        """Whether what is buffered makes a flush without the timer (``full``, or anything with
        ``wait = "socket"``): a writer waiting for the timer is worth waking only then."""
        return bool(self._frames) and (self._policy.wait == "socket" or self.full())

    def deadline(self) -> float | None:
        """When the timer forces a flush of what is buffered (``None``: nothing to wait for)."""
        policy = self._policy
        if not self._frames or self._idle or not policy.enabled or policy.wait == "socket":
            return None
        return self._arrivals[0] + policy.timeout_ms / 1000.0

    def take(self, now: float) -> Flush | None:
        """The next flush due at ``now`` (the socket is free), or ``None`` to wait."""
        if not self._frames:
            self._idle = True
            return None
        policy = self._policy
        if not policy.enabled:
            return self._pop(1, "unbatched")
        sizes = self._sizes
        head = sizes[0]
        if head >= policy.max_size:
            return self._pop(1, "large")
        if head > self._half and policy.max_messages > 1:
            # The walk below for a head no later frame can join (a burst of 20 KB frames behind
            # a busy socket): its flush and reason without walking, as cheap as batching off.
            if len(sizes) == 1:
                return self._pop(1, "half")
            following = sizes[1]
            if head + following > policy.max_size:
                return self._pop(1, "size" if following < policy.max_size else "large")
        count, size = 0, 0
        for frame_size in self._sizes:
            if frame_size >= policy.max_size or count == policy.max_messages or size + frame_size > policy.max_size:
                break
            count += 1
            size += frame_size
        if count == policy.max_messages:
            reason = "count"
        elif count < len(self._frames):
            reason = "size" if self._sizes[count] < policy.max_size else "large"
        elif size >= policy.max_size:  # exactly full: no further message could join it
            reason = "size"
        elif self._big:  # the flush is the whole buffer and holds a frame no later one of its size could join
            reason = "half"
        elif self._idle:
            reason = "idle"
        elif policy.wait == "socket":
            reason = "free"
        elif now >= self._arrivals[0] + policy.timeout_ms / 1000.0:
            reason = "timer"
        else:
            return None
        return self._pop(count, reason)

    def pass_lone(self, frame: bytes, alone: bool = False) -> bool:
        """A frame for a target that is idle (its socket free, nothing being written), to be
        written now if nothing is buffered: its flush is counted as ``add``, ``take`` and
        ``written`` count it, without buffering it (the caller need not call ``written``).
        ``False``, and nothing done, if frames are buffered (``add`` it)."""
        if self._frames:
            return False
        policy = self._policy
        size = len(frame)
        if not policy.enabled:
            reason = "unbatched"
        elif alone or size >= policy.max_size:
            reason = "large"
        else:
            reason = "half" if size > self._half else "idle"
        metrics = self.metrics
        if not metrics.max_depth:
            metrics.max_depth = 1
        metrics.record(1, size, reason)
        self._idle = True  # what ``written`` leaves after a flush that emptied the buffer
        return True

    def _pop(self, count: int, reason: str) -> Flush:
        half = self._half
        if count == 1:  # the common flush of an idle target: no loops
            frame = self._frames.popleft()
            frames = [frame]
            if self._sizes.popleft() > half:
                self._big -= 1
            self._arrivals.popleft()
            size = len(frame)
        else:
            frames = [self._frames.popleft() for _ in range(count)]
            for _ in range(count):
                if self._sizes.popleft() > half:
                    self._big -= 1
                self._arrivals.popleft()
            size = sum(map(len, frames))
        self._bytes -= size
        self.metrics.record(count, size, reason)
        # Until a write leaves the buffer empty, later messages gather behind it (see ``wait``).
        self._idle = False
        return Flush(frames, reason)

    def written(self) -> None:
        """The socket finished writing a flush; an empty buffer means the target is idle again."""
        if not self._frames:
            self._idle = True

    def drain(self) -> list[bytes]:
        """Everything still buffered (the target is gone)."""
        frames = list(self._frames)
        self._frames.clear()
        self._sizes.clear()
        self._arrivals.clear()
        self._bytes = 0
        self._big = 0
        return frames
