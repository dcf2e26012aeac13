"""The controller's health check: which workers are gone, and releasing them and their clients.

A worker is gone when Ray says its node is dead (``ray.nodes()``) or its actor died
(``ActorDiedError`` on a ping); one merely slow to answer is left alone. The registry is
pinged too: a restarted one rebuilds itself, a lost one is made again. Replacing the lost
workers is ``launching.reconcile``'s, called by the controller next.

Between checks, ``DeathWatch`` says when one is due, without a call to any actor while nothing
happens: each actor holds a call of the controller's open (``actors.Held``), which Ray fails
when the actor dies, and Ray's nodes are looked at once an interval (a node lost or added).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray
from ray.exceptions import ActorDiedError

from rhizomorph.actors import answers, launching
from rhizomorph.actors.fleet import CONTROL_TIMEOUT, Fleet, log


def on_lost_nodes(fleet: Fleet, alive: list[dict[str, Any]]) -> list[str]:
    """The workers whose node is not among Ray's ``alive`` nodes."""
    alive_ids = {n["NodeID"] for n in alive}
    return [w for w, info in fleet.worker_info.items() if info["node_id"] not in alive_ids]


async def release_lost(fleet: Fleet) -> list[str]:
    """Find the lost workers, check the registry, then release the lost ones; returns their ids."""
    lost = on_lost_nodes(fleet, await launching.alive_nodes())
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


class DeathWatch:
    """When the controller's next health check is due: at once when an actor's held call ends
    (it died, or was replaced), else when Ray's nodes and the fleet disagree (a worker on a
    lost node, a node missing workers), looked at once per interval."""

    def __init__(self) -> None:
        #: "registry" or a worker id -> (the handle held, its call).
        self._held: dict[str, tuple[Any, asyncio.Future[Any]]] = {}
        #: ... -> when its last call was made.
        self._made: dict[str, float] = {}

    def _hold(self, fleet: Fleet, spacing: float) -> None:
        actors = {**fleet.workers, "registry": fleet.registry}
        for key in [k for k, (handle, _) in self._held.items() if actors.get(k) is not handle]:
            self._held.pop(key)[1].cancel()
        now = time.monotonic()
        for key, handle in actors.items():
            # At most one call per actor and interval: one that keeps failing at once is no busy loop.
            if handle is None or key in self._held or now - self._made.get(key, -spacing) < spacing:
                continue
            self._made[key] = now
            self._held[key] = (handle, asyncio.ensure_future(_answer(handle.hold.remote())))

    async def due(self, fleet: Fleet, interval: float) -> bool:
        """Wait up to ``interval``; whether a health check is due."""
        self._hold(fleet, interval)
        calls = [call for _, call in self._held.values()]
        if calls:
            await asyncio.wait(calls, timeout=interval, return_when=asyncio.FIRST_COMPLETED)
        else:
            await asyncio.sleep(interval)
        ended = [key for key, (_, call) in self._held.items() if call.done()]
        for key in ended:
            _, call = self._held.pop(key)
            log.debug("the held call of %s ended: %r", key, call.exception() or call.result())
        if ended:
            return True
        alive = await launching.alive_nodes()
        return bool(on_lost_nodes(fleet, alive) or launching.missing(fleet, alive))

    def close(self) -> None:
        for _, call in self._held.values():
            call.cancel()
        self._held.clear()


async def _answer(ref: Any) -> Any:
    return await ref
