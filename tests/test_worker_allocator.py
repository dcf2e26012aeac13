"""``Config.worker_allocator = "malloc"``: the gateway workers run with ``PYTHONMALLOC=malloc``
(their memory goes back to the system after a wave of departures; benchmarks/README.md) and
serve hypha-rpc clients as usual; the router's other processes keep Python's allocator."""

from __future__ import annotations

import psutil
import pytest

from benchmarks.contenders import actor_pid
from rhizomorph import Config, Deployment
from tests.test_hypha_compat import echo_service


@pytest.fixture
def malloc_router(ray_runtime):
    # asyncio named: where uvloop is installed the worker needs the loop's variable too, and
    # both reach it (the two runtime envs are merged, not one replacing the other).
    deployment = Deployment(Config(port=0, workers=1, worker_allocator="malloc", loop="asyncio")).start()
    yield deployment
    deployment.stop()


async def test_malloc_workers_start_with_pythonmalloc_and_serve(malloc_router, connect):
    [info] = malloc_router.worker_info.values()
    assert psutil.Process(info["pid"]).environ().get("PYTHONMALLOC") == "malloc"
    assert info["loop"] == "asyncio"
    registry = actor_pid(malloc_router.registry)
    assert registry is not None and psutil.Process(registry).environ().get("PYTHONMALLOC") is None

    provider = await connect(malloc_router.url)
    consumer = await connect(malloc_router.url)
    await provider.register_service(echo_service())
    echo = await consumer.get_service(f"{provider.config.workspace}/{provider.config.client_id}:echo")
    assert await echo.echo(b"x" * 20_000) == b"x" * 20_000
