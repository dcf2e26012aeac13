"""Names of a router's Ray actors: how a restarted actor, or a later process, finds the others.

Every router (one ``server_id``) has a controller, a registry and gateway workers, all
detached named actors in the ``rhizomorph`` namespace: ``rhizomorph-<server id>-controller``,
``-registry`` and ``-worker-<worker id>``. A restarted controller or registry finds the router's
workers by these names (Ray's list of named actors), and ``rhizomorph status`` / ``stop`` find
routers by them.
"""

from __future__ import annotations

from typing import Any

NAMESPACE = "rhizomorph"
_PREFIX = "rhizomorph-"
_CONTROLLER = "-controller"


def controller_name(server_id: str) -> str:
    return f"{_PREFIX}{server_id}{_CONTROLLER}"


def registry_name(server_id: str) -> str:
    return f"{_PREFIX}{server_id}-registry"


def worker_prefix(server_id: str) -> str:
    return f"{_PREFIX}{server_id}-worker-"


def worker_name(server_id: str, worker_id: str) -> str:
    return worker_prefix(server_id) + worker_id


def router_prefix(server_id: str) -> str:
    """Every actor of the router ``server_id`` has a name starting with this."""
    return f"{_PREFIX}{server_id}-"


def named_actors(prefix: str = _PREFIX) -> list[str]:
    """Names of the live named actors in the namespace that start with ``prefix`` (a GCS call)."""
    import ray

    return sorted(
        entry["name"]
        for entry in ray.util.list_named_actors(all_namespaces=True)
        if entry["namespace"] == NAMESPACE and entry["name"].startswith(prefix)
    )


def server_ids() -> list[str]:
    """The server ids of the routers whose controller runs on this Ray cluster."""
    return [name[len(_PREFIX) : -len(_CONTROLLER)] for name in named_actors() if name.endswith(_CONTROLLER)]


def get(name: str) -> Any:
    """The handle of a named actor of the namespace; raises ``ValueError`` if there is none."""
    import ray

    return ray.get_actor(name, namespace=NAMESPACE)
