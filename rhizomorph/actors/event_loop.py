"""The event loop of the router's actors, chosen by name (``Config.loop``) rather than by what is installed.

Ray runs every async actor on a loop it makes itself, and makes it uvloop whenever uvloop is
importable in the worker's process unless ``RAY_USE_UVLOOP`` is off: installing one package
would otherwise change the loop of the whole router. The router sets that variable for its
actors, so Ray's own choice becomes ours:

- ``auto`` (the default): uvloop if it is importable (it is a dependency of rhizomorph), else
  asyncio: Ray's own default. On uvloop the router spent less CPU per call
  (benchmarks/targets.md, "uvloop");
- ``uvloop``: uvloop; an actor whose Python lacks it fails to start (``check``), saying so;
- ``asyncio``: the standard library's loop, uvloop installed or not.

An actor gets the variable from its creator's runtime environment (Ray: children inherit it)
or else from Ray's worker environment, which an embedded Ray takes from the driver
(``launcher.EMBEDDED_RAY_ENV`` sets it to the default's value). Only where that would give
another value does ``actor_options`` give the actor a runtime environment of its own: one that
differs from the job's cannot use the worker processes Ray starts in advance.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from typing import Any

LOOPS = ("asyncio", "uvloop", "auto")
#: Read by Ray's worker when it makes an actor's event loop (ray/_private/async_compat.py).
RAY_USE_UVLOOP = "RAY_USE_UVLOOP"
#: Its value for each loop (Ray's own default is on: uvloop if importable).
VALUES = {"asyncio": "0", "uvloop": "1", "auto": "1"}


def validate(loop: str) -> None:
    if loop not in LOOPS:
        raise ValueError(f"unknown event loop {loop!r}: choose from {', '.join(LOOPS)}")


def uvloop_missing_error() -> RuntimeError:
    return RuntimeError(
        "loop = 'uvloop' but uvloop is not installed for this Python: "
        "pip install 'uvloop>=0.23' (a dependency of rhizomorph), or choose loop = 'auto' or 'asyncio'"
    )


def require(loop: str) -> None:
    """Fail now, in this process, if ``loop`` names an unknown loop or uvloop is not importable here."""
    validate(loop)
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        raise uvloop_missing_error()


def environment_value() -> str:
    """``RAY_USE_UVLOOP`` as Ray reads it in this process (``1`` when unset), normalised to ``0``/``1``."""
    return "1" if os.environ.get(RAY_USE_UVLOOP, "1").lower() in ("1", "true") else "0"


def actor_options(loop: str, inherited: str | None = None) -> dict[str, Any]:
    """Ray actor options that make a new actor's event loop ``loop``.

    ``inherited``: the ``RAY_USE_UVLOOP`` the actor gets untold (``environment_value()`` in a
    Ray actor, or in the driver of an embedded Ray), ``None`` if unknown. Ray merges ``env_vars``
    per variable with those the actor inherits, so the job's other variables stay.
    """
    validate(loop)
    value = VALUES[loop]
    if inherited == value:
        return {}
    return {"runtime_env": {"env_vars": {RAY_USE_UVLOOP: value}}}


def running() -> str:
    """``uvloop`` or ``asyncio``: the kind of the loop running this coroutine."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"


def check(loop: str) -> str:
    """In an actor: the loop it runs, or an error if that is not the ``loop`` it was told."""
    actual = running()
    if loop == "auto" or actual == loop:
        return actual
    require(loop)  # uvloop asked for and missing: say that, not only that the loop differs
    raise RuntimeError(f"loop = {loop!r} but this actor runs {actual} (is {RAY_USE_UVLOOP} overridden?)")


def child_options(loop: str) -> dict[str, Any]:
    """``actor_options`` for an actor that a router's actor creates: it inherits its creator's value."""
    return actor_options(loop, environment_value())
