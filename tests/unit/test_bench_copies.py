"""bench_claims --copies: every rhizomorph setting started several times in a balanced order, and
benchmarks/report.py pooling a setting's copies per repeat before its ratios, with the identical
routers' copy 1 / copy 2 row and the never-slower verdict judged against it (synthetic records)."""

from __future__ import annotations

import statistics

import pytest

from benchmarks import bench_claims, report
from benchmarks.contenders import BareRelay
from benchmarks.report import DEFAULT, HYPHA_RPC, NO_BATCHING, V4
from tests.unit.test_bench_report import MODES, REPEATS, SCENARIOS, record

MACHINE = (1.0, 0.5, 2.0, 0.8, 1.3)
#: MiB/s of each router, times the machine's factor of the repeat: batching on 0.99 of off (a loss
#: smaller than the identical routers' difference), copy 1 of on 8 % slower than copy 2.
SPEED = {
    (DEFAULT, 1): 0.92 * 0.99,
    (NO_BATCHING, 1): 1.00,
    (NO_BATCHING, 2): 1.00,
    (DEFAULT, 2): 1.00 * 0.99,
}


def name(setting: str, copy: int) -> str:
    return setting if copy == 1 else f"{setting}#{copy}"


def copy_records(speed: dict[tuple[str, int], float] = SPEED) -> list[dict]:
    return [
        record(s, m, name(setting, copy), client, r, 10.0 * MACHINE[r] * factor)
        for s in SCENARIOS
        for m in MODES
        for r in range(REPEATS)
        for (setting, copy), factor in speed.items()
        for client in (HYPHA_RPC, V4)
    ]


def test_copy_names_split_into_setting_and_number():
    assert report.copy_of("rhizomorph") == ("rhizomorph", 1)
    assert report.copy_of("rhizomorph-no-batching#2") == ("rhizomorph-no-batching", 2)
    assert report.copy_of("rhizomorph#12") == ("rhizomorph", 12)
    assert report.copy_of("odd#name") == ("odd#name", 1)


def test_copies_start_in_a_balanced_order_with_the_same_config():
    hypha = BareRelay()  # any contender that is not a rhizomorph router
    routers = bench_claims.claim_contenders()
    started = bench_claims.with_copies([*routers, hypha], 2)
    assert [c.name for c in started[:-1]] == [DEFAULT, NO_BATCHING, f"{NO_BATCHING}#2", f"{DEFAULT}#2"]
    assert started[0] is routers[0] and started[-1] is hypha
    assert started[2].config == routers[1].config == {"enable_message_batching": False}
    assert [c.name for c in bench_claims.with_copies(routers, 1)] == [DEFAULT, NO_BATCHING]
    three = [c.name for c in bench_claims.with_copies(routers, 3)]
    assert three[4:] == [f"{DEFAULT}#3", f"{NO_BATCHING}#3"]


def test_pooling_sums_payload_and_time_over_a_settings_copies():
    one = record("small", "burst", DEFAULT, V4, 0, 3.0, elapsed_s=1.0)  # 6 MiB (3 MiB/s over 2 s) in 1 s
    two = record("small", "burst", f"{DEFAULT}#2", V4, 0, 3.0, elapsed_s=3.0)  # 6 MiB in 3 s
    other = record("small", "burst", NO_BATCHING, V4, 0, 5.0)
    pooled = {r["contender"]: r for r in report.pool_copies([one, two, other])}
    assert set(pooled) == {DEFAULT, NO_BATCHING}
    assert report.mib_per_s(pooled[DEFAULT]) == pytest.approx(12.0 / 4.0)  # not the mean of 6 and 2
    assert pooled[DEFAULT]["passes"] == 4 and pooled[DEFAULT]["copies"] == 2
    assert pooled[DEFAULT]["delivered"] == 8000
    assert report.mib_per_s(pooled[NO_BATCHING]) == pytest.approx(5.0)
    assert report.pool_copies([other]) == [other]  # a run without copies as it was


def test_the_table_pools_the_copies_and_adds_the_identical_routers_row():
    records = copy_records()
    copies, cells = report.claim_cells(records), report.claim_cells(report.pool_copies(records))
    on_off = report.claim_ratio(cells, report.CLAIM_RATIOS[0], "small", MODES)[0]
    assert on_off.median == pytest.approx((0.92 + 1.0) / 2 * 0.99)  # equal times: the mean of the copies
    table = report.claims_table(cells, copies)
    row = table.splitlines()[-1]
    assert row.startswith("| *identical routers, copy 1 / copy 2* |")
    # copy 1 / copy 2: 0.92 for batching on, 1.00 off, for both clients in every cell
    assert row.count(f"**{statistics.median([0.92, 0.92, 1.0, 1.0]):.2f}** (0.92–1.00)") == len(SCENARIOS)
    assert report.claims_mode_table(cells, copies).splitlines()[-1].startswith("| *identical routers")
    assert "identical routers" not in report.claims_table(cells)


def test_a_cell_below_one_is_judged_against_the_identical_routers():
    records = copy_records()
    copies, cells = report.claim_cells(records), report.claim_cells(report.pool_copies(records))
    assert report.copy_floor(copies, "small", "burst") == pytest.approx(1 / 0.92)
    never = report.claims_targets(cells, copies)[-1]
    assert never.startswith("- never slower (item 3)") and "**within the noise**" in never
    assert "0 of 16 cells ≥ 1.0, 16 below within" in never
    assert "v3 clients small/burst 0.95 (within ±9 %)" in never
    without = report.claims_targets(cells)[-1]  # no copies given: no noise floor, the old verdict
    assert "**not reached**, below 1.0: v3 clients small/32 in flight" in without


def test_the_verdict_cases():
    cell = "small/burst"
    assert report.every_cell_verdict({}, {}) == "not measured"
    assert report.every_cell_verdict({("v4 client", cell): 1.01}, {cell: 1.05}) == "**reached** (1 of 1 cells ≥ 1.0)"
    beyond = report.every_cell_verdict({("v4 client", cell): 0.90, ("v4 client", "large/burst"): 1.2}, {cell: 1.05})
    assert beyond.startswith("**not reached** (1 of 2 cells ≥ 1.0, 0 below within")
    assert beyond.endswith("v4 client small/burst 0.90 (beyond ±5 %)")
    within = report.every_cell_verdict({("v4 client", cell): 0.996}, {cell: 1.05})
    assert within == (
        "**within the noise** (0 of 1 cells ≥ 1.0, 1 below within the identical routers' spread),"
        " below 1.0: v4 client small/burst 0.996 (within ±5 %)"  # three digits where two would say 1.00
    )
    unknown = report.every_cell_verdict({("", cell): 0.99}, {cell: None})
    assert unknown.startswith("**not reached**")
    assert unknown.endswith("small/burst 0.99 (no identical routers measured)")


def test_copies_are_refused_with_trees(tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench_claims.main(["--trees", "HEAD", "HEAD~1", "--copies", "2", "--out", str(tmp_path)])
    assert "--copies is not for --trees runs" in capsys.readouterr().err
