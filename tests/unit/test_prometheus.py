"""rhizomorph/gateway/prometheus.py: worker stats rendered in the Prometheus text format, read back
by prometheus-client's own parser (no router: tests/test_metrics.py scrapes a running one)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from rhizomorph.gateway import prometheus


def value(samples: list, **labels: str) -> float:
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


def test_render_is_valid_prometheus_text_for_empty_and_busy_workers():
    busy = {
        "worker_id": "w0",
        "connections": 2,
        "frames_in": 5,
        "bytes_in": 50,
        "streams_opened": 1,
        "refused": {"reject": 2},
        "disconnects": {"1000": 3},
        "evicted": 0,
        "peer_calls": {"w1": 4},
        "peer_frames": {"w1": 9},
        "totals": {
            "messages": 12,
            "bytes": 300,
            "depth": 1,
            "reasons": {"idle": 3, "count": 1},
            "batch_sizes": {"1": 3, "10": 1, "+Inf": 0},
        },
    }
    families = {
        f.name: f for f in text_string_to_metric_families(prometheus.render([busy, {"worker_id": "w1"}]).decode())
    }
    buckets = {
        s.labels["le"]: s.value
        for s in families["rhizomorph_batch_size"].samples
        if s.name.endswith("_bucket") and s.labels["worker"] == "w0"
    }
    assert buckets == {"1": 3.0, "10": 4.0, "+Inf": 4.0}
    assert value(families["rhizomorph_refused"].samples, kind="reject") == 2
    assert value(families["rhizomorph_connections"].samples, worker="w1") == 0
