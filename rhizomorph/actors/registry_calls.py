"""A gateway worker's calls to the registry actor, as coroutines, and its share of the registry.

``RegistryCalls`` is what the router and the manager hold as their ``registry``: ``await
calls.locate(a)`` for ``await handle.locate.remote(a)``, so tests can give them a fake. On the
way it records, from the registry's own answers, what this worker's clients own (claims and
services: ``OwnedState``, rhizomorph/protocol/ownership.py), which is what a restarted registry
rebuilds itself from. A registry that cannot answer is reported as ``RegistryUnavailable``, a
short message the manager passes to the caller, not a Ray traceback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ray.exceptions import RayActorError

from rhizomorph.protocol.ownership import OwnedState

#: Longest one registry call may take before its caller is told the registry is unavailable.
#: A restart and rebuild after a crash take seconds; a lost node adds Ray's node-death detection.
CALL_TIMEOUT = 90.0


class RegistryUnavailable(Exception):
    """The registry did not answer: it is restarting, still rebuilding, or gone. Try again."""


class RegistryCalls:
    def __init__(self, handle: Any, owned: OwnedState | None = None, clock: Callable[[], float] = time.time) -> None:
        self.handle = handle
        self.owned = owned if owned is not None else OwnedState()
        self._clock = clock

    async def _call(self, name: str, *args: Any) -> Any:
        try:
            return await asyncio.wait_for(getattr(self.handle, name).remote(*args), CALL_TIMEOUT)
        except RegistryUnavailable as exc:  # raised by the registry itself (a rebuild that never ended)
            raise RegistryUnavailable(str(getattr(exc, "cause", exc))) from None
        except (RayActorError, TimeoutError) as exc:
            raise RegistryUnavailable(
                f"the router's registry did not answer {name} ({type(exc).__name__}); try again"
            ) from None

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
