"""Clients that lost their socket a moment ago and may come back: what is kept for them.

hypha-rpc reconnects after any close it did not start itself (the router's close, a lost
connection), with its reconnection token, and keeps its pending calls meanwhile: their timers
decide. The reply to such a call that reaches the worker between the close and the reconnect
has no socket to go to. Refusing it tells its sender (who waits for nothing) and leaves the
caller waiting for its timeout. So for ``grace`` seconds after a client's socket closed, the
messages for it that are not calls (replies, heartbeats, ``peer_not_found`` and rejects of its
own calls) are kept and delivered when it comes back, on this worker or another; after that
they are answered as undeliverable. Calls (a message with a ``session``) are not kept: their
callers are told at once, as for any target that is not connected.

Bounded: at most ``max_bytes`` kept per client (a message past it is refused at once) and
``max_clients`` clients waited for (the oldest wait ends first).

Pure state with an injectable clock; ``rhizomorph/gateway/reconnecting.py`` carries it out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

#: Clients waited for at once when the worker's connections are not bounded.
DEFAULT_MAX_CLIENTS = 10_000


def is_call(header: dict[str, Any] | None) -> bool:
    """A message whose sender waits for an answer (as ``refusals.answer`` reads it); an
    unreadable one counts as a call, so it is answered now rather than kept."""
    return header is None or isinstance(header.get("session"), str)


class _Wait:
    __slots__ = ("until", "frames", "size")

    def __init__(self, until: float) -> None:
        self.until = until
        self.frames: list[bytes] = []
        self.size = 0


class Reconnecting:
    """The clients waited for, each with the messages kept for it, oldest wait first."""

    def __init__(
        self,
        grace: float,
        max_bytes: int,
        max_clients: int,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.grace = grace
        self.max_bytes = max_bytes
        self.max_clients = max_clients
        self._clock = clock
        #: address -> its wait; one grace for all, so the first entry ends first. Read-only
        #: outside (the router tests ``address in waits`` on its routing path).
        self.waits: OrderedDict[str, _Wait] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.grace > 0 and self.max_clients > 0

    def __contains__(self, address: object) -> bool:
        return address in self.waits

    def __len__(self) -> int:
        return len(self.waits)

    def kept(self, address: str) -> int:
        """Messages kept for ``address``."""
        wait = self.waits.get(address)
        return len(wait.frames) if wait is not None else 0

    def left(self, address: str) -> list[tuple[str, list[bytes]]]:
        """``address`` lost its socket: wait ``grace`` seconds for it. Returns the waits this
        ends early (past ``max_clients``) with what they kept, to answer as undeliverable."""
        if not self.enabled:
            return []
        previous = self.waits.pop(address, None)
        wait = _Wait(self._clock() + self.grace)
        if previous is not None:  # it left again before its grace ended: keep what it had
            wait.frames, wait.size = previous.frames, previous.size
        self.waits[address] = wait
        ended = []
        while len(self.waits) > self.max_clients:
            oldest, dropped = self.waits.popitem(last=False)
            ended.append((oldest, dropped.frames))
        return ended

    def keep(self, address: str, frame: bytes) -> bool:
        """Keep ``frame`` for ``address``; ``False`` if it is not waited for, or the frame would
        pass ``max_bytes`` (then the caller answers it now)."""
        wait = self.waits.get(address)
        if wait is None or (self.max_bytes and wait.size + len(frame) > self.max_bytes):
            return False
        wait.frames.append(frame)
        wait.size += len(frame)
        return True

    def back(self, address: str) -> list[bytes]:
        """``address`` is connected again (or its new worker is known): the wait ends; the
        messages kept for it, in the order they came."""
        wait = self.waits.pop(address, None)
        return wait.frames if wait is not None else []

    def expired(self) -> list[tuple[str, list[bytes]]]:
        """End the waits whose grace is over; what each kept, to answer as undeliverable."""
        now = self._clock()
        ended = []
        waits = self.waits
        while waits:
            address, wait = next(iter(waits.items()))
            if wait.until > now:
                break
            del waits[address]
            ended.append((address, wait.frames))
        return ended

    def remaining(self) -> float | None:
        """Seconds until the oldest wait ends (``None``: nobody is waited for)."""
        if not self.waits:
            return None
        return max(0.0, next(iter(self.waits.values())).until - self._clock())
