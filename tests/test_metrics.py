"""``/metrics`` of a running router, read by prometheus-client's own parser (the rendering alone:
tests/unit/test_prometheus.py)."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families


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
