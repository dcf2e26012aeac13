"""Which workers want which broadcasts: (workspace, event type) pairs with subscribers.

A broadcast (``to: "*"``) reaches the subscribed clients of the sender's workspace on every
worker. Rather than forwarding each one to every peer, a worker forwards it only to the peers
that have a subscriber for that (workspace, event type), and each worker tells its peers
what it has:

- ``LocalInterest``: this worker's subscribers, counted per pair. A change that makes a pair
  appear or vanish is an ``InterestUpdate`` for every peer.
- ``PeerInterest``: what each peer said it has. A ``full`` update replaces a peer's set (it
  is the first thing a worker sends on a new link, so a peer that comes back fresh is known
  again); other updates add and remove pairs.

The updates travel as control items on the ordered peer links (``rhizomorph/actors/peers.py``),
in order with the frames. Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

Pair = tuple[str, str]  # (workspace, event type)


@dataclass(frozen=True, slots=True)
class InterestUpdate:
    #: The worker whose subscribers these are.
    worker_id: str
    added: tuple[Pair, ...] = ()
    removed: tuple[Pair, ...] = ()
    #: ``added`` is the worker's whole set: forget what it said before.
    full: bool = False

    def __bool__(self) -> bool:
        return self.full or bool(self.added or self.removed)

    def encode(self) -> bytes:
        data: bytes = msgpack.packb(
            [self.worker_id, self.full, [list(p) for p in self.added], [list(p) for p in self.removed]],
            use_bin_type=True,
        )
        return data

    @classmethod
    def decode(cls, data: bytes) -> InterestUpdate:
        """Raises ``ValueError`` for anything that is not an encoded update."""
        try:
            worker_id, full, added, removed = msgpack.unpackb(data, raw=False)
            update = cls(str(worker_id), _pairs(added), _pairs(removed), bool(full))
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise ValueError(f"not an interest update: {exc}") from None
        return update


def _pairs(items: Any) -> tuple[Pair, ...]:
    pairs = tuple((workspace, event_type) for workspace, event_type in items)
    if not all(isinstance(w, str) and isinstance(e, str) for w, e in pairs):
        raise ValueError("a pair is two strings")
    return pairs


@dataclass
class LocalInterest:
    """The subscriptions of this worker's clients, counted per (workspace, event type)."""

    worker_id: str
    #: subscriber address -> (its workspace, the event types it subscribed to).
    _subscribers: dict[str, tuple[str, frozenset[str]]] = field(default_factory=dict)
    _counts: dict[Pair, int] = field(default_factory=dict)

    def pairs(self) -> list[Pair]:
        return sorted(self._counts)

    def set(self, address: str, workspace: str, event_types: Iterable[str]) -> InterestUpdate:
        """``address`` (of ``workspace``) now subscribes to ``event_types``; returns the change
        for the peers (empty if no pair appeared or vanished)."""
        new = frozenset(event_types)
        _, old = self._subscribers.get(address, (workspace, frozenset()))
        if new:
            self._subscribers[address] = (workspace, new)
        else:
            self._subscribers.pop(address, None)
        added = [(workspace, t) for t in sorted(new - old) if self._count(workspace, t, +1) == 1]
        removed = [(workspace, t) for t in sorted(old - new) if self._count(workspace, t, -1) == 0]
        return InterestUpdate(self.worker_id, tuple(added), tuple(removed))

    def drop(self, address: str) -> InterestUpdate:
        """``address`` left this worker."""
        entry = self._subscribers.get(address)
        if entry is None:
            return InterestUpdate(self.worker_id)
        return self.set(address, entry[0], ())

    def __contains__(self, address: object) -> bool:
        return address in self._subscribers

    def full(self) -> InterestUpdate:
        """The whole set, for a peer on a new link."""
        return InterestUpdate(self.worker_id, tuple(self.pairs()), full=True)

    def _count(self, workspace: str, event_type: str, delta: int) -> int:
        pair = (workspace, event_type)
        count = self._counts.get(pair, 0) + delta
        if count > 0:
            self._counts[pair] = count
        else:
            self._counts.pop(pair, None)
        return count


class PeerInterest:
    """What each peer worker has subscribers for, indexed by workspace and event type."""

    def __init__(self) -> None:
        self._by_peer: dict[str, set[Pair]] = {}
        #: workspace -> event type -> the peers with a subscriber (nested: no tuple per lookup).
        self._index: dict[str, dict[str, set[str]]] = {}

    def peers_for(self, workspace: str, event_type: str) -> Collection[str]:
        by_type = self._index.get(workspace)
        if by_type is None:
            return ()
        return by_type.get(event_type, ())

    def pairs_of(self, worker_id: str) -> set[Pair]:
        return set(self._by_peer.get(worker_id, ()))

    def apply(self, update: InterestUpdate) -> None:
        peer = update.worker_id
        if update.full:
            self.forget(peer)
        pairs = self._by_peer.setdefault(peer, set())
        for pair in update.removed:
            if pair in pairs:
                pairs.discard(pair)
                self._unindex(peer, pair)
        for pair in update.added:
            if pair not in pairs:
                pairs.add(pair)
                self._index.setdefault(pair[0], {}).setdefault(pair[1], set()).add(peer)

    def forget(self, worker_id: str) -> None:
        """The peer is gone (or about to say its whole set again)."""
        for pair in self._by_peer.pop(worker_id, ()):
            self._unindex(worker_id, pair)

    def _unindex(self, peer: str, pair: Pair) -> None:
        workspace, event_type = pair
        by_type = self._index.get(workspace)
        if by_type is None:
            return
        peers = by_type.get(event_type)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del by_type[event_type]
                if not by_type:
                    del self._index[workspace]

    def stats(self) -> dict[str, int]:
        """Pairs per peer (``peer_interest`` in a worker's stats)."""
        return {peer: len(pairs) for peer, pairs in self._by_peer.items()}
