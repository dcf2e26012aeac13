"""A router's gateway workers run the event loop ``Config.loop`` names, whatever Ray would pick."""

from __future__ import annotations

import importlib.util

import pytest

from rhizomorph import Config, Deployment

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def _worker_loops(loop: str) -> list[str]:
    with Deployment(Config(port=0, workers=1, loop=loop, log_level="WARNING")) as deployment:
        return [info["loop"] for info in deployment.worker_info.values()]


@pytest.mark.slow
@pytest.mark.parametrize("loop", ["asyncio", "auto"])
def test_workers_run_the_loop_they_were_told(ray_runtime, loop):
    # ``auto`` is Ray's own choice: uvloop whenever it is importable (RAY_USE_UVLOOP on by default).
    expected = "uvloop" if loop == "auto" and HAS_UVLOOP else "asyncio"
    assert _worker_loops(loop) == [expected]


@pytest.mark.slow
@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")
def test_workers_run_uvloop_when_told(ray_runtime):
    assert _worker_loops("uvloop") == ["uvloop"]


@pytest.mark.skipif(HAS_UVLOOP, reason="uvloop is installed")
def test_uvloop_without_it_is_a_clear_error_before_anything_starts(ray_runtime):
    with pytest.raises(RuntimeError, match=r"uvloop is not installed .*rhizomorph\[uvloop\]"):
        Deployment(Config(port=0, workers=1, loop="uvloop")).start()
