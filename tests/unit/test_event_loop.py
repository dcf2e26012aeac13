"""Config.loop -> the Ray actor options that decide an actor's event loop, and the checks."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from rhizomorph import Config
from rhizomorph.actors import event_loop
from rhizomorph.actors.placement import control_plane, worker_runtime

HAS_UVLOOP = importlib.util.find_spec("uvloop") is not None


def test_default_is_uvloop_when_installed():
    assert Config().loop == "auto"
    assert event_loop.VALUES["auto"] == "1"  # Ray's own default: uvloop whenever it is importable
    assert Config.load(environ={"RHIZOMORPH_LOOP": "asyncio"}).loop == "asyncio"


@pytest.mark.parametrize(("loop", "value"), [("asyncio", "0"), ("uvloop", "1"), ("auto", "1")])
def test_a_loop_the_actor_would_not_inherit_is_set_in_its_runtime_env(loop, value):
    env = {"runtime_env": {"env_vars": {"RAY_USE_UVLOOP": value}}}
    other = "1" if value == "0" else "0"
    assert event_loop.actor_options(loop) == env  # what the actor inherits is unknown
    assert event_loop.actor_options(loop, other) == env
    assert control_plane(Config(loop=loop), "x", other)["runtime_env"] == env["runtime_env"]


@pytest.mark.parametrize(("loop", "value"), [("asyncio", "0"), ("uvloop", "1"), ("auto", "1")])
def test_a_loop_the_actor_inherits_needs_no_runtime_env(loop, value):
    # A runtime env of its own would keep the actor off the worker processes Ray starts in advance.
    assert event_loop.actor_options(loop, value) == {}
    assert "runtime_env" not in control_plane(Config(loop=loop), "x", value)


@pytest.mark.parametrize(
    ("environ", "value"), [({}, "1"), ({"RAY_USE_UVLOOP": "0"}, "0"), ({"RAY_USE_UVLOOP": "True"}, "1")]
)
def test_environment_value_reads_the_variable_as_ray_does(monkeypatch, environ, value):
    monkeypatch.delenv("RAY_USE_UVLOOP", raising=False)
    for name, raw in environ.items():
        monkeypatch.setenv(name, raw)
    assert event_loop.environment_value() == value
    assert event_loop.child_options("asyncio" if value == "0" else "uvloop") == {}


def test_a_default_router_on_an_embedded_ray_needs_no_runtime_envs():
    from rhizomorph.launcher import EMBEDDED_RAY_ENV

    assert EMBEDDED_RAY_ENV["RAY_USE_UVLOOP"] == event_loop.VALUES[Config().loop]


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
    with pytest.raises(RuntimeError, match=r"uvloop is not installed .*pip install 'uvloop>=0.23'"):
        event_loop.require("uvloop")


def test_a_workers_loop_and_allocator_variables_share_one_runtime_env(monkeypatch):
    monkeypatch.setenv(event_loop.RAY_USE_UVLOOP, "1")  # what the creating actor has
    both = worker_runtime(Config(loop="asyncio", worker_allocator="malloc"))
    assert both == {"runtime_env": {"env_vars": {event_loop.RAY_USE_UVLOOP: "0", "PYTHONMALLOC": "malloc"}}}
    assert worker_runtime(Config(loop="auto", worker_allocator="malloc")) == {
        "runtime_env": {"env_vars": {"PYTHONMALLOC": "malloc"}}
    }
    assert worker_runtime(Config(loop="auto")) == {}
