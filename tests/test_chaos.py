"""The chaos test: 200 released hypha-rpc clients call and emit while the launcher, the chunking
actor, the registry and a gateway worker are killed in turn (tests/chaos_run.py, in a subprocess
of its own: it runs a Ray cluster, which cannot share this session's process with its embedded
Ray). Asserted: no call hung, no service of a connected client lost, every client connected
again after each kill; and that each kill did what it says.
"""

from __future__ import annotations

import time
from typing import Any

import psutil
import pytest

from tests.chaos_clients import STAYED
from tests.helpers import run_for_results

MARKER = "CHAOS_RESULTS "  # as printed by tests/chaos_run.py (not imported: it sets up Ray auth)
RUN_TIMEOUT = 480


@pytest.fixture(scope="module")
def chaos() -> dict[str, Any]:
    results = run_for_results("tests.chaos_run", MARKER, RUN_TIMEOUT)
    assert "error" not in results, results["error"]
    print(summary(results))
    return results


def summary(results: dict[str, Any]) -> str:
    """The counts per phase, as docs/deploy.md quotes them."""
    rows = ["phase      completed rejected timed_out hung  recovered_s lost  events received/expected"]
    for phase in [*results["phases"], "all"]:
        kinds = results["counts"]["calls"].get(phase, {})
        total = {o: sum(k.get(o, 0) for k in kinds.values()) for o in ("completed", "rejected", "timed_out", "hung")}
        seen = results["phases"].get(phase, {})
        events = results["counts"]["events"].get(phase, {})
        rows.append(
            f"{phase:<10} {total['completed']:>9} {total['rejected']:>8} {total['timed_out']:>9} {total['hung']:>4}"
            f"  {seen.get('recovered_s', ''):>11} {seen.get('services_lost', ''):>4}"
            f"  {events.get('received', 0)}/{events.get('expected', 0)}"
        )
    return "\n".join(rows)


def outcomes(results: dict[str, Any], phase: str) -> dict[str, int]:
    """The calls of a phase by outcome, over every kind of call."""
    counted: dict[str, int] = {}
    for by_outcome in results["counts"]["calls"].get(phase, {}).values():
        for outcome, n in by_outcome.items():
            counted[outcome] = counted.get(outcome, 0) + n
    return counted


def hung(results: dict[str, Any], phase: str) -> list[dict[str, Any]]:
    """The hung calls of a phase, each with how it ended after all."""
    return [u for u in results["counts"]["unanswered"][phase] if u["what"].startswith("hung")]


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_no_call_hangs_and_no_service_is_lost_while_parts_of_the_router_are_killed(chaos):
    assert chaos["clients"] == 200 and chaos["v4_clients"] == 20
    assert list(chaos["phases"]) == ["calm", "launcher", "chunking", "registry", "worker"]
    for phase, seen in chaos["phases"].items():
        counted = outcomes(chaos, phase)
        assert counted.get("completed", 0) > 500, (phase, counted)  # traffic went on throughout
        assert counted.get("hung", 0) == 0, (phase, hung(chaos, phase))
        assert counted.get("wrong", 0) == 0, phase
        assert seen["handled"], (phase, seen)  # the kill was noticed and dealt with
        assert seen["not_reconnected"] == 0 and seen["services_lost"] == 0, (phase, seen)
        assert seen["stale_services"] == 0 and seen["list_error"] is None, (phase, seen)
        assert seen["recovered_s"] < 30, (phase, seen)
        # A call that got no answer is one that was inside the killed worker with its caller's
        # socket: the client's own method_timeout ends it, nothing can tell it sooner.
        assert STAYED not in chaos["counts"]["errors"].get(phase, {}), (phase, chaos["counts"]["unanswered"][phase])
        if phase != "worker":
            assert counted.get("timed_out", 0) == 0, (phase, chaos["counts"]["unanswered"][phase])


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_each_kill_did_what_it_says_and_the_router_served_on(chaos):
    phases = chaos["phases"]
    errors = chaos["counts"]["errors"]
    calm = chaos["counts"]["events"]["calm"]
    assert outcomes(chaos, "calm").keys() == {"completed"} and calm["received"] == calm["expected"]

    assert phases["launcher"]["killed"]["exit"] == -9  # kill -9 of `rhizomorph serve --address`
    assert outcomes(chaos, "launcher").keys() == {"completed"}  # nobody noticed

    chunking = phases["chunking"]
    assert chunking["relayed_before"]["bytes"] > 0  # large v4 calls went through the chunking actor
    assert chunking["relay_pids_after"] and chunking["relay_pids_after"] != chunking["relay_pids_before"]
    assert phases["registry"]["relayed_before"]["bytes"] > 0  # and through the one Ray started again
    assert set(errors.get("chunking", {})) <= {"large: stream cut"}  # only a stream it carried failed

    registry = phases["registry"]
    assert registry["killed"]["services"] >= 400  # 200 clients' services (and built-ins) were there
    assert errors.get("registry", {}) == {}  # lookups waited for the rebuild: none failed

    worker = phases["worker"]
    victim = worker["killed"]["worker"]
    assert worker["killed"]["connections"][victim] >= 50
    assert worker["reconnects_so_far"] >= worker["killed"]["connections"][victim] - 1  # less the observer
    assert worker["relay_pids_after"] == worker["relay_pids_before"]  # the chunking actor stayed
    assert chaos["events"][-2:] == ["worker_lost", "workers_started"]
    assert chaos["stop"]["exit"] == 0


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT + 60)
def test_the_chaos_run_leaves_no_process(chaos):
    def alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    assert chaos["pids"], "the run recorded no processes"
    deadline = time.monotonic() + 15  # Ray's processes may take a moment after the run exits
    while (left := [pid for pid in chaos["pids"] if alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert left == [], f"left running: {left}"
