"""The benchmark harness, end to end at tiny counts: the session's router against the bare relay."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import report
from benchmarks.contenders import BareRelay, Rhizomorph, Started
from benchmarks.loadgen import LoadProcess
from benchmarks.run import run_suite_to_file
from benchmarks.scenarios import SUITES

RESULT_KEYS = {
    "contender",
    "client",
    "repeat",
    "case",
    "scenario",
    "mode",
    "messages",
    "delivered",
    "errors",
    "payload_bytes",
    "elapsed_s",
    "msgs_per_s",
    "mb_per_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "server_cpu_s",
    "server_rss_mb",
    "client_cpu_s",
    "timed_out",
}


@pytest.fixture
def bare_relay():
    relay = BareRelay()
    relay.start()
    yield relay
    relay.stop()


def test_smoke_suite_runs_every_case_on_every_pair(ray_runtime, router, bare_relay, tmp_path):
    suite = SUITES["smoke"]
    rhizomorph = Rhizomorph(1, deployment=router)
    rhizomorph.start()  # wraps the running router (the relay fixture is already up: starting it again would leak it)
    contenders = [rhizomorph, bare_relay]
    # As `python -m benchmarks.run` does: the clients run in a load process of their own.
    sink = tmp_path / "records.jsonl"
    with LoadProcess() as load:
        load.run(
            run_suite_to_file,
            suite.cases(),
            [Started(c) for c in contenders],
            ["raw", "hypha-rpc", "v4"],
            1,
            suite.run_timeout,
            sink,
            {"run_id": "smoke"},
        )
    records = [json.loads(line) for line in sink.read_text().splitlines()]

    assert [r for r in records if r["kind"] == "error"] == []
    skipped = {(r["case"], r["contender"], r["client"]) for r in records if r["kind"] == "skip"}
    # emit does not chunk 2 MB events, with either client; the relay speaks only the raw wire.
    assert skipped == {("large/events", "rhizomorph-1w", "hypha-rpc"), ("large/events", "rhizomorph-1w", "v4")}
    results = [r for r in records if r["kind"] == "result"]
    expected = {
        (c.id, name, client)
        for c in suite.cases()
        for name, client in (
            ("rhizomorph-1w", "raw"),
            ("rhizomorph-1w", "hypha-rpc"),
            ("rhizomorph-1w", "v4"),
            ("bare-relay", "raw"),
        )
    }
    assert {(r["case"], r["contender"], r["client"]) for r in results} == expected - skipped

    for r in results:
        where = f"{r['case']} {r['contender']} [{r['client']}]"
        assert RESULT_KEYS <= r.keys(), where
        assert r["delivered"] == r["messages"] > 0 and r["errors"] == 0 and not r["timed_out"], where
        assert r["msgs_per_s"] > 0 and r["mb_per_s"] > 0 and r["payload_bytes"] > 0, where
        assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"] < 20_000, where
        assert r["server_cpu_s"] >= 0 and r["server_rss_mb"] > 10, where
    fanout = next(r for r in results if r["scenario"].startswith("fanout") and r["client"] == "raw")
    assert fanout["messages"] == 3 * 10  # every subscriber got every event

    path = tmp_path / "smoke.jsonl"
    path.write_text(
        "".join(
            json.dumps({"run_id": "smoke", "suite": "smoke", **r}) + "\n"
            for r in [{"kind": "meta", "machine": {}, "repeats": 1}, *records]
        )
    )
    written = report.write_reports(path, plots=False)
    markdown = written[0].read_text()
    assert "1w / bare relay (raw)" in markdown and "v4 / v3 (hypha-rpc, 1w)" in markdown
    assert "fanin-4/sequential" in markdown
    rows = report.aggregate(results)
    ratio = report._ratio(
        *(
            next(
                r.msgs_per_s for r in rows if r.case == "small/sequential" and r.contender == name and r.client == "raw"
            )
            for name in ("rhizomorph-1w", "bare-relay")
        )
    )
    assert math.isfinite(ratio.median) and ratio.median > 0


def test_dedicated_benchmarks_run_at_tiny_counts(ray_runtime, router, router2, bare_relay):
    # bench_large, bench_batching and bench_workers, through the functions their main() uses.
    from benchmarks import bench_batching, bench_large, bench_workers

    with LoadProcess() as load:
        for connect in (bench_large.connect_v3, bench_large.connect_v4):
            assert load.run(bench_large.echo_rate, router.url, connect, 300_000, 2) > 0
        for deployment, placement in ((router, "kernel"), (router2, "cross")):
            rate, crossed = load.run(bench_workers.run_pairs, deployment.url, 2, 40, 64, 10, placement)
            assert rate > 0 and 0 <= crossed <= 2
    rates = bench_batching.compare(router, bare_relay.url, 40, 64, 1)
    assert set(rates) == {"hypha-rpc on", "hypha-rpc off", "raw on", "raw off", "bare relay"}
    assert all(len(values) == 1 and values[0] > 0 for values in rates.values())
    assert all(s["batch_policy"]["enabled"] for s in router.stats())  # compare() turned batching back on


def test_claims_table_runs_at_tiny_counts(ray_runtime, router2, tmp_path):
    # The batching report's table (bench_claims) as `python -m benchmarks.run` runs it: every case
    # on rhizomorph with default batching (2 workers: caller and provider on different ones) and
    # with batching off, each with v3 and v4 clients, the provider in a process of its own.
    from benchmarks.bench_claims import DEFAULT, NO_BATCHING, run_claims_to_file, select_cases
    from benchmarks.scenarios import CLAIM_SUITES

    suite = CLAIM_SUITES["smoke"]
    on = Rhizomorph(2, name=DEFAULT, deployment=router2)
    off = Rhizomorph(1, name=NO_BATCHING, enable_message_batching=False)
    on.start()
    off.start()
    try:
        assert (on.batching, off.batching) == (True, False) and on.ray_session
        off_pids = set(off.server_pids())
        sink = tmp_path / "claims.jsonl"
        sink.write_text(json.dumps({"kind": "meta", "run_id": "claims", "suite": "smoke", "machine": {}}) + "\n")
        with LoadProcess() as load:
            load.run(
                run_claims_to_file,
                select_cases(suite, None),
                [Started(on), Started(off)],
                ["hypha-rpc", "v4"],
                1,
                suite.run_timeout,
                sink,
                {"run_id": "claims"},
            )
    finally:
        off.stop()
    records = [json.loads(line) for line in sink.read_text().splitlines()]

    assert [r for r in records if r["kind"] in ("claim-error", "claim-skip")] == []
    claims = [r for r in records if r["kind"] == "claim"]
    pairs = {(DEFAULT, "hypha-rpc"), (DEFAULT, "v4"), (NO_BATCHING, "hypha-rpc"), (NO_BATCHING, "v4")}
    assert {(r["case"], r["contender"], r["client"]) for r in claims} == {
        (c.id, *p) for c in suite.cases() for p in pairs
    }
    for r in claims:
        where = f"{r['case']} {r['contender']} [{r['client']}]"
        assert RESULT_KEYS <= r.keys(), where
        assert r["delivered"] == r["messages"] > 0 and r["errors"] == 0 and not r["timed_out"], where
        assert r["mb_per_s"] > 0 and r["server_cpu_s"] >= 0 and r["provider_cpu_s"] >= 0, where
        wire = 4 if r["client"] == "v4" else 3
        assert r["wire_protocol"] == {"caller": wire, "provider": wire}, where
    # The router's probe counts Ray's own processes too (GCS, raylet, ...), not only the router's
    # actors, and not the other router's.
    idle = next(r for r in records if r["kind"] == "claims-idle")
    assert idle["contender"] == DEFAULT and idle["cpu_share_of_core"] >= 0
    assert set(on.server_pids()) < set(idle["pids"]) and not off_pids & set(idle["pids"])
    for r in claims:  # a burst has every call of its run in flight at once
        assert r["in_flight"] == (r["messages"] if r["mode"] == "burst" else min(32, r["messages"])), r["case"]

    meta, claim_records, extra = report.load_claims(sink)
    markdown = report.claims_markdown(meta, claim_records, extra)
    for title in ("v3 clients, batching on / off", "v4 client, batching on / off", "v4 on / v3 on"):
        row = next(line for line in markdown.splitlines() if line.startswith(f"| {title} |"))
        assert row.count("**") == 2 * 4, row  # a measured ratio in each of the four scenarios
    assert "vs claimed +48 %" in markdown and "router CPU per call" in markdown
    assert markdown.count("**reached**") + markdown.count("**not reached**") >= 4


def test_performance_md_carries_the_dashboard_table(tmp_path):
    page = tmp_path / "dashboard.md"
    page.write_text("# Title\n\nHow it ran.\n\n| page | calls/s |\n|---|---|\n| v4 | 302 |\n\nWhat it shows.\n")
    section = report.dashboard_markdown(page)
    assert section is not None and section.startswith("## Browser dashboard")
    assert "| page | calls/s |\n|---|---|\n| v4 | 302 |\n" in section and "What it shows" not in section
    page.write_text("no table yet\n")
    assert report.dashboard_markdown(page) is None
    assert "| v4 |" in (report.dashboard_markdown() or "")  # the committed page has its table
