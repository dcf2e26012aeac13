"""Run a benchmark's clients in their own process, outside the Ray driver.

The process that calls ``ray.init()`` also runs Ray's driver threads (log printing, the error
listener), which take the GIL from clients living in the same interpreter. Measured on our
2-core machine, 2 MB v4 echoes ran at ~207 MiB/s with the clients in the driver and ~275 MiB/s
with the same clients in a process of their own. Users' clients never share a Ray driver, so
the dedicated benchmarks (``bench_large``, ``bench_batching``, ``bench_workers``) run theirs here.

    with LoadProcess() as load:
        rate = load.run(echo_rate, url, ...)   # a module-level coroutine function and its args
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ProcessPoolExecutor
from typing import Any

#: The event loop of the benchmark's client processes (the load process, the echo provider):
#: ``asyncio`` (unset) or ``uvloop`` (``bench_claims --client-loop uvloop`` sets it).
CLIENT_LOOP_ENV = "RHIZOMORPH_BENCH_CLIENT_LOOP"


def run_client_loop(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run(coroutine)`` on the loop ``CLIENT_LOOP_ENV`` names."""
    if os.environ.get(CLIENT_LOOP_ENV, "asyncio") == "uvloop":
        import uvloop

        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def _run(function: Callable[..., Awaitable[Any]], args: tuple) -> Any:
    return run_client_loop(function(*args))


class LoadProcess:
    """One spawned interpreter (it imports no Ray runtime) that runs coroutines to completion."""

    def __init__(self) -> None:
        self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    def run(self, function: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """``run_client_loop(function(*args))`` in the load process; ``function`` must be importable."""
        return self._pool.submit(_run, function, args).result()

    def close(self) -> None:
        self._pool.shutdown()

    def __enter__(self) -> LoadProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
