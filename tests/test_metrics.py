"""``/metrics`` in the Prometheus text format, read by prometheus-client's own parser."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from rhizomorph.gateway import prometheus


def scrape(deployment) -> dict[str, list]:
    url = deployment.url.replace("ws://", "http://") + "/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert reply.headers["Content-Type"].startswith("text/plain")
        text = reply.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: list, **labels: str) -> float:
    return sum(s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items()))


async def test_metrics_count_traffic_of_every_worker(router2, connect):
    from hypha_rpc import connect_to_server

    before = await asyncio.to_thread(scrape, router2)
    server = await connect_to_server({"server_url": router2.url})
    await server.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
    echo = await server.get_service(f"{server.config.workspace}/{server.config.client_id}:echo")
    for i in range(20):
        assert await echo.echo(i) == i
    after = await asyncio.to_thread(scrape, router2)
    await server.disconnect()

    workers = {s.labels["worker"] for s in after["rhizomorph_connections"]}
    assert workers == set(router2.workers)  # any worker answers for all
    assert value(after["rhizomorph_frames_in"]) - value(before["rhizomorph_frames_in"]) >= 40
    assert value(after["rhizomorph_messages_out"]) - value(before["rhizomorph_messages_out"]) >= 40
    assert value(after["rhizomorph_flushes"], reason="idle") > value(before["rhizomorph_flushes"], reason="idle")
    histogram = after["rhizomorph_batch_size"]
    assert any(s.name == "rhizomorph_batch_size_bucket" and s.labels["le"] == "+Inf" for s in histogram)


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
