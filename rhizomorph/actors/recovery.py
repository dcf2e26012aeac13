"""A restarted controller takes its router back: the registry and the workers, by name.

They are detached named actors, so they outlive a crashed controller (or its lost node); Ray's
restart of it finds them in its list of named actors. Workers the registry knows but that are
gone by now are forgotten (their clients released); the watchdog replaces them.
"""

from __future__ import annotations

import asyncio
import time

from ray.exceptions import ActorDiedError

from rhizomorph.actors import answers, naming
from rhizomorph.actors.fleet import CONTROL_TIMEOUT, Fleet, log
from rhizomorph.actors.watchdog import forget_workers


async def router_actors(server_id: str) -> list[str]:
    """The names of the router's registry and workers that Ray knows (none for a new router)."""
    names = await asyncio.to_thread(naming.named_actors, naming.router_prefix(server_id))
    workers = naming.worker_prefix(server_id)
    # What a controller takes back: the registry and the workers (not itself, nor the
    # nodes' chunking actors, which the workers find by name themselves).
    return [n for n in names if n == naming.registry_name(server_id) or n.startswith(workers)]


async def take_back(fleet: Fleet, names: list[str]) -> None:
    """Adopt the actors of ``names`` (as each says it is), then forget the registry's workers
    that are not among them."""
    server_id = fleet.config.server_id
    prefix = naming.worker_prefix(server_id)
    handles = {}
    for name in names:
        try:
            handle = await asyncio.to_thread(naming.get, name)
        except ValueError:
            continue
        if name == naming.registry_name(server_id):
            fleet.registry = handle
        elif name.startswith(prefix):
            handles[name[len(prefix) :]] = handle
    infos = await answers({w: h.info.remote() for w, h in handles.items()}, CONTROL_TIMEOUT)
    for worker_id, info in sorted(infos.items()):
        if isinstance(info, dict) and info:
            fleet.adopt(worker_id, handles[worker_id], info)
        elif not isinstance(info, ActorDiedError):
            log.warning("worker %s did not say what it is (%s); leaving it to the watchdog", worker_id, info)
            fleet.adopt(worker_id, handles[worker_id], {"worker_id": worker_id, "node_id": "", "port": 0})
    if fleet.registry is None:
        fleet.registry = fleet.create_registry()
    known = set(await fleet.registry.workers.remote())
    await forget_workers(fleet, sorted(known - set(fleet.workers)))
    log.warning("controller restarted: recovered %d worker(s) and the registry", len(fleet.workers))
    fleet.events.append({"event": "controller_recovered", "workers": sorted(fleet.workers), "time": time.time()})
