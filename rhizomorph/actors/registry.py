"""The registry actor: the router's shared directory (client -> worker) and service table.

One per router, cluster-wide (pinned to the launcher's node; docs/deploy.md says why one
actor is enough). Workers keep a replica of the directory, pushed from here on every change, so
routing to a remote client needs no registry round trip; they ask only on a miss. The
registry is on the control path (connect, register, get_service), never on the per-message path.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import ray

from rhizomorph.background import spawn
from rhizomorph.protocol.service_table import ClientRecord, RegistryError, ServiceTable

log = logging.getLogger("rhizomorph.registry")


class DirectoryFeed:
    """Directory updates on their way to one worker, batched as ``PeerLink`` batches frames.

    One ``update_directory`` call is in flight per worker; updates made meanwhile gather and
    leave together, in order. A burst of connects then costs a few Ray calls per worker
    instead of one per connect per worker (the registry's bottleneck on a large cluster).
    """

    def __init__(self, worker_id: str, handle: Any) -> None:
        self.worker_id = worker_id
        self.handle = handle
        self.calls = 0
        self._pending: list[tuple[str, str | None]] = []
        self._busy = False
        self._closed = False

    def send(self, updates: list[tuple[str, str | None]]) -> None:
        if self._closed:
            return
        self._pending.extend(updates)
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().call_soon(self._flush)

    def close(self) -> None:
        self._closed = True
        self._pending.clear()

    def _flush(self) -> None:
        if self._closed or not self._pending:
            self._busy = False
            return
        batch, self._pending = self._pending, []
        self.calls += 1
        spawn(self._push(batch)).add_done_callback(lambda _: self._flush())

    async def _push(self, batch: list[tuple[str, str | None]]) -> None:
        try:
            await self.handle.update_directory.remote(batch)
        except Exception as exc:  # the worker is gone: the launcher's watchdog removes it
            log.debug("directory update to %s failed: %s", self.worker_id, exc)


class RegistryCalls:
    """The registry actor's methods as coroutines: ``await calls.locate(a)`` for
    ``await handle.locate.remote(a)``, so the router and the manager can be given a fake."""

    def __init__(self, handle: Any) -> None:
        self.handle = handle

    def __getattr__(self, name: str) -> Callable[..., Awaitable[Any]]:
        method = getattr(self.handle, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await method.remote(*args, **kwargs)

        call.__name__ = name
        return call


# Every method is ``async`` so that all of them run on the actor's one event loop; none awaits
# while it reads or changes the table, so each call is atomic (claims need that).
@ray.remote(num_cpus=0, max_restarts=-1)
class Registry:
    def __init__(self, max_services_per_client: int = 1000) -> None:
        self._table = ServiceTable(max_services_per_client=max_services_per_client)
        self._workers: dict[str, Any] = {}
        self._feeds: dict[str, DirectoryFeed] = {}

    async def ready(self) -> bool:
        return True

    async def add_worker(self, worker_id: str, handle: Any) -> dict[str, str]:
        """Register a gateway worker; returns the directory snapshot it starts from."""
        self._workers[worker_id] = handle
        if worker_id in self._feeds:
            self._feeds[worker_id].close()
        self._feeds[worker_id] = DirectoryFeed(worker_id, handle)
        return {address: record.worker_id for address, record in self._table.clients.items()}

    async def remove_worker(self, worker_id: str) -> dict[str, list[dict[str, Any]]]:
        """Forget a worker that is gone, and its clients. Returns their removed services."""
        self._workers.pop(worker_id, None)
        feed = self._feeds.pop(worker_id, None)
        if feed is not None:
            feed.close()
        released = self._table.release_worker(worker_id)
        self._push([(address, None) for address in released])
        return {a: [r.info for r in services] for a, services in released.items()}

    async def workers(self) -> dict[str, Any]:
        return dict(self._workers)

    async def summary(self) -> dict[str, Any]:
        """Counts for operators and tests: workers, clients per worker, services, pushes."""
        per_worker: dict[str, int] = {}
        for record in self._table.clients.values():
            per_worker[record.worker_id] = per_worker.get(record.worker_id, 0) + 1
        return {
            "workers": sorted(self._workers),
            "clients": len(self._table.clients),
            "clients_per_worker": per_worker,
            "services": len(self._table.services),
            "directory_calls": {w: feed.calls for w, feed in self._feeds.items()},
        }

    def _push(self, updates: list[tuple[str, str | None]]) -> None:
        if updates:
            for feed in self._feeds.values():
                feed.send(updates)

    # -- clients -------------------------------------------------------------------------------
    async def claim_client(
        self, address: str, worker_id: str, generation: str, user_id: str, supersede: bool
    ) -> dict[str, str] | None:
        """Take ownership of ``address``. Returns the owner that kept it (``supersede=False``) or
        that was replaced (``supersede=True``), or ``None``."""
        record = ClientRecord(worker_id, generation, address.split("/", 1)[0], user_id)
        previous = self._table.claim(address, record, supersede=supersede)
        if previous is None or supersede:
            self._push([(address, worker_id)])
        if previous is None:
            return None
        return {"worker_id": previous.worker_id, "generation": previous.generation}

    async def release_client(self, address: str, generation: str) -> list[dict[str, Any]] | None:
        """A connection closed. Returns its removed services, or ``None`` if a newer one took over."""
        removed = self._table.release(address, generation)
        if removed is None:
            return None
        self._push([(address, None)])
        return [r.info for r in removed]

    async def locate(self, address: str) -> str | None:
        return self._table.locate(address)

    async def list_clients(self, workspace: str) -> list[str]:
        return sorted(a for a, r in self._table.clients.items() if r.workspace == workspace)

    # -- services ------------------------------------------------------------------------------
    async def register_service(self, owner: str, info: dict[str, Any]) -> dict[str, Any]:
        try:
            record, previous = self._table.register(owner, info)
        except RegistryError as exc:
            return {"error": str(exc)}
        return {"info": record.info, "replaced": previous.info if previous else None}

    async def unregister_service(self, owner: str, service_id: str) -> dict[str, Any]:
        try:
            return {"info": self._table.unregister(owner, service_id).info}
        except RegistryError as exc:
            return {"error": str(exc)}

    async def find_service(
        self, service_id: str, workspace: str, readable: list[str], mode: str | None = None
    ) -> dict[str, Any]:
        try:
            record = self._table.find(service_id, workspace, set(readable), mode)
        except RegistryError as exc:
            return {"error": str(exc)}
        return {"info": record.info, "owner": record.owner, "worker_id": self._table.locate(record.owner)}

    async def find_services(self, service_id: str, workspace: str, readable: list[str]) -> dict[str, Any]:
        """Every service ``service_id`` names that the caller may see (for the manager's probing modes)."""
        try:
            records = self._table.candidates(service_id, workspace, set(readable))
        except RegistryError as exc:
            return {"error": str(exc)}
        return {
            "candidates": [
                {"info": r.info, "owner": r.owner, "worker_id": self._table.locate(r.owner)} for r in records
            ]
        }

    async def list_services(self, workspace: str, readable: list[str], query: Any = None) -> dict[str, Any]:
        try:
            return {"services": self._table.list(workspace, set(readable), query)}
        except RegistryError as exc:
            return {"error": str(exc)}
