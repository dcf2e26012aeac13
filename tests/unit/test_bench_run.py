"""benchmarks/run.py's repeats: the pairs take turns pass by pass until their passes have lasted
the case's minimum length, and report.merge_passes makes one run of each pair's passes of a repeat
(an in-process harness: no sockets, no servers; the orchestration only)."""

from __future__ import annotations

import asyncio

from benchmarks import report
from benchmarks.clients import RawClients
from benchmarks.contenders import ProcessProbe, Rhizomorph
from benchmarks.run import Harness, Pair, Progress, another_round, rotation, run_case
from benchmarks.scenarios import CONCURRENT, Case, Scenario

SCENARIO = Scenario("small", 4, size=256, modes=(CONCURRENT,))
PASS_S = 0.01


class Rig:
    async def close(self) -> None:
        pass


async def open_rig(pair, case, payloads):
    return Rig()


async def measure(rig, case, payloads, probe, timeout):
    await asyncio.sleep(PASS_S)
    n = len(payloads)
    return {
        "case": case.id,
        "messages": n,
        "delivered": n,
        "errors": 0,
        "payload_bytes": 512 * n,
        "elapsed_s": PASS_S,
        "msgs_per_s": n / PASS_S,
        "mb_per_s": 512 * n / PASS_S / 1e6,
        "latency_p50_ms": 1.0,
        "latency_p99_ms": 2.0,
        "server_cpu_s": 0.001,
        "server_rss_mb": 50.0,
        "client_cpu_s": 0.002,
        "timed_out": False,
    }


HARNESS = Harness(open_rig=open_rig, measure=measure, probe=lambda pair, pairs: ProcessProbe([]), kind="claim")


def pairs() -> list[Pair]:
    return [Pair(Rhizomorph(1, name=name), RawClients()) for name in ("a", "b", "c")]


async def run_repeats(min_run_s: float, repeats: int = 2) -> tuple[list[dict], Progress]:
    records: list[dict] = []
    progress = Progress(3 * repeats, enabled=False)
    await run_case(Case(SCENARIO, CONCURRENT, min_run_s), pairs(), repeats, 10.0, records.append, progress, HARNESS)
    return records, progress


def test_another_round_until_the_average_reaches_the_minimum():
    assert another_round([0.5, 1.0], 1.0) and not another_round([0.5, 1.5], 1.0)
    assert not another_round([0.2, 0.3], 0.0)  # no minimum: one round
    assert not another_round([], 5.0)


async def test_one_pass_per_pair_and_repeat_without_a_minimum():
    records, progress = await run_repeats(0.0)
    assert [(r["repeat"], r["pass"], r["contender"]) for r in records] == [
        (0, 0, "a"), (0, 0, "b"), (0, 0, "c"), (1, 0, "b"), (1, 0, "c"), (1, 0, "a"),
    ]  # fmt: skip
    assert progress.done == 6


async def test_pairs_take_turns_pass_by_pass_until_the_minimum():
    records, progress = await run_repeats(0.1)
    for repeat in (0, 1):
        mine = [r for r in records if r["repeat"] == repeat]
        passes = len(mine) // 3
        assert passes > 1 and len(mine) == 3 * passes
        order = ["a", "b", "c"] if repeat == 0 else ["b", "c", "a"]
        assert [(r["pass"], r["contender"]) for r in mine] == [(p, c) for p in range(passes) for c in order]
    assert progress.done == 6  # one step per run, whatever its passes

    runs = report.merge_passes(records)
    assert len(runs) == 6
    for run in runs:
        passes = sum(1 for r in records if (r["contender"], r["repeat"]) == (run["contender"], run["repeat"]))
        assert run["passes"] == passes and "pass" not in run
        assert run["messages"] == run["delivered"] == 4 * passes
        assert abs(run["elapsed_s"] - PASS_S * passes) < 1e-9 and run["payload_bytes"] == 2048 * passes
        assert abs(run["mb_per_s"] - 2048 / PASS_S / 1e6) < 1e-6 and run["latency_p50_ms"] == 1.0


async def test_new_repeat_renews_every_rig_before_each_repeat_but_the_first():
    renewed: list[tuple[Rig, int]] = []
    records: list[dict] = []

    async def new_repeat(rig):
        renewed.append((rig, sum(1 for r in records if r["kind"] == "claim")))

    harness = Harness(open_rig=open_rig, measure=measure, probe=HARNESS.probe, kind="claim", new_repeat=new_repeat)
    progress = Progress(9, enabled=False)
    await run_case(Case(SCENARIO, CONCURRENT, 0.0), pairs(), 3, 10.0, records.append, progress, harness)
    assert len(records) == 9  # the warm-up after a renewal is not a record
    assert [emitted for _, emitted in renewed] == [3, 3, 3, 6, 6, 6]  # after each repeat's 3 runs
    assert len({id(rig) for rig, _ in renewed}) == 3  # each pair's rig, once per later repeat


def test_the_first_place_of_a_repeat_spreads_over_every_pair():
    assert [rotation(r, 5, 8) for r in range(5)] == [0, 1, 3, 4, 6]
    assert [rotation(r, 3, 3) for r in range(3)] == [0, 1, 2]
    assert sorted({rotation(r, 16, 8) for r in range(16)}) == list(range(8))
    assert rotation(0, 1, 0) == 0  # no pair set up
