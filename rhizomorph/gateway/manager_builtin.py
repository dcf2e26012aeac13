"""The manager's ``built-in`` service, and large replies in chunks.

A released client sends a manager call over ~257 KB as ``message_cache`` calls to the
manager's ``built-in`` service (hypha-rpc's chunked sending); a provider does the same with a
large answer to a call the manager made (``get_service`` of a service with big docs). The
chunks wait in a ``MessageCache`` bounded per caller; ``process`` joins them and hands the
message back to the router, stamped with the caller's identity, so it reaches the manager (on
whichever worker owns the session it answers) as if it had come in one frame.

The other way, a reply over the chunk size goes to the caller's own ``built-in`` service in the
same calls: a Python client drops a single frame over about 500 KB.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import shortuuid

from rhizomorph.protocol import envelope, manager_api, rpc
from rhizomorph.protocol.message_cache import CHUNK_SIZE, CacheError, MessageCache, split

log = logging.getLogger("rhizomorph.manager")

#: Chunks of one large reply in flight at once (hypha-rpc's sender allows 30).
REPLY_WINDOW = 4
CACHE_VERBS = ("create", "append", "set", "process", "remove")


class BuiltinHost(Protocol):
    """What the built-in service needs from the manager."""

    address: str

    def send(self, target: str, frame: bytes) -> None: ...

    def call_client(
        self, target: str, method: str, args: list[Any], timeout: float | None = None
    ) -> Awaitable[Any]: ...


class BuiltinService:
    def __init__(self, host: BuiltinHost, *, max_bytes_per_caller: int) -> None:
        self._host = host
        self.cache = MessageCache(max_bytes_per_caller)

    def service_dict(self, server_config: dict[str, Any]) -> dict[str, Any]:
        """What ``get_service("built-in")`` returns; ``api_version`` 3 lets senders send chunks concurrently."""
        service: dict[str, Any] = {
            "id": "built-in",
            "type": "built-in",
            "name": "Built-in services of the workspace manager (rhizomorph)",
            "config": {**server_config, "api_version": 3},
            "message_cache": {},
        }
        for path in manager_api.BUILTIN_METHODS:
            name = path.rsplit(".", 1)[-1]
            ref = rpc.method_ref(
                self._host.address,
                f"services.built-in.{path}",
                name,
                manager_api.BUILTIN_METHODS[path].description,
                manager_api.schema(path, manager_api.BUILTIN_METHODS),
            )
            (service["message_cache"] if path.startswith("message_cache.") else service)[name] = ref
        return service

    def call(self, message: dict[str, Any], caller: str, path: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """One ``message_cache`` call (``path`` is ``message_cache.<verb>``); raises ``CacheError``."""
        verb = path.removeprefix("message_cache.")
        if verb not in CACHE_VERBS or not path.startswith("message_cache."):
            raise CacheError(f"Method not found: services.built-in.{path}")
        handler: Callable[..., Any] = getattr(self, f"_{verb}")
        kwargs.pop("heartbeat", None)  # the manager keeps no session timers to reset
        kwargs.pop("context", None)
        try:
            return handler(message, caller, *args, **kwargs)
        except TypeError as exc:
            raise CacheError(f"bad arguments for message_cache.{verb}: {exc}") from None

    def forget(self, caller: str) -> None:
        self.cache.forget(caller)

    # -- message_cache -----------------------------------------------------------------------
    def _create(
        self, message: dict[str, Any], caller: str, key: str, heartbeat: Any = False, overwrite: Any = False
    ) -> None:
        self.cache.create(caller, key, overwrite=bool(overwrite))

    def _append(self, message: dict[str, Any], caller: str, key: str, data: bytes, heartbeat: Any = False) -> None:
        self.cache.append(caller, key, data)

    def _set(
        self, message: dict[str, Any], caller: str, key: str, index: int, data: bytes, heartbeat: Any = False
    ) -> None:
        self.cache.set(caller, key, index, data)

    def _remove(self, message: dict[str, Any], caller: str, key: str) -> None:
        self.cache.remove(caller, key)

    def _process(self, message: dict[str, Any], caller: str, key: str, heartbeat: Any = False) -> None:
        whole = self.cache.take(caller, key)
        try:
            parsed = envelope.parse(whole)
        except envelope.EnvelopeError as exc:
            raise CacheError(f"message {key} does not decode: {exc}") from None
        # The joined message gets the trusted fields of the ``process`` call, as a client does it.
        frame = envelope.stamp(
            parsed,
            target=self._host.address,
            sender=caller,
            workspace=str(message.get("ws")),
            user=message.get("user") or {},
        )
        self._host.send(self._host.address, frame)

    # -- large replies -----------------------------------------------------------------------
    async def send_in_chunks(self, target: str, frame: bytes, timeout: float) -> None:
        """Send ``frame`` to ``target`` through its ``built-in`` service's ``message_cache``."""
        key = shortuuid.uuid()
        cache = "services.built-in.message_cache"
        await self._host.call_client(target, f"{cache}.create", [key, False], timeout)
        window = asyncio.Semaphore(REPLY_WINDOW)

        async def send(index: int, chunk: bytes) -> None:
            async with window:
                await self._host.call_client(target, f"{cache}.set", [key, index, chunk, False], timeout)

        try:
            await asyncio.gather(*(send(i, c) for i, c in enumerate(split(frame, CHUNK_SIZE))))
        except Exception:
            try:
                await self._host.call_client(target, f"{cache}.remove", [key], timeout)
            except Exception as exc:  # the client is likely gone: its cache went with it
                log.debug("could not remove chunked reply %s at %s: %s", key, target, exc)
            raise
        await self._host.call_client(target, f"{cache}.process", [key, False], timeout)
