"""The shared state of the router (sans-I/O): which worker owns which client, and the services.

Hosted by the registry actor (``rhizomorph/actors/registry.py``); kept pure so it is tested without Ray.
"""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


class RegistryError(Exception):
    """A request the registry refuses; the message goes back to the caller as a remote error."""


@dataclass(slots=True)
class ClientRecord:
    worker_id: str
    generation: str
    workspace: str
    user_id: str


@dataclass(slots=True)
class ServiceRecord:
    full_id: str  # "<ws>/<client>:<name>"
    owner: str  # "<ws>/<client>"
    info: dict[str, Any]

    @property
    def workspace(self) -> str:
        return self.owner.split("/", 1)[0]

    @property
    def visibility(self) -> str:
        config = self.info.get("config") or {}
        visibility: str = config.get("visibility", "protected")
        return visibility

    def visible_to(self, workspace: str, readable: set[str]) -> bool:
        """Whether a caller in ``workspace`` (with read access to ``readable``) may see it."""
        # Public and unlisted services are open to anyone who knows the id (Hypha's rule).
        if self.visibility in ("public", "unlisted") or self.workspace == workspace or self.workspace in readable:
            return True
        authorized = (self.info.get("config") or {}).get("authorized_workspaces") or []
        return workspace in authorized


@dataclass(slots=True)
class ServiceQuery:
    """A parsed ``get_service`` id: exact when ``client`` is not ``*``."""

    workspace: str
    client: str
    name: str

    @property
    def exact(self) -> bool:
        return self.client != "*"


def parse_service_id(service_id: str, caller_workspace: str) -> ServiceQuery:
    """Resolve a service id as Hypha does: ``name``, ``ws/name``, ``client:name``, ``ws/client:name``.

    The rules are listed in docs/protocol.md (Manager)."""
    if not isinstance(service_id, str) or not service_id:
        raise RegistryError("service id must be a non-empty string")
    service_id = service_id.split("@", 1)[0]  # an "@app_id" suffix is accepted and ignored
    if "/" in service_id:
        workspace, rest = service_id.split("/", 1)
    else:
        workspace, rest = caller_workspace, service_id
    if workspace == "*":
        raise RegistryError("a service id cannot name workspace '*'")
    client, name = rest.split(":", 1) if ":" in rest else ("*", rest)
    if not name or "/" in rest:
        raise RegistryError(f"invalid service id: {service_id}")
    return ServiceQuery(workspace, client or "*", name)


def full_service_id(info: dict[str, Any], owner: str) -> str:
    """The full id of a service registered by ``owner``; refuses ids naming another client."""
    raw = info.get("id")
    if not isinstance(raw, str) or not raw:
        raise RegistryError("service info needs a string 'id'")
    raw = raw.split("@", 1)[0]
    workspace, client = owner.split("/", 1)
    if "/" in raw:
        ws, rest = raw.split("/", 1)
        if ws != workspace:
            raise RegistryError(f"cannot register a service in workspace {ws} from workspace {workspace}")
    else:
        rest = raw
    if ":" in rest:
        cid, name = rest.split(":", 1)
        if cid != client:
            raise RegistryError(f"cannot register a service for client {cid} from client {client}")
    else:
        name = rest
    if not name or any(c in name for c in "/:*"):
        raise RegistryError(f"invalid service name: {name!r}")
    return f"{owner}:{name}"


