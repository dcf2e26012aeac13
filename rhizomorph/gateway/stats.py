"""A worker's counters and the stats it reports (``get_router_stats``, ``/metrics``)."""

from __future__ import annotations

import array
import dataclasses
import os
from collections import Counter
from typing import Any

from rhizomorph.gateway.clients import Clients
from rhizomorph.protocol.batching import BATCH_SIZE_BUCKETS, FLUSH_REASONS, BatchMetrics, BatchPolicy

# Why the counts a departure adds to are unboxed, with their slots made at start: an int (or a
# close code's name) made at each departure of a wave, the last one kept, would sit in one of the
# wave's arenas and keep it (rhizomorph/gateway/memory.py).

#: The close codes that get a slot at start (others get one when first seen); ``None``: no code.
COMMON_CLOSE_CODES = (1000, 1001, 1005, 1006, 1008, 1009, 1011, 1012, None)


class CloseCodes:
    """Closed connections by close code, as ``{"1000": count, "none": count}``."""

    def __init__(self) -> None:
        self._slots: dict[int | None, int] = {code: slot for slot, code in enumerate(COMMON_CLOSE_CODES)}
        self._counts = array.array("q", bytes(8 * len(COMMON_CLOSE_CODES)))

    def add(self, code: int | None) -> None:
        slot = self._slots.get(code)
        if slot is None:
            slot = self._slots[code] = len(self._counts)
            self._counts.append(0)
        self._counts[slot] += 1

    def as_dict(self) -> dict[str, int]:
        counts = self._counts
        return {str(code or "none"): counts[slot] for code, slot in self._slots.items() if counts[slot]}


_SCALARS = 5  # messages, batched_messages, flushes, bytes, max_depth; then reasons, then size buckets
_BUCKETS = (*BATCH_SIZE_BUCKETS, float("inf"))
_BUCKET_SLOT = {bucket: _SCALARS + len(FLUSH_REASONS) + i for i, bucket in enumerate(_BUCKETS)}


class DepartedTotals:
    """The delivery counts (``BatchMetrics``) of the clients that left, summed."""

    def __init__(self) -> None:
        self._counts = array.array("q", bytes(8 * (_SCALARS + len(FLUSH_REASONS) + len(_BUCKETS))))

    def merge(self, metrics: BatchMetrics) -> None:
        counts = self._counts
        counts[0] += metrics.messages
        counts[1] += metrics.batched_messages
        counts[2] += metrics.flushes
        counts[3] += metrics.bytes
        if metrics.max_depth > counts[4]:
            counts[4] = metrics.max_depth
        for slot, reason in enumerate(FLUSH_REASONS, _SCALARS):
            counts[slot] += metrics.reasons.get(reason, 0)
        for bucket, flushes in metrics.sizes.items():
            counts[_BUCKET_SLOT[bucket]] += flushes

    def metrics(self) -> BatchMetrics:
        counts = self._counts
        reasons = Counter({r: counts[slot] for slot, r in enumerate(FLUSH_REASONS, _SCALARS) if counts[slot]})
        sizes = Counter({b: counts[slot] for b, slot in _BUCKET_SLOT.items() if counts[slot]})
        return BatchMetrics(
            messages=counts[0],
            batched_messages=counts[1],
            flushes=counts[2],
            bytes=counts[3],
            reasons=reasons,
            sizes=sizes,
            max_depth=counts[4],
        )


@dataclasses.dataclass
class Counters:
    frames_in: int = 0
    bytes_in: int = 0
    dropped: int = 0
    evicted: int = 0
    registry_lookups: int = 0
    #: Calls to unknown targets refused without a lookup: the registry just said "nobody"
    #: (``lookups_cached``), or the sending connection was over its lookup budget (``lookups_denied``).
    lookups_cached: int = 0
    lookups_denied: int = 0
    refused: Counter[str] = dataclasses.field(default_factory=Counter)  # undeliverable answered, by kind
    disconnects: CloseCodes = dataclasses.field(default_factory=CloseCodes)  # closed connections, by code
    #: Delivery counts of clients that left, so totals stay monotonic.
    departed: DepartedTotals = dataclasses.field(default_factory=DepartedTotals)


def snapshot(
    worker_id: str,
    counters: Counters,
    clients: Clients,
    *,
    peers: dict[str, dict[str, Any]],
    batch_policy: BatchPolicy,
    streams_opened: int,
) -> dict[str, Any]:
    """One worker's stats, as ``rhizomorph/gateway/prometheus.py`` renders them."""
    return {
        "worker_id": worker_id,
        "pid": os.getpid(),
        "connections": len(clients),
        "clients": clients.addresses(),
        "dropped": counters.dropped,
        "evicted": counters.evicted,
        "streams_opened": streams_opened,
        **peers,
        "batch_policy": dataclasses.asdict(batch_policy),
        "frames_in": counters.frames_in,
        "registry_lookups": counters.registry_lookups,
        "lookups_cached": counters.lookups_cached,
        "lookups_denied": counters.lookups_denied,
        "bytes_in": counters.bytes_in,
        "refused": dict(counters.refused),
        "disconnects": counters.disconnects.as_dict(),
        "totals": _delivery_totals(counters, clients),
        "targets": {conn.address: conn.queue.metrics() for conn in clients},
    }


def _delivery_totals(counters: Counters, clients: Clients) -> dict[str, Any]:
    """Delivery counts since the worker started: clients that left plus those connected."""
    totals = BatchMetrics()
    totals.merge(counters.departed.metrics())
    depth = 0
    for conn in clients:
        totals.merge(conn.queue.batch_metrics)
        depth += conn.queue.depth
    result = totals.as_dict()
    result.update(targets=len(clients), depth=depth)
    return result
