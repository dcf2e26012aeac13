"""A router's gateway workers run the event loop ``Config.loop`` names, whatever Ray would pick,
and serve hypha-rpc clients on it."""

from __future__ import annotations

import importlib.util

import pytest
from hypha_rpc import connect_to_server

from rhizomorph import Config, Deployment

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


async def _loops_and_an_echo_call(loop: str) -> list[str]:
    """The loop each worker reports, after an echo call between two clients on two workers."""
    with Deployment(Config(port=0, workers=2, loop=loop, log_level="WARNING")) as deployment:
        options = {"server_url": deployment.url, "method_timeout": 20}
        provider, caller = await connect_to_server(options), await connect_to_server(options)
        try:
            info = await provider.register_service(
                {"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x}
            )
            echo = await caller.get_service(info["id"])
            assert await echo.echo(b"x" * 100_000) == b"x" * 100_000
        finally:
            await caller.disconnect()
            await provider.disconnect()
        return sorted(info["loop"] for info in deployment.worker_info.values())


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "auto"])
async def test_workers_run_the_loop_they_were_told(ray_runtime, loop):
    # ``auto`` is Ray's own choice: uvloop whenever it is importable (RAY_USE_UVLOOP on by default).
    expected = "uvloop" if loop == "auto" and HAS_UVLOOP else "asyncio"
    assert await _loops_and_an_echo_call(loop) == [expected, expected]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")
async def test_workers_run_uvloop_when_told(ray_runtime):
    assert await _loops_and_an_echo_call("uvloop") == ["uvloop", "uvloop"]


@pytest.mark.skipif(HAS_UVLOOP, reason="uvloop is installed")
def test_uvloop_without_it_is_a_clear_error_before_anything_starts(ray_runtime):
    with pytest.raises(RuntimeError, match=r"uvloop is not installed .*pip install 'uvloop>=0.23'"):
        Deployment(Config(port=0, workers=1, loop="uvloop")).start()