@dataclass
class ServiceTable:
    max_services_per_client: int = 1000
    clients: dict[str, ClientRecord] = field(default_factory=dict)
    services: dict[str, ServiceRecord] = field(default_factory=dict)
    by_owner: dict[str, set[str]] = field(default_factory=dict)

    # -- clients -------------------------------------------------------------------------------
    def claim(self, address: str, record: ClientRecord, *, supersede: bool) -> ClientRecord | None:
        """Make ``record`` the owner of ``address``. Returns the previous owner, if any.

        Without ``supersede`` an existing owner wins and nothing changes.
        """
        previous = self.clients.get(address)
        if previous is not None and not supersede:
            return previous
        self.clients[address] = record
        return previous

    def release(self, address: str, generation: str) -> list[ServiceRecord] | None:
        """Forget a client that disconnected, with its services. ``None`` if a newer connection owns it."""
        current = self.clients.get(address)
        if current is None or current.generation != generation:
            return None
        del self.clients[address]
        return [self.services.pop(sid) for sid in self.by_owner.pop(address, set()) if sid in self.services]

    def release_worker(self, worker_id: str) -> dict[str, list[ServiceRecord]]:
        """Forget every client of a worker that is gone."""
        gone = [a for a, r in self.clients.items() if r.worker_id == worker_id]
        return {a: self.release(a, self.clients[a].generation) or [] for a in gone}

    def locate(self, address: str) -> str | None:
        record = self.clients.get(address)
        return record.worker_id if record else None

    # -- services ------------------------------------------------------------------------------
    def register(self, owner: str, info: dict[str, Any]) -> tuple[ServiceRecord, ServiceRecord | None]:
        if owner not in self.clients:
            raise RegistryError(f"client {owner} is not connected")
        full_id = full_service_id(info, owner)
        owned = self.by_owner.setdefault(owner, set())
        counted = sum(1 for sid in owned if not sid.endswith(":built-in"))  # as Hypha: built-in is free
        if full_id not in owned and not full_id.endswith(":built-in") and counted >= self.max_services_per_client:
            raise RegistryError(f"client {owner} has reached its limit of {self.max_services_per_client} services")
        stored = dict(info)
        config = dict(stored.get("config") or {})
        config["workspace"] = owner.split("/", 1)[0]
        stored["config"] = config
        stored["id"] = full_id
        record = ServiceRecord(full_id, owner, stored)
        previous = self.services.get(full_id)
        self.services[full_id] = record
        owned.add(full_id)
        return record, previous

    def unregister(self, owner: str, service_id: str) -> ServiceRecord:
        workspace = owner.split("/", 1)[0]
        query = parse_service_id(service_id, workspace)
        if not query.exact:
            query.client = owner.split("/", 1)[1]
        full_id = f"{query.workspace}/{query.client}:{query.name}"
        record = self.services.get(full_id)
        if record is None:
            raise RegistryError(f"Service not found: {service_id}")
        if record.owner != owner:
            raise RegistryError(f"cannot unregister {full_id}: it belongs to another client")
        del self.services[full_id]
        self.by_owner.get(owner, set()).discard(full_id)
        return record

    def find(
        self, service_id: str, caller_workspace: str, readable: set[str], mode: str | None = None
    ) -> ServiceRecord:
        """Resolve ``service_id`` for a caller; raises ``RegistryError`` when not found or not allowed."""
        query = parse_service_id(service_id, caller_workspace)
        if query.exact:
            record = self.services.get(f"{query.workspace}/{query.client}:{query.name}")
            candidates = [record] if record else []
        else:
            prefix = f"{query.workspace}/"
            suffix = f":{query.name}"
            candidates = [r for sid, r in self.services.items() if sid.startswith(prefix) and sid.endswith(suffix)]
        candidates = [r for r in candidates if r.visible_to(caller_workspace, readable)]
        if not candidates:
            raise RegistryError(f"Service not found: {service_id}")
        if len(candidates) == 1:
            return candidates[0]
        mode = mode or ("random" if query.workspace == "public" else "exact")
        candidates.sort(key=lambda r: r.full_id)
        if mode == "random":
            return random.choice(candidates)
        if mode == "first":
            return candidates[0]
        if mode == "last":
            return candidates[-1]
        ids = ", ".join(r.full_id for r in candidates)
        raise RegistryError(f"Multiple services found for {service_id}: {ids}; pass config mode random/first/last")

    def list(self, caller_workspace: str, readable: set[str], query: Any = None) -> list[dict[str, Any]]:
        """``list_services``: a workspace name, a glob over full ids, or a dict of filters."""
        filters: dict[str, Any] = {}
        if query is None:
            filters["workspace"] = caller_workspace
        elif isinstance(query, str):
            if "/" in query or ":" in query:
                filters["pattern"] = query if "/" in query else f"{caller_workspace}/{query}"
            else:
                filters["workspace"] = query
        elif isinstance(query, dict):
            filters = {k: v for k, v in query.items() if v is not None}
            filters.setdefault("workspace", caller_workspace)
        else:
            raise RegistryError("list_services query must be a workspace name, a pattern or a dict")
        result = []
        for record in self.services.values():
            client = record.owner.split("/", 1)[1]
            name = record.full_id.rsplit(":", 1)[1]
            if "pattern" in filters and not fnmatch.fnmatchcase(record.full_id, filters["pattern"]):
                continue
            if filters.get("workspace") not in (None, "*") and record.workspace != filters["workspace"]:
                continue
            if "client_id" in filters and client != filters["client_id"]:
                continue
            if "service_id" in filters and name != filters["service_id"]:
                continue
            if "type" in filters and record.info.get("type") != filters["type"]:
                continue
            if "visibility" in filters and record.visibility != filters["visibility"]:
                continue
            # Unlisted services are reachable by id only; protected ones stay inside their workspace.
            if record.visibility == "unlisted":
                continue
            same = record.workspace == caller_workspace or record.workspace in readable
            if not same and record.visibility != "public":
                continue
            result.append(dict(record.info))
        result.sort(key=lambda info: info["id"])
        return result

    def get(self, full_id: str) -> ServiceRecord | None:
        return self.services.get(full_id)

    # -- rebuilding after a restart ------------------------------------------------------------
    def restore(self, address: str, record: ClientRecord, services: Iterable[dict[str, Any]]) -> None:
        """Put back a client and the services it had (infos as ``register`` stored them), as its
        worker reported them to a restarted registry (rhizomorph/protocol/ownership.py)."""
        self.clients[address] = record
        owned = self.by_owner.setdefault(address, set())
        for info in services:
            full_id = info["id"]
            self.services[full_id] = ServiceRecord(full_id, address, info)
            owned.add(full_id)
