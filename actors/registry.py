"""The registry actor: the router's shared directory (client -> worker) and service table.

One per router. Workers keep a replica of the directory, pushed from here on every change, so
routing to a remote client needs no registry round trip; they ask only on a miss. The
registry is on the control path (connect, register, get_service), never on the per-message path.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from actors.service_table import ClientRecord, RegistryError, ServiceTable

log = logging.getLogger("rhizomorph.registry")


@ray.remote(num_cpus=0, max_restarts=-1)
class Registry:
    def __init__(self, max_services_per_client: int = 1000) -> None:
        self._table = ServiceTable(max_services_per_client=max_services_per_client)
        self._workers: dict[str, Any] = {}

    def ready(self) -> bool:
        return True

    def add_worker(self, worker_id: str, handle: Any) -> dict[str, str]:
        """Register a gateway worker; returns the directory snapshot it starts from."""
        self._workers[worker_id] = handle
        return {address: record.worker_id for address, record in self._table.clients.items()}

    def remove_worker(self, worker_id: str) -> dict[str, list[dict[str, Any]]]:
        """Forget a worker that is gone, and its clients. Returns their removed services."""
        self._workers.pop(worker_id, None)
        released = self._table.release_worker(worker_id)
        self._push([(address, None) for address in released])
        return {a: [r.info for r in services] for a, services in released.items()}

    def workers(self) -> dict[str, Any]:
        return dict(self._workers)

    def _push(self, updates: list[tuple[str, str | None]]) -> None:
        if updates:
            for handle in self._workers.values():
                handle.update_directory.remote(updates)

    # -- clients -------------------------------------------------------------------------------
    def claim_client(self, address: str, worker_id: str, generation: str, user_id: str,
                     supersede: bool) -> dict[str, str] | None:
        """Take ownership of ``address``. Returns the owner that kept it (``supersede=False``) or
        that was replaced (``supersede=True``), or ``None``."""
        record = ClientRecord(worker_id, generation, address.split("/", 1)[0], user_id)
        previous = self._table.claim(address, record, supersede=supersede)
        if previous is None or supersede:
            self._push([(address, worker_id)])
        if previous is None:
            return None
        return {"worker_id": previous.worker_id, "generation": previous.generation}

    def release_client(self, address: str, generation: str) -> list[dict[str, Any]] | None:
        """A connection closed. Returns its removed services, or ``None`` if a newer one took over."""
        removed = self._table.release(address, generation)
        if removed is None:
            return None
        self._push([(address, None)])
        return [r.info for r in removed]

    def locate(self, address: str) -> str | None:
        return self._table.locate(address)

    def list_clients(self, workspace: str) -> list[str]:
        return sorted(a for a, r in self._table.clients.items() if r.workspace == workspace)

    # -- services ------------------------------------------------------------------------------
    def register_service(self, owner: str, info: dict[str, Any]) -> dict[str, Any]:
        try:
            record, previous = self._table.register(owner, info)
        except RegistryError as exc:
            return {"error": str(exc)}
        return {"info": record.info, "replaced": previous.info if previous else None}

    def unregister_service(self, owner: str, service_id: str) -> dict[str, Any]:
        try:
            return {"info": self._table.unregister(owner, service_id).info}
        except RegistryError as exc:
            return {"error": str(exc)}

    def find_service(self, service_id: str, workspace: str, readable: list[str],
                     mode: str | None = None) -> dict[str, Any]:
        try:
            record = self._table.find(service_id, workspace, set(readable), mode)
        except RegistryError as exc:
            return {"error": str(exc)}
        return {"info": record.info, "owner": record.owner, "worker_id": self._table.locate(record.owner)}

    def list_services(self, workspace: str, readable: list[str], query: Any = None) -> dict[str, Any]:
        try:
            return {"services": self._table.list(workspace, set(readable), query)}
        except RegistryError as exc:
            return {"error": str(exc)}
