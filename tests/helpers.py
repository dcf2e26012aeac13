"""Helpers of the integration tests (fixtures are in conftest.py), shared with
tests/cluster_scenarios.py, which runs outside pytest in a process of its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


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
