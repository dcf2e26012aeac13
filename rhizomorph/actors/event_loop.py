"""The event loop of the router's actors, chosen by name (``Config.loop``) rather than by what is installed.

Ray runs every async actor on a loop it makes itself, and makes it uvloop whenever uvloop is
importable in the worker's process unless ``RAY_USE_UVLOOP`` is off: installing one package
would otherwise change the loop of the whole router. ``actor_options`` sets that variable in
each actor's runtime environment, so Ray's own choice becomes ours:

- ``asyncio``: the standard library's loop, uvloop installed or not (the default: with uvloop
  the router spent more CPU per message, benchmarks/targets.md, "uvloop");
- ``uvloop``: uvloop; an actor whose Python lacks it fails to start (``check``), saying so;
- ``auto``: whatever Ray picks (uvloop if importable): the actors' environment is left alone.
"""

from __future__ import annotations

import asyncio
import importlib.util
from typing import Any

LOOPS = ("asyncio", "uvloop", "auto")
#: Read by Ray's worker when it makes an actor's event loop (ray/_private/async_compat.py).
RAY_USE_UVLOOP = "RAY_USE_UVLOOP"


def validate(loop: str) -> None:
    if loop not in LOOPS:
        raise ValueError(f"unknown event loop {loop!r}: choose from {', '.join(LOOPS)}")


def uvloop_missing_error() -> RuntimeError:
    return RuntimeError(
        "loop = 'uvloop' but uvloop is not installed for this Python: "
        "pip install 'rhizomorph[uvloop]', or choose loop = 'asyncio'"
    )


def require(loop: str) -> None:
    """Fail now, in this process, if ``loop`` names an unknown loop or uvloop is not importable here."""
    validate(loop)
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise uvloop_missing_error()


def actor_options(loop: str) -> dict[str, Any]:
    """Ray actor options that make the actor's event loop ``loop`` (none for ``auto``).

    Ray merges an actor's ``env_vars`` with those of the job, so the job's other variables stay.
    """
    validate(loop)
    if loop == "auto":
        return {}
    return {"runtime_env": {"env_vars": {RAY_USE_UVLOOP: "1" if loop == "uvloop" else "0"}}}


def running() -> str:
    """``uvloop`` or ``asyncio``: the kind of the loop running this coroutine."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


def check(loop: str) -> str:
    """In an actor: the loop it runs, or an error if that is not the ``loop`` it was told."""
    actual = running()
    if loop == "auto" or actual == loop:
        return actual
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise uvloop_missing_error()
    raise RuntimeError(f"loop = {loop!r} but this actor runs {actual} (is {RAY_USE_UVLOOP} overridden?)")
