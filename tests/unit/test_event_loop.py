"""Config.loop -> the Ray actor options that decide an actor's event loop, and the checks."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from rhizomorph import Config
from rhizomorph.actors import event_loop
from rhizomorph.actors.placement import control_plane

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def test_default_is_the_standard_librarys_loop():
    assert Config().loop == "asyncio"
    assert Config.load(environ={"RHIZOMORPH_LOOP": "uvloop"}).loop == "uvloop"


@pytest.mark.parametrize(("loop", "value"), [("asyncio", "0"), ("uvloop", "1")])
def test_a_named_loop_sets_rays_variable_in_the_actors_environment(loop, value):
    assert event_loop.actor_options(loop) == {"runtime_env": {"env_vars": {"RAY_USE_UVLOOP": value}}}
    assert control_plane(Config(loop=loop), "x")["runtime_env"] == {"env_vars": {"RAY_USE_UVLOOP": value}}


def test_auto_leaves_the_actors_environment_to_ray():
    assert event_loop.actor_options("auto") == {}
    assert "runtime_env" not in control_plane(Config(loop="auto"), "x")


def test_an_unknown_loop_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="unknown event loop 'tokio': choose from asyncio, uvloop, auto"):
        event_loop.actor_options("tokio")
    with pytest.raises(ValueError, match="unknown event loop"):
        event_loop.require("tokio")


def test_check_names_the_loop_running_and_refuses_another():
    async def run() -> None:
        assert event_loop.running() == "asyncio"
        assert event_loop.check("asyncio") == "asyncio"
        assert event_loop.check("auto") == "asyncio"
        with pytest.raises(RuntimeError, match="uvloop" if HAS_UVLOOP else "uvloop is not installed"):
            event_loop.check("uvloop")

    asyncio.run(run())


@pytest.mark.skipif(not HAS_UVLOOP, reason="uvloop is not installed")
def test_check_on_uvloop():
    import uvloop

    async def run() -> None:
        assert event_loop.check("uvloop") == "uvloop"
        with pytest.raises(RuntimeError, match="this actor runs uvloop"):
            event_loop.check("asyncio")

    uvloop.run(run())


@pytest.mark.skipif(HAS_UVLOOP, reason="uvloop is installed")
def test_require_uvloop_without_it_says_how_to_get_it():
    with pytest.raises(RuntimeError, match=r"uvloop is not installed .*rhizomorph\[uvloop\]"):
        event_loop.require("uvloop")
