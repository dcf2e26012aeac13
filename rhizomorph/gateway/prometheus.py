"""``/metrics``: the router's stats in the Prometheus text format (pure: stats in, bytes out).

Every worker answers for the whole router (it gathers its peers' stats first), so a scrape
that lands on any worker behind the shared port sees all of them, labelled by ``worker``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _StatsCollector:
    def __init__(self, workers: list[dict[str, Any]]) -> None:
        self._workers = workers

    def collect(self) -> Iterable[Any]:
        def family(kind: type, name: str, doc: str, extra: tuple[str, ...] = ()) -> Any:
            return kind(name, doc, labels=("worker",) + extra)

        connections = family(GaugeMetricFamily, "rhizomorph_connections", "Connected clients")
        depth = family(GaugeMetricFamily, "rhizomorph_queue_depth", "Messages waiting in delivery queues")
        frames_in = family(CounterMetricFamily, "rhizomorph_frames_in", "Frames received from clients")
        bytes_in = family(CounterMetricFamily, "rhizomorph_bytes_in", "Bytes received from clients")
        messages_out = family(CounterMetricFamily, "rhizomorph_messages_out", "Messages delivered to clients")
        bytes_out = family(CounterMetricFamily, "rhizomorph_bytes_out", "Bytes delivered to clients")
        flushes = family(CounterMetricFamily, "rhizomorph_flushes", "Batch flushes by reason", ("reason",))
        streams = family(CounterMetricFamily, "rhizomorph_chunk_streams", "Chunk streams opened (API v4)")
        refused = family(
            CounterMetricFamily,
            "rhizomorph_refused",
            "Undeliverable messages answered to their sender, by kind",
            ("kind",),
        )
        disconnects = family(
            CounterMetricFamily, "rhizomorph_disconnects", "Closed connections by close code", ("code",)
        )
        evicted = family(CounterMetricFamily, "rhizomorph_evicted", "Slow consumers evicted")
        peer_calls = family(CounterMetricFamily, "rhizomorph_peer_calls", "Ray calls to peer workers", ("peer",))
        peer_frames = family(CounterMetricFamily, "rhizomorph_peer_frames", "Frames carried to peer workers", ("peer",))
        batch_sizes = family(HistogramMetricFamily, "rhizomorph_batch_size", "Messages per flush")
        for stats in self._workers:
            worker = stats["worker_id"]
            totals = stats.get("totals", {})
            connections.add_metric([worker], stats.get("connections", 0))
            depth.add_metric([worker], totals.get("depth", 0))
            frames_in.add_metric([worker], stats.get("frames_in", 0))
            bytes_in.add_metric([worker], stats.get("bytes_in", 0))
            messages_out.add_metric([worker], totals.get("messages", 0))
            bytes_out.add_metric([worker], totals.get("bytes", 0))
            for reason, count in totals.get("reasons", {}).items():
                flushes.add_metric([worker, reason], count)
            streams.add_metric([worker], stats.get("streams_opened", 0))
            for kind, count in stats.get("refused", {}).items():
                refused.add_metric([worker, kind], count)
            for code, count in stats.get("disconnects", {}).items():
                disconnects.add_metric([worker, code], count)
            evicted.add_metric([worker], stats.get("evicted", 0))
            for peer, count in stats.get("peer_calls", {}).items():
                peer_calls.add_metric([worker, peer], count)
            for peer, count in stats.get("peer_frames", {}).items():
                peer_frames.add_metric([worker, peer], count)
            batch_sizes.add_metric(
                [worker], _cumulative(totals.get("batch_sizes", {})), sum_value=totals.get("messages", 0)
            )
        yield from (
            connections,
            depth,
            frames_in,
            bytes_in,
            messages_out,
            bytes_out,
            flushes,
            streams,
            refused,
            disconnects,
            evicted,
            peer_calls,
            peer_frames,
            batch_sizes,
        )


def _cumulative(sizes: dict[str, int]) -> list[tuple[str, float]]:
    """Per-bucket flush counts (keyed by upper bound) as Prometheus' cumulative buckets."""
    bounds = sorted((float(b), n) for b, n in sizes.items() if b != "+Inf")
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in bounds:
        running += count
        buckets.append((f"{bound:g}", running))
    buckets.append(("+Inf", running + sizes.get("+Inf", 0)))
    return buckets


def render(workers: list[dict[str, Any]]) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_StatsCollector(workers))
    return generate_latest(registry)
