"""The shared state of the router (sans-I/O): which worker owns which client, and the services.

Hosted by the registry actor (``rhizomorph/actors/registry.py``); kept pure so it is tested without Ray.
"""

from __future__ import annotations

import fnmatch
import random
from collections.abc import Iterable, Sequence
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
    #: An ``@app`` suffix: accepted, shown in errors as Hypha shows it, otherwise ignored.
    app: str = field(default="*", compare=False)

    @property
    def exact(self) -> bool:
        return self.client != "*"

    def __str__(self) -> str:
        return f"{self.workspace}/{self.client}:{self.name}@{self.app}"


def not_found(query: ServiceQuery | str) -> str:
    """Hypha's wording (``get_service_info`` in hypha/core/workspace.py)."""
    return f"Service not found: {query}"


def permission_denied(workspace: str) -> str:
    """Hypha's wording for a protected service the caller may not see."""
    return f"Permission denied for non-public service in workspace {workspace}"


def parse_service_id(service_id: str, caller_workspace: str) -> ServiceQuery:
    """Resolve a service id as Hypha does: ``name``, ``ws/name``, ``client:name``, ``ws/client:name``.

    The rules are listed in docs/protocol.md (Manager)."""
    if not isinstance(service_id, str) or not service_id:
        raise RegistryError("service id must be a non-empty string")
    service_id, _, app = service_id.partition("@")  # an "@app_id" suffix is accepted and ignored
    if "/" in service_id:
        workspace, rest = service_id.split("/", 1)
    else:
        workspace, rest = caller_workspace, service_id
    if workspace == "*":
        raise RegistryError("a service id cannot name workspace '*'")
    client, name = rest.split(":", 1) if ":" in rest else ("*", rest)
    if not name or "/" in rest:
        raise RegistryError(f"invalid service id: {service_id}")
    return ServiceQuery(workspace, client or "*", name, app or "*")


#: Modes the registry cannot decide alone: they ask the providers (``select:…``, ``min_load``)
#: or need the caller's gateway worker (``native:random``); the manager picks among candidates.
PROBING_MODES = ("min_load", "native:random")
SIMPLE_MODES = ("exact", "random", "first", "last")
SELECT_CRITERIA = ("min", "max", "first_success")
INVALID_MODE = (
    "Invalid mode: {mode}. Mode must be 'random', 'first', 'last', 'exact', 'min_load', 'native:random', "
    "or 'select:criteria:function' format (e.g., 'select:min:get_load')"
)


@dataclass(frozen=True, slots=True)
class Selection:
    """A parsed ``get_service`` mode."""

    kind: str  # one of SIMPLE_MODES, PROBING_MODES or "select"
    criteria: str | None = None  # select: min, max or first_success (min_load: min)
    function: str | None = None  # select: the function each provider is asked (min_load: get_load)

    @property
    def probing(self) -> bool:
        return self.function is not None or self.kind == "native:random"


def parse_mode(mode: Any, workspace: str) -> Selection:
    """Hypha's modes; without one, ``random`` in workspace ``public`` and ``exact`` elsewhere."""
    if mode is None:
        return Selection("random" if workspace == "public" else "exact")
    if mode in SIMPLE_MODES or mode == "native:random":
        return Selection(mode)
    if mode == "min_load":
        return Selection("min_load", "min", "get_load")
    if isinstance(mode, str) and mode.startswith("select:"):
        parts = mode.split(":")
        if len(parts) != 3 or not parts[2]:
            raise RegistryError(f"Invalid select mode format: {mode}. Expected 'select:criteria:function'")
        if parts[1] not in SELECT_CRITERIA:
            raise RegistryError(f"Unknown selection criteria: {parts[1]} (use min, max or first_success)")
        return Selection("select", parts[1], parts[2])
    raise RegistryError(INVALID_MODE.format(mode=mode))


def is_probing(mode: Any) -> bool:
    return mode in PROBING_MODES or (isinstance(mode, str) and mode.startswith("select:"))


def pick_by_values(values: Sequence[Any], criteria: str, rng: random.Random | None = None) -> int | None:
    """The index chosen among candidates that answered ``values`` (``MISSING`` for those that
    did not): the lowest or highest number, ties broken at random so that equal providers share
    the traffic; ``first_success`` takes the first answer. ``None`` when no candidate answered
    usefully (the caller then picks at random, as Hypha does)."""
    pick = rng.choice if rng is not None else random.choice
    if criteria == "first_success":
        return next((i for i, v in enumerate(values) if v is not MISSING), None)
    numbers = [(float(v), i) for i, v in enumerate(values) if isinstance(v, (int, float)) and not isinstance(v, bool)]
    numbers = [(v, i) for v, i in numbers if v == v]  # NaN orders nowhere
    if not numbers:
        return None
    best = min(v for v, _ in numbers) if criteria == "min" else max(v for v, _ in numbers)
    return pick([i for v, i in numbers if v == best])


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


