"""benchmarks/measure.py's runs: one pass over a scenario's messages, or whole passes until the
case's minimum length, on an in-process echo rig (no sockets: the counting rules only)."""

from __future__ import annotations

import asyncio

from benchmarks.clients import EchoRig
from benchmarks.contenders import ProcessProbe
from benchmarks.measure import run_calls
from benchmarks.scenarios import BURST, CONCURRENT, Case, Scenario


class LocalEcho(EchoRig):
    """Answers every call after a short sleep; fails every call after the first ``fail_after``,
    never answers those after the first ``hang_after``."""

    callers = 1

    def __init__(self, fail_after: int | None = None, hang_after: int | None = None) -> None:
        self.calls, self.fail_after, self.hang_after = 0, fail_after, hang_after

    async def call(self, caller: int, index: int) -> bool:
        self.calls += 1
        number = self.calls
        if self.hang_after is not None and number > self.hang_after:
            await asyncio.Event().wait()
        await asyncio.sleep(0.001)
        if self.fail_after is not None and number > self.fail_after:
            raise ConnectionError("closed")
        return True

    async def close(self) -> None:
        pass


SCENARIO = Scenario("small", 20, size=256, modes=(CONCURRENT, BURST))
PAYLOADS = SCENARIO.payloads()


async def test_one_pass_without_a_minimum_length():
    rig = LocalEcho()
    result = await run_calls(rig, Case(SCENARIO, CONCURRENT), PAYLOADS, ProcessProbe([]), 10.0)
    assert (result.passes, result.messages, result.delivered, rig.calls) == (1, 20, 20, 20)
    assert result.payload_bytes == 2 * 256 * 20 and not result.timed_out


async def test_whole_passes_until_the_minimum_length():
    for mode in (CONCURRENT, BURST):
        rig = LocalEcho()
        result = await run_calls(rig, Case(SCENARIO, mode, min_run_s=0.1), PAYLOADS, ProcessProbe([]), 10.0)
        assert result.passes > 1, mode
        assert result.messages == result.delivered == rig.calls == 20 * result.passes, mode
        assert result.elapsed_s >= 0.1 and result.payload_bytes == 2 * 256 * result.messages, mode


async def test_a_pass_that_loses_calls_ends_the_run():
    rig = LocalEcho(fail_after=30)
    result = await run_calls(rig, Case(SCENARIO, CONCURRENT, min_run_s=5.0), PAYLOADS, ProcessProbe([]), 10.0)
    assert (result.passes, result.messages, result.delivered, result.errors) == (2, 40, 30, 10)


async def test_the_timeout_bounds_the_whole_run():
    rig = LocalEcho()
    result = await run_calls(rig, Case(SCENARIO, CONCURRENT, min_run_s=60.0), PAYLOADS, ProcessProbe([]), 0.2)
    # Passes until the deadline; the last one may be cut short by it.
    assert result.passes > 1 and result.messages == 20 * result.passes and result.elapsed_s < 5.0
    assert result.delivered >= result.messages - 20
    rig = LocalEcho(hang_after=45)
    result = await run_calls(rig, Case(SCENARIO, CONCURRENT, min_run_s=60.0), PAYLOADS, ProcessProbe([]), 0.2)
    assert result.timed_out and (result.passes, result.messages, result.delivered) == (3, 60, 45)
