"""Registry lookups of targets missing from a worker's replica: bounded per connection.

The replica holds every connected client, so a miss is a target that does not exist (or one
that connected a moment ago, whose directory update is on its way). Each miss used to cost a
registry call, so one client calling endless made-up targets cost a call each and stalled
its worker. Here:

- ``NegativeCache``: the targets the registry just said nobody owns, for ``ttl`` seconds (at
  most ``max_entries`` of them): a call to one is refused at once, without asking again;
- a per-connection budget of lookups (a ``TokenBucket``: ``rate`` per second, ``burst`` at
  once): a connection over it has its calls to unknown targets refused without a lookup,
  with ``over_budget`` as the reason.

Pure policy with an injectable clock; ``rhizomorph/gateway/router.py`` carries it out.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from enum import Enum

from rhizomorph.protocol.limits import Clock, TokenBucket


class Lookup(Enum):
    #: Ask the registry (the connection's budget paid for it).
    ASK = "ask"
    #: The registry said nobody owns it a moment ago: refuse now.
    KNOWN_MISSING = "known_missing"
    #: The connection is over its budget of lookups: refuse without asking.
    OVER_BUDGET = "over_budget"


class NegativeCache:
    """Targets nobody owned when last looked up, each for ``ttl`` seconds; at most
    ``max_entries`` (the oldest go first)."""

    def __init__(self, ttl: float, max_entries: int) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        #: target -> when the entry expires; one ttl for all, so the oldest is first.
        self._expiry: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, target: str, now: float) -> None:
        if self.ttl <= 0 or self.max_entries <= 0:
            return
        self._expiry[target] = now + self.ttl
        self._expiry.move_to_end(target)
        self._expire(now)
        while len(self._expiry) > self.max_entries:
            self._expiry.popitem(last=False)

    def holds(self, target: str, now: float) -> bool:
        expiry = self._expiry.get(target)
        if expiry is None:
            return False
        if expiry > now:
            return True
        self._expire(now)
        return False

    def discard(self, target: str) -> None:
        self._expiry.pop(target, None)

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        while expiry:
            target, until = next(iter(expiry.items()))
            if until > now:
                return
            del expiry[target]


class UnknownTargets:
    """What to do with a frame for a target the replica does not know."""

    def __init__(
        self,
        *,
        rate: float,
        burst: int,
        ttl: float,
        max_cached: int = 10_000,
        clock: Clock = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.missing = NegativeCache(ttl, max_cached)
        self._clock = clock
        #: sender -> its budget; made on a sender's first miss (most connections never miss).
        self._budgets: dict[str, TokenBucket] = {}

    def check(self, target: str, sender: str | None) -> Lookup:
        """``sender``: the local connection the frame came from, or ``None`` (a peer worker,
        the router itself), which no connection's budget pays for."""
        now = self._clock()
        if self.missing.holds(target, now):
            return Lookup.KNOWN_MISSING
        if sender is None or self.rate <= 0:
            return Lookup.ASK
        budget = self._budgets.get(sender)
        if budget is None:
            budget = self._budgets[sender] = TokenBucket(self.rate, max(1, self.burst), clock=self._clock)
        return Lookup.ASK if budget.take(now=now) else Lookup.OVER_BUDGET

    def answered(self, target: str, found: bool) -> None:
        """The registry answered a lookup of ``target``."""
        if found:
            self.missing.discard(target)
        else:
            self.missing.add(target, self._clock())

    def forget_sender(self, sender: str) -> None:
        """``sender`` left this worker."""
        self._budgets.pop(sender, None)

    @property
    def senders(self) -> int:
        return len(self._budgets)

    def over_budget(self, target: str) -> str:
        """The reason a caller over its budget is given."""
        return (
            f"Target peer {target} is not known to this worker, and this connection is over its "
            f"budget of lookups of unknown targets ({self.rate:g}/s): not delivered"
        )
