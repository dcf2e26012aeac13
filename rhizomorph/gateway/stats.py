"""A worker's counters and the stats it reports (``get_router_stats``, ``/metrics``)."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Any

from rhizomorph.gateway.clients import Clients
from rhizomorph.protocol.batching import BatchMetrics, BatchPolicy


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
    disconnects: Counter[str] = dataclasses.field(default_factory=Counter)  # closed connections, by code
    #: Delivery counts of clients that left, so totals stay monotonic.
    departed: BatchMetrics = dataclasses.field(default_factory=BatchMetrics)


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
        "disconnects": dict(counters.disconnects),
        "totals": _delivery_totals(counters, clients),
        "targets": {conn.address: conn.queue.metrics() for conn in clients},
    }


def _delivery_totals(counters: Counters, clients: Clients) -> dict[str, Any]:
    """Delivery counts since the worker started: clients that left plus those connected."""
    totals = BatchMetrics()
    totals.merge(counters.departed)
    depth = 0
    for conn in clients:
        totals.merge(conn.queue.batch_metrics)
        depth += conn.queue.depth
    result = totals.as_dict()
    result.update(targets=len(clients), depth=depth)
    return result
