"""A gateway worker's calls to the registry actor, as coroutines, and its share of the registry.

``RegistryCalls`` is what the router and the manager hold as their ``registry``: ``await
calls.locate(a)`` for the registry's ``locate(a)``, so tests can give them a fake. The calls go
in batches, as ``PeerLink`` sends frames: one ``call_batch`` Ray call in flight per worker, the
calls made meanwhile gathered behind it and sent together, in order. A Ray actor call costs
each side about half a millisecond of CPU whatever it carries, so when hundreds of clients
reconnect at once (a worker was lost: docs/deploy.md, "Reconnection storms") their claims and
re-registrations cost a few dozen Ray calls instead of thousands; an idle worker's call leaves
at once, alone. On the way it records, from the registry's own answers, what this worker's
clients own (claims and services: ``OwnedState``, rhizomorph/protocol/ownership.py), which is
what a restarted registry rebuilds itself from. A registry that cannot answer is reported as
``RegistryUnavailable``, a short message the manager passes to the caller, not a Ray traceback.
"""

from __future__ import annotations

import array
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ray.exceptions import RayActorError

from rhizomorph.background import spawn
from rhizomorph.gateway.memory import UnboxedCount
from rhizomorph.protocol.ownership import OwnedState

#: Longest one registry call may take before its caller is told the registry is unavailable.
#: A restart and rebuild after a crash take seconds; a lost node adds Ray's node-death detection.
CALL_TIMEOUT = 90.0
#: Most calls one ``call_batch`` carries (a bound on the size of one Ray call's arguments and
#: answers); the rest leave in the next batch.
MAX_BATCH = 256


class RegistryUnavailable(Exception):
    """The registry did not answer: it is restarting, still rebuilding, or gone. Try again."""


class RegistryCalls:
    def __init__(self, handle: Any, owned: OwnedState | None = None, clock: Callable[[], float] = time.time) -> None:
        self.handle = handle
        self.owned = owned if owned is not None else OwnedState()
        self._clock = clock
        self._pending: list[tuple[str, tuple[Any, ...], asyncio.Future[Any]]] = []
        self._busy = False
        # Ray calls made (``call_batch``) and the registry calls they carried; unboxed, and the
        # pending list kept, not replaced: an int or a list made by a wave of departures' releases
        # would sit in one of the wave's arenas and keep it (rhizomorph/gateway/memory.py).
        self._counts = array.array("q", [0, 0])

    batches = UnboxedCount(0)
    calls = UnboxedCount(1)

    async def _call(self, name: str, *args: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self._pending.append((name, args, future))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().call_soon(self._flush)
        try:
            return await asyncio.wait_for(future, CALL_TIMEOUT)
        except RegistryUnavailable as exc:  # raised by the registry itself (a rebuild that never ended)
            raise RegistryUnavailable(str(exc)) from None
        except (RayActorError, TimeoutError) as exc:
            raise RegistryUnavailable(
                f"the router's registry did not answer {name} ({type(exc).__name__}); try again"
            ) from None

    def _flush(self) -> None:
        """Send what gathered as one batch, unless nothing did; the next flush follows its answer."""
        pending = self._pending
        pending[:] = [call for call in pending if not call[2].done()]  # done: timed out
        if not pending:
            self._busy = False
            return
        batch = pending[:MAX_BATCH]
        del pending[:MAX_BATCH]
        spawn(self._send(batch)).add_done_callback(lambda _: self._flush())

    async def _send(self, batch: list[tuple[str, tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        self._counts[0] += 1
        self._counts[1] += len(batch)
        try:
            answers = await self.handle.call_batch.remote([(name, args) for name, args, _ in batch])
        except Exception as exc:  # the batch as a whole: the registry died, or Ray could not call it
            answers = [(False, exc)] * len(batch)
        for (_, _, future), (ok, value) in zip(batch, answers):
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        if name.startswith("_"):
            raise AttributeError(name)

        async def call(*args: Any) -> Any:
            return await self._call(name, *args)

        call.__name__ = name
        return call

    # -- the calls whose answers change what this worker's clients own -------------------------
    async def claim_client(
        self, address: str, worker_id: str, generation: str, user_id: str, supersede: bool
    ) -> dict[str, str] | None:
        result = await self._call("claim_client", address, worker_id, generation, user_id, supersede)
        services = result.pop("services", []) if result is not None else []
        if result is None or supersede:  # the claim took effect
            self.owned.claimed(address, generation, user_id, self._clock(), services)
        return result

    async def release_client(self, address: str, generation: str) -> list[dict[str, Any]] | None:
        self.owned.releasing(address, generation)
        result = await self._call("release_client", address, generation)
        self.owned.released(address, generation)
        return result

    async def register_service(self, owner: str, info: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("register_service", owner, info)
        if "info" in result:
            self.owned.registered(owner, result["info"])
        return result

    async def unregister_service(self, owner: str, service_id: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("unregister_service", owner, service_id)
        if "info" in result:
            self.owned.unregistered(owner, result["info"])
        return result
