"""Per-connection and per-worker limits (sans-I/O).

Pure policy with an injectable clock, so it is unit-tested without sockets or sleeping:

- ``TokenBucket``: the per-connection message rate (``message_rate`` frames/s refilled,
  ``message_burst`` frames of capacity);
- ``IdleTimer``: how long a connection has been silent (``idle_timeout``);
- ``InboundPolicy``: both, checked on every inbound frame; returns a ``Breach`` (the close
  code and reason the socket layer sends) when the connection must go;
- ``check_capacity``: the per-worker connection cap, raised at admission as
  ``TooManyConnections`` (a ``HandshakeError``, so the handshake refusal path sends it).

The socket side (``rhizomorph/gateway/connection.py``) only reads the verdicts and closes sockets.
Close codes are documented in ``docs/protocol.md``; limits and defaults in ``docs/security.md``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from rhizomorph.protocol.close_codes import CloseCode
from rhizomorph.protocol.handshake import HandshakeError

Clock = Callable[[], float]
_EPSILON = 1e-9  # tokens


@dataclass(frozen=True, slots=True)
class Breach:
    """A limit a live connection broke: the socket layer sends an error frame and closes."""

    code: int
    reason: str


class TokenBucket:
    """A token bucket: ``burst`` tokens of capacity, refilled at ``rate`` tokens per second.

    Starts full. ``take`` spends tokens if there are enough and says whether it could.
    """

    __slots__ = ("rate", "burst", "_tokens", "_last", "_clock")

    def __init__(self, rate: float, burst: float, *, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs rate > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock()

    @property
    def tokens(self) -> float:
        self.take(0.0)  # the refill alone
        return self._tokens

    def take(self, n: float = 1.0, *, now: float | None = None) -> bool:
        """Spend ``n`` tokens if there are that many; ``now`` saves a clock read."""
        if now is None:
            now = self._clock()
        # The refill, here and not in a method of its own: this runs for every inbound frame.
        elapsed = now - self._last
        if elapsed > 0:
            self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._last = now  # a clock going backwards adds nothing, and does not stall refills
        if self._tokens + _EPSILON >= n:  # refills are float sums: 0.5 + 0.05 * 10 < 1
            self._tokens -= n
            return True
        return False


class IdleTimer:
    """Time since the last ``touch``; ``timeout <= 0`` disables it (never expires)."""

    __slots__ = ("timeout", "_last", "_clock")

    def __init__(self, timeout: float, *, clock: Clock = time.monotonic) -> None:
        self.timeout = float(timeout)
        self._clock = clock
        self._last = clock()

    def touch(self, now: float | None = None) -> None:
        self._last = self._clock() if now is None else now

    def remaining(self) -> float:
        """Seconds until the timeout; ``<= 0`` once expired, ``inf`` when disabled."""
        if self.timeout <= 0:
            return math.inf
        return self._last + self.timeout - self._clock()


class InboundPolicy:
    """The limits on what one connection sends after its handshake.

    ``on_frame`` is called for every inbound data frame (text or binary): it resets the idle
    timer and spends one token. ``rate <= 0`` disables the rate limit; ``idle_timeout <= 0``
    disables the idle timeout.
    """

    __slots__ = ("bucket", "idle", "_clock")

    def __init__(self, *, rate: float, burst: float, idle_timeout: float, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self.bucket = TokenBucket(rate, max(burst, 1), clock=clock) if rate > 0 else None
        self.idle = IdleTimer(idle_timeout, clock=clock)

    def on_frame(self) -> Breach | None:
        now = self._clock()  # one clock read per frame: this runs for every inbound frame
        self.idle._last = now  # ``touch(now)`` without its call
        if self.bucket is not None and not self.bucket.take(1.0, now=now):
            return Breach(
                CloseCode.POLICY_VIOLATION,
                f"message rate limit exceeded ({self.bucket.rate:g}/s, burst {self.bucket.burst:g})",
            )
        return None

    def idle_remaining(self) -> float:
        return self.idle.remaining()

    def idle_breach(self) -> Breach | None:
        """The idle-timeout breach if the connection has been silent too long, else ``None``."""
        if self.idle.remaining() > 0:
            return None
        return Breach(CloseCode.GOING_AWAY, f"idle timeout ({self.idle.timeout:g} s without a message)")


class TooManyConnections(HandshakeError):
    """The worker is full. Refused with close 1013 (try again later).

    ``error_frame`` is false for a reconnecting client: hypha-rpc stops reconnecting for good
    when a reconnect is answered with an error frame, while a bare 1013 close makes it retry
    with backoff (and the kernel may hand the retry to a worker with room).
    """

    close_code = CloseCode.TRY_AGAIN_LATER

    def __init__(self, limit: int, *, reconnecting: bool = False) -> None:
        super().__init__(f"too many connections on this gateway worker (limit {limit}); try again later")
        self.error_frame = not reconnecting


def check_capacity(open_connections: int, limit: int, *, reconnecting: bool = False) -> None:
    """Raise ``TooManyConnections`` if a worker holding ``open_connections`` may take no more.

    ``limit <= 0`` means unlimited.
    """
    if 0 < limit <= open_connections:
        raise TooManyConnections(limit, reconnecting=reconnecting)


MAX_CLOSE_REASON = 123  # bytes: a close frame's payload is at most 125, 2 of them the code


def close_reason(text: str) -> str:
    """``text`` cut to fit a WebSocket close frame (123 bytes of UTF-8, whole characters)."""
    return text.encode("utf-8", "replace")[:MAX_CLOSE_REASON].decode("utf-8", "ignore")
