"""The controller's health check: which workers are gone, and releasing them and their clients.

A worker is gone when Ray says its node is dead (``ray.nodes()``) or its actor died
(``ActorDiedError`` on a ping); one merely slow to answer is left alone. The registry is
pinged too: a restarted one rebuilds itself, a lost one is made again. Replacing the lost
workers is ``launching.reconcile``'s, called by the controller next.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray
from ray.exceptions import ActorDiedError

from rhizomorph.actors import answers
from rhizomorph.actors.fleet import CONTROL_TIMEOUT, Fleet, log


async def release_lost(fleet: Fleet) -> list[str]:
    """Find the lost workers, check the registry, then release the lost ones; returns their ids."""
    alive_nodes = {n["NodeID"] for n in await asyncio.to_thread(ray.nodes) if n.get("Alive")}
    lost = [w for w, info in fleet.worker_info.items() if info["node_id"] not in alive_nodes]
    pings = {w: h.ping.remote() for w, h in fleet.workers.items() if w not in lost}
    interval = max(1.0, fleet.config.health_check_interval)
    for worker_id, answer in (await answers(pings, interval)).items():
        if isinstance(answer, ActorDiedError):
            lost.append(worker_id)
        elif isinstance(answer, BaseException):  # unavailable for now: look again next time
            log.debug("ping %s: %s", worker_id, answer)
    await _check_registry(fleet, interval)
    if lost:
        await forget_workers(fleet, sorted(lost))
    return lost


async def _check_registry(fleet: Fleet, timeout: float) -> None:
    answer = (await answers({"r": fleet.registry.summary.remote()}, timeout))["r"]
    if isinstance(answer, ActorDiedError):  # killed for good: a new one rebuilds from the workers
        log.error("the registry is gone (%s); starting a new one", answer)
        fleet.registry = fleet.create_registry()
        await fleet.call_all(("set_registry", fleet.registry))
        fleet.events.append({"event": "registry_replaced", "time": time.time()})


async def forget_workers(fleet: Fleet, lost: list[str]) -> None:
    """The registry forgets the lost workers and their clients; the survivors are told."""
    if not lost:
        return
    started = time.monotonic()
    handles = {w: fleet.workers.pop(w) for w in lost if w in fleet.workers}
    for worker_id in lost:
        fleet.worker_info.pop(worker_id, None)
    removed: dict[str, list[dict[str, Any]]] = {}
    forgotten = await answers({w: fleet.registry.remove_worker.remote(w) for w in lost}, CONTROL_TIMEOUT)
    for worker_id, answer in forgotten.items():
        if isinstance(answer, BaseException):
            log.error("registry could not forget %s: %s", worker_id, answer)
        else:
            removed.update(answer)
    for handle in handles.values():
        try:
            ray.kill(handle, no_restart=True)  # a hung actor on an alive node must not linger
        except Exception:
            pass
    # Both at once: per worker, Ray runs the calls in the order they were sent.
    calls = [("set_peers", dict(fleet.workers))] + ([("forget_clients", removed)] if removed else [])
    await fleet.call_all(*calls)
    fleet.events.append(
        {
            "event": "worker_lost",
            "workers": lost,
            "clients": sorted(removed),
            "time": time.time(),
            "took_s": round(time.monotonic() - started, 3),
        }
    )
    log.warning("lost gateway worker(s) %s; released %d client(s)", ", ".join(lost), len(removed))
