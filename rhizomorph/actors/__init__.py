"""The Ray actors of a router and the links between them: controller, gateway worker shell,
registry, chunking actor, peer links and channels; and helpers for handling actors."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from ray.actor import ActorClass

_T = TypeVar("_T")


def actor_class(decorated: type[_T]) -> ActorClass[_T]:
    """A ``@ray.remote`` class as the ``ActorClass`` it is, for ``.options(...)`` and ``.remote(...)``.

    Ray types its decorator correctly, but mypy does not apply what a class decorator returns
    (python/mypy#3135) and so sees the plain class. This is the one place that says so, rather
    than a ``type: ignore`` at every actor creation. It returns its argument unchanged.
    """
    return cast("ActorClass[_T]", decorated)


async def answers(refs: Mapping[str, Any], timeout: float) -> dict[str, Any]:
    """Await Ray calls by key, all at once, for at most ``timeout`` seconds: each key maps to
    its result, or to the exception it raised (``TimeoutError`` if still running)."""

    async def one(ref: Any) -> Any:
        return await ref

    tasks = {key: asyncio.ensure_future(one(ref)) for key, ref in refs.items()}
    if tasks:
        await asyncio.wait(tasks.values(), timeout=timeout)
    results: dict[str, Any] = {}
    for key, task in tasks.items():
        if not task.done():
            task.cancel()
            results[key] = TimeoutError(f"no answer within {timeout:g} s")
        else:
            results[key] = task.exception() or task.result()
    return results


class Held:
    """The actor's side of the controller's death watch (``watchdog.DeathWatch``): a call that
    is answered only when a later one takes its place, so that it fails exactly when the actor
    dies (Ray's ``ActorDiedError``, on the controller). A restarted controller's call takes the
    place of its predecessor's: one is left waiting at most."""

    def __init__(self) -> None:
        self._waiting: asyncio.Future[None] | None = None

    async def hold(self) -> None:
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_result(None)
        self._waiting = asyncio.get_running_loop().create_future()
        await self._waiting