#: A provider that did not answer a probe (timeout, error, no such function).
MISSING: Any = _Missing()


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


def list_filters(query: Any, caller_workspace: str) -> dict[str, Any]:
    """The filters of a ``list_services`` query: a workspace name, a glob over full ids, or a dict."""
    if query is None:
        return {"workspace": caller_workspace}
    if isinstance(query, str):
        if "/" in query or ":" in query:
            return {"pattern": query if "/" in query else f"{caller_workspace}/{query}"}
        return {"workspace": query}
    if isinstance(query, dict):
        filters = {k: v for k, v in query.items() if v is not None}
        filters.setdefault("workspace", caller_workspace)
        return filters
    raise RegistryError("list_services query must be a workspace name, a pattern or a dict")


def listed(record: ServiceRecord, filters: dict[str, Any], caller_workspace: str, readable: set[str]) -> bool:
    """Whether ``list_services`` with ``filters`` lists ``record`` to the caller."""
    client = record.owner.split("/", 1)[1]
    name = record.full_id.rsplit(":", 1)[1]
    if "pattern" in filters and not fnmatch.fnmatchcase(record.full_id, filters["pattern"]):
        return False
    if filters.get("workspace") not in (None, "*") and record.workspace != filters["workspace"]:
        return False
    if "client_id" in filters and client != filters["client_id"]:
        return False
    if "service_id" in filters and name != filters["service_id"]:
        return False
    if "type" in filters and record.info.get("type") != filters["type"]:
        return False
    if "visibility" in filters and record.visibility != filters["visibility"]:
        return False
    # Unlisted services are reachable by id only; protected ones stay inside their workspace.
    if record.visibility == "unlisted":
        return False
    same = record.workspace == caller_workspace or record.workspace in readable
    return same or record.visibility == "public"


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

    def candidates(self, service_id: str, caller_workspace: str, readable: set[str]) -> list[ServiceRecord]:
        """The services ``service_id`` names that the caller may see, ordered by full id.

        Raises ``RegistryError``: not found when none matches, permission denied (Hypha's
        wording) when some match and the caller may see none of them."""
        query = parse_service_id(service_id, caller_workspace)
        if query.exact:
            record = self.services.get(f"{query.workspace}/{query.client}:{query.name}")
            matches = [record] if record else []
        else:
            prefix = f"{query.workspace}/"
            suffix = f":{query.name}"
            matches = [r for sid, r in self.services.items() if sid.startswith(prefix) and sid.endswith(suffix)]
        if not matches:
            raise RegistryError(not_found(query))
        visible = [r for r in matches if r.visible_to(caller_workspace, readable)]
        if not visible:
            raise RegistryError(permission_denied(query.workspace))
        visible.sort(key=lambda r: r.full_id)
        return visible

    def find(
        self, service_id: str, caller_workspace: str, readable: set[str], mode: str | None = None
    ) -> ServiceRecord:
        """Resolve ``service_id`` for a caller; raises ``RegistryError`` when not found or not allowed.

        A probing mode (``min_load``, ``select:…``, ``native:random``) is the manager's to
        decide among ``candidates``; here it falls back to ``random``."""
        candidates = self.candidates(service_id, caller_workspace, readable)
        query = parse_service_id(service_id, caller_workspace)
        return choose(candidates, parse_mode(mode, query.workspace), service_id)

    def list(self, caller_workspace: str, readable: set[str], query: Any = None) -> list[dict[str, Any]]:
        """``list_services``: a workspace name, a glob over full ids, or a dict of filters."""
        filters = list_filters(query, caller_workspace)
        result = [
            dict(record.info)
            for record in self.services.values()
            if listed(record, filters, caller_workspace, readable)
        ]
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


def choose(candidates: Sequence[ServiceRecord], selection: Selection, service_id: str) -> ServiceRecord:
    """One of ``candidates`` (ordered by full id) by a simple mode."""
    if len(candidates) == 1:
        return candidates[0]
    if selection.kind == "first":
        return candidates[0]
    if selection.kind == "last":
        return candidates[-1]
    if selection.kind == "exact":
        ids = ", ".join(r.full_id for r in candidates)
        raise RegistryError(
            f"Multiple services found for {service_id}: {ids}; pass config mode random/first/last, "
            "min_load or select:criteria:function"
        )
    return random.choice(list(candidates))
