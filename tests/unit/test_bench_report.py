"""benchmarks/report.py's batching-report table from synthetic claims records: each cell's ratio is
computed per scenario from the runs of the same repeat, pooled over the modes."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from benchmarks import report
from benchmarks.report import DEFAULT, HYPHA_RPC, NO_BATCHING, V4

SCENARIOS = ("small", "medium", "large", "mixed")
MODES = ("concurrent", "burst")
REPEATS = 5
#: v3 clients' batching on / off per scenario, times a per-(mode, repeat) factor below.
ON_OFF = {"small": 1.40, "medium": 1.20, "large": 0.90, "mixed": 1.10}
FACTOR = {"concurrent": (0.90, 1.00, 1.05, 1.10, 0.95), "burst": (0.80, 1.20, 1.00, 0.98, 1.02)}
#: The off side's MiB/s moves with the "machine" from repeat to repeat; paired ratios must cancel it.
MACHINE = (1.0, 0.5, 2.0, 0.8, 1.3)


def record(scenario: str, mode: str, contender: str, client: str, repeat: int, mib_s: float, **extra) -> dict:
    elapsed = 2.0
    return {
        "kind": "claim",
        "case": f"{scenario}/{mode}",
        "scenario": scenario,
        "mode": mode,
        "contender": contender,
        "client": client,
        "repeat": repeat,
        "payload_bytes": mib_s * elapsed * report.MiB,
        "elapsed_s": elapsed,
        "messages": 4000,
        "delivered": 4000,
        "passes": 2,
        "timed_out": False,
        "msgs_per_s": 2000.0,
        "latency_p50_ms": 1.0,
        "server_cpu_s": 0.4,
        "client_cpu_s": 0.5,
        "provider_cpu_s": 0.3,
        **extra,
    }


def synthetic_records() -> list[dict]:
    records = []
    for s in SCENARIOS:
        for m in MODES:
            for r in range(REPEATS):
                off = 10.0 * MACHINE[r]
                records.append(record(s, m, NO_BATCHING, HYPHA_RPC, r, off))
                records.append(record(s, m, DEFAULT, HYPHA_RPC, r, off * ON_OFF[s] * FACTOR[m][r]))
                records.append(record(s, m, NO_BATCHING, V4, r, off))
                records.append(record(s, m, DEFAULT, V4, r, off * 1.5))
    random.Random(7).shuffle(records)  # the report must pair by repeat, not by order in the file
    return records


def expected_on_off(scenario: str) -> list[float]:
    return [ON_OFF[scenario] * FACTOR[m][r] for m in MODES for r in range(REPEATS)]


def test_v3_on_off_is_computed_per_scenario_from_paired_runs():
    cells = report.claim_cells(synthetic_records())
    spec = report.CLAIM_RATIOS[0]
    assert spec.title == "v3 clients, batching on / off"
    medians = {}
    for s in SCENARIOS:
        stat, complete = report.claim_ratio(cells, spec, s, MODES)
        wanted = expected_on_off(s)
        assert stat.median == pytest.approx(statistics.median(wanted))
        assert (stat.low, stat.high) == (pytest.approx(min(wanted)), pytest.approx(max(wanted)))
        assert complete
        medians[s] = stat.median
    assert len({round(v, 2) for v in medians.values()}) == len(SCENARIOS)  # one value per scenario, not one for all

    table = report.claims_table(cells)
    row = next(line for line in table.splitlines() if line.startswith("| v3 clients, batching on / off |"))
    for s in SCENARIOS:
        assert f"**{medians[s]:.2f}**" in row
    v4 = next(line for line in table.splitlines() if line.startswith("| v4 client, batching on / off |"))
    assert v4.count("**1.50** (1.50–1.50)") == len(SCENARIOS)


def test_per_mode_ratio_uses_only_that_modes_runs():
    cells = report.claim_cells(synthetic_records())
    spec = report.CLAIM_RATIOS[0]
    for s in SCENARIOS:
        for m in MODES:
            stat, _ = report.claim_ratio(cells, spec, s, [m])
            assert stat.median == pytest.approx(ON_OFF[s] * statistics.median(FACTOR[m]))


def test_a_repeat_measured_on_one_side_only_is_left_out():
    records = [r for r in synthetic_records() if not (r["contender"] == NO_BATCHING and r["repeat"] == 0)]
    cells = report.claim_cells(records)
    stat, _ = report.claim_ratio(cells, report.CLAIM_RATIOS[0], "small", MODES)
    wanted = [ON_OFF["small"] * FACTOR[m][r] for m in MODES for r in range(1, REPEATS)]
    assert stat.median == pytest.approx(statistics.median(wanted))


def test_spread_is_max_over_min_of_each_cells_paired_ratios():
    cells = report.claim_cells(synthetic_records())
    spread = report.claims_spread(cells)
    per_mode = {m: max(FACTOR[m]) / min(FACTOR[m]) for m in MODES}  # the scenario's factor cancels
    v3 = spread["v3 clients, batching on / off"]
    assert v3.median == pytest.approx(statistics.median(list(per_mode.values())))
    assert (v3.low, v3.high) == (pytest.approx(min(per_mode.values())), pytest.approx(max(per_mode.values())))
    assert spread["v4 client, batching on / off"].median == pytest.approx(1.0)
    assert "| v3 clients, batching on / off |" in report.claims_spread_markdown(cells)


def test_calls_per_run_counts_passes_and_losses():
    runs = [record("small", "burst", DEFAULT, V4, r, 1.0, passes=p, messages=2000 * p) for r, p in enumerate((3, 4))]
    runs[0]["delivered"] = 2000 * 3
    runs[1]["delivered"] = 2000 * 4
    assert report.calls_per_run(runs) == "2000 × 3–4"
    runs[1]["delivered"] -= 5
    runs[1]["timed_out"] = True
    assert report.calls_per_run(runs) == "⚠ 2000 × 3–4, 5 lost, 1 timed out"
    old = {k: v for k, v in runs[0].items() if k != "passes"}  # records from before passes: one each
    old["messages"] = old["delivered"] = 2000
    assert report.calls_per_run([old]) == "2000 × 1"


def test_merge_passes_sums_a_runs_passes():
    passes = [
        record("small", "burst", DEFAULT, V4, 0, 8.0, elapsed_s=1.0, messages=2000, delivered=2000, **{"pass": 0}),
        record("small", "burst", DEFAULT, V4, 0, 2.0, elapsed_s=3.0, messages=2000, delivered=1990, **{"pass": 1}),
        record("small", "burst", DEFAULT, V4, 1, 5.0, **{"pass": 0}),
    ]
    passes[0].update(payload_bytes=8.0 * report.MiB, latency_p50_ms=1.0, server_cpu_s=0.1)
    passes[1].update(payload_bytes=2.0 * report.MiB, latency_p50_ms=3.0, server_cpu_s=0.3, timed_out=True)
    first, second = report.merge_passes(passes)
    assert (first["repeat"], first["passes"], second["repeat"], second["passes"]) == (0, 2, 1, 1)
    assert (first["messages"], first["delivered"], first["elapsed_s"]) == (4000, 3990, 4.0)
    assert report.mib_per_s(first) == 2.5 and first["latency_p50_ms"] == 2.0 and first["timed_out"]
    assert first["server_cpu_s"] == pytest.approx(0.4) and "pass" not in first
    assert report.calls_per_run([first]) == "⚠ 2000 × 2, 10 lost, 1 timed out"


# -- before and after: several source trees in one run (bench_claims --trees) ----------------------
TREES = ("before", "after")
#: The after tree's MiB/s over the before tree's, per repeat (the machine factor cancels when paired).
AFTER = {"small": (1.00, 1.02, 0.98), "medium": (0.80, 0.82, 0.81), "large": (0.95, 1.05, 0.90), "mixed": (1.2,) * 3}


def tree_records(repeats: int = 3) -> list[dict]:
    records = []
    for s in SCENARIOS:
        for m in MODES:
            for r in range(repeats):
                base = 10.0 * MACHINE[r]
                for tree, factor in (("before", 1.0), ("after", AFTER[s][r])):
                    records.append(record(s, m, f"{DEFAULT}@{tree}", V4, r, base * factor))
                    records.append(record(s, m, f"{NO_BATCHING}@{tree}", V4, r, base * factor / 1.5))
            records.append(record(s, m, "hypha", HYPHA_RPC, 0, 5.0))  # of no tree
    random.Random(3).shuffle(records)
    return records


TREE_META = {"trees": [{"label": t, "spec": t, "source": f"/src/{t}", "commit": None} for t in TREES]}


def test_tree_names_split_into_contender_and_tree():
    assert report.tree_of("rhizomorph-no-batching@after", list(TREES)) == (NO_BATCHING, "after")
    assert report.tree_of("rhizomorph@a@b", ["b", "a@b"]) == (DEFAULT, "a@b")  # the longest label wins
    assert report.tree_of("hypha", list(TREES)) == ("hypha", None)
    by_tree = report.split_trees(tree_records(), list(TREES))
    assert set(by_tree) == {"before", "after", None}
    assert {r["contender"] for r in by_tree["after"]} == {DEFAULT, NO_BATCHING}


def test_each_later_tree_is_paired_with_the_first_per_cell_and_mode():
    ratios = report.tree_ratios(tree_records(), list(TREES))
    assert {(r.tree, r.contender, r.client) for r in ratios} == {("after", DEFAULT, V4), ("after", NO_BATCHING, V4)}
    assert len(ratios) == 2 * len(SCENARIOS) * len(MODES)  # hypha has no "before": no ratio
    for r in ratios:
        wanted = AFTER[r.scenario]
        assert r.ratio.median == pytest.approx(statistics.median(wanted))
        assert (r.ratio.low, r.ratio.high) == (pytest.approx(min(wanted)), pytest.approx(max(wanted)))
        assert r.spread == pytest.approx(max(wanted) / min(wanted))
        # medium: 0.81 × (0.82 / 0.80) < 1; large: 0.95 × (1.05 / 0.90) > 1 (noise); small, mixed: ≥ 1.
        assert r.regression == (r.scenario == "medium"), r


def test_trees_markdown_has_the_table_the_regressions_and_the_spread():
    records = tree_records()
    text = report.trees_markdown(TREE_META, records)
    row = next(line for line in text.splitlines() if line.startswith(f"| `after`: {DEFAULT} [{V4}] |"))
    assert row.count("**") == 2 * len(SCENARIOS) * len(MODES)
    assert "**0.81** (0.80–0.82)" in row and "**1.20** (1.20–1.20)" in row
    regressions = next(line for line in text.splitlines() if line.startswith("**Regressions**"))
    assert regressions.count("medium") == 2 * len(MODES) and "large" not in regressions
    assert "not judged" not in regressions
    medians = statistics.median(statistics.median(AFTER[s]) for s in SCENARIOS for _ in range(2 * len(MODES)))
    assert f"`after` / first over 16 cells: median of the cells' medians **{medians:.2f}** (cells 0.81–1.20)" in text
    # The usual table is the last tree's, its contenders under their plain names, Hypha included.
    full = report.claims_markdown(TREE_META, records, [])
    assert full.index("## The batching report's table") < full.index("## Before and after")
    v4_on_off = next(line for line in full.splitlines() if line.startswith("| v4 client, batching on / off |"))
    assert v4_on_off.count("**1.50** (1.50–1.50)") == len(SCENARIOS)
    assert "| small | 32 in flight | hypha [hypha-rpc] |" in full


def test_a_cell_of_fewer_than_three_repeats_is_not_judged():
    ratios = report.tree_ratios(tree_records(repeats=2), list(TREES))
    assert all(math.isnan(r.spread) and not r.regression for r in ratios)
    line = report.tree_regressions(ratios)
    assert line.endswith(f"none ({len(ratios)} of {len(ratios)} cells not judged: fewer than 3 repeats)")


def test_without_a_first_tree_measurement_there_is_no_ratio():
    records = [r for r in tree_records() if not r["contender"].endswith("@before")]
    assert report.tree_ratios(records, list(TREES)) == []
    assert "_No cell was measured on the first tree and a later one._" in report.trees_markdown(TREE_META, records)
    assert report.claims_markdown({}, tree_records(), []).count("## Before and after") == 0  # one tree: as ever
