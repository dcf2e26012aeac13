"""Helpers of the integration tests (fixtures are in conftest.py), shared with
tests/cluster_scenarios.py, which runs outside pytest in a process of its own."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def address(server: Any) -> str:
    """A hypha-rpc client's ``workspace/client_id``."""
    return f"{server.config.workspace}/{server.config.client_id}"


async def eventually(
    check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0, interval: float = 0.05
) -> float:
    """Wait until ``check()`` (sync or async) is true; returns the seconds it took. Fails with a
    clear message after ``timeout``."""
    started = time.monotonic()
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def on_two_workers(connect_one: Callable[[], Awaitable[Any]], attempts: int = 40) -> tuple[Any, Any]:
    """Connect clients (``connect_one()``) until two sit on different gateway workers; returns
    them ordered by worker id. The kernel spreads connections over the shared port, so 40 tries
    fail to reach both workers with probability 2**-39."""
    by_worker: dict[str, Any] = {}
    for _ in range(attempts):
        server = await connect_one()
        by_worker.setdefault(server.config.rhizomorph_worker, server)
        if len(by_worker) == 2:
            first, second = sorted(by_worker)
            return by_worker[first], by_worker[second]
    raise AssertionError(f"{attempts} connections never reached two workers")


def run_for_results(module: str, marker: str, timeout: float) -> dict[str, Any]:
    """Run ``python -m <module>`` (a run with a Ray cluster of its own, which cannot share a
    process with the test session's embedded Ray) in a session of its own, and return the JSON
    of the last line it prints starting with ``marker``. Fails if it takes longer than
    ``timeout`` (every process it started is killed) or prints no such line."""
    import psutil

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", module],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        for child in psutil.Process(proc.pid).children(recursive=True):
            child.kill()
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{module} did not finish in {timeout:g} s:\n{err[-3000:]}") from None
    lines = [line for line in out.splitlines() if line.startswith(marker)]
    assert lines, f"no results from {module} (exit {proc.returncode}):\n{err[-3000:]}"
    results: dict[str, Any] = json.loads(lines[-1][len(marker) :])
    return results
