"""The controller: a detached actor that places a router's gateway workers and watches them.

One per router (``server_id``). It creates the registry and the workers (``launching.py``:
pinned to every alive node, nodes from ``ray.nodes()``), and runs the watchdog: when an actor
dies, or Ray's nodes (looked at every ``health_check_interval``) say a node was lost or added,
it releases the clients of lost workers, tells the survivors (``watchdog.py``) and starts
replacements (docs/deploy.md). Being detached, it outlives the process that started it
(``rhizomorph serve``, a ``Deployment``): a crashed launcher leaves the router serving, and
``rhizomorph status`` / ``stop`` reach it by name.

It is restartable: the registry and the workers are detached named actors too, so Ray's
restart of a crashed controller (or of one whose node was lost) finds them by name
(``recovery.py``) and carries on; nothing of the gateway stops meanwhile. What it knows of
them is its ``Fleet`` (``fleet.py``); this module holds the actor's calls and orders them.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from rhizomorph import logs
from rhizomorph.actors import answers, launching, recovery, watchdog
from rhizomorph.actors.fleet import CONTROL_TIMEOUT, Fleet, log
from rhizomorph.config import Config


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Controller:
    def __init__(self, config: Config, listener_handover: str = "") -> None:
        logs.configure(config.log_level, config.log_format)
        self._fleet = Fleet(config, listener_handover)
        self._lock = asyncio.Lock()
        self._stopping = False
        self._watchdog: asyncio.Task[None] | None = None
        #: Whether this controller took over a running router (it was restarted).
        self._restarted = False
        # Runs on the actor's event loop (Ray's async actors): a restarted controller recovers
        # and resumes watching before anyone calls it.
        self._recovery = asyncio.get_event_loop().create_task(self._recover())

    # -- start, recover ------------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        """Create the registry and the workers (idempotent: an attached caller gets the router
        as it is). Raises if no node can host a worker."""
        await self._recovery
        fleet = self._fleet
        async with self._lock:
            if not fleet.nodes:
                fleet.nodes[ray.get_runtime_context().get_node_id()] = 0
            # The registry and the workers start at once: a worker binds its port before it
            # greets the registry, and its greeting waits until the registry is up.
            registry_ready = None
            if fleet.registry is None:
                fleet.registry = fleet.create_registry()
                registry_ready = fleet.registry.ready.remote()
            try:
                if not fleet.workers:
                    await launching.reconcile(fleet)
            except Exception:
                if registry_ready is not None:
                    await registry_ready  # a registry that failed to start is what to report
                raise
            if registry_ready is not None:
                await registry_ready
            if not fleet.workers:
                wanted = fleet.config.worker_resource
                raise RuntimeError(
                    "no alive Ray node can host a gateway worker"
                    + (f" (none has the resource {wanted!r})" if wanted else "")
                )
        self._start_watchdog()
        log.info(
            "rhizomorph %s: %d gateway worker(s) on %d node(s)",
            fleet.config.server_id,
            len(fleet.workers),
            len(fleet.node_ports),
        )
        return await self.describe()

    async def _recover(self) -> None:
        """After a restart: take back the registry and the workers by name, forget the workers
        that died meanwhile, and resume the watchdog. A new controller finds nothing to take."""
        try:
            names = await recovery.router_actors(self._fleet.config.server_id)
            if not names:
                return
            self._restarted = True
            await recovery.take_back(self._fleet, names)
        except Exception:
            log.exception("recovering after a restart failed; the watchdog carries on from what was found")
        self._start_watchdog()

    def _start_watchdog(self) -> None:
        if self._fleet.config.health_check_interval > 0 and self._watchdog is None and not self._stopping:
            self._watchdog = asyncio.ensure_future(self._watch())

    # -- what it runs --------------------------------------------------------------------------
    async def describe(self) -> dict[str, Any]:
        """What runs; a restarted controller answers once it has taken the router back."""
        await self._recovery
        fleet = self._fleet
        return {
            "server_id": fleet.config.server_id,
            "config": fleet.config,
            "registry": fleet.registry,
            "workers": dict(fleet.workers),
            "worker_info": {w: dict(i) for w, i in fleet.worker_info.items()},
            "nodes": dict(fleet.nodes),
            "node_ports": dict(fleet.node_ports),
            "events": list(fleet.events),
            "controller_node": ray.get_runtime_context().get_node_id(),
            "restarted": self._restarted,
        }

    async def status(self) -> dict[str, Any]:
        """What ``rhizomorph status`` shows: workers with their connections, the registry's counts."""
        await self._recovery
        fleet = self._fleet
        stats = await answers({w: h.stats.remote() for w, h in fleet.workers.items()}, CONTROL_TIMEOUT)
        registry = (await answers({"r": fleet.registry.summary.remote()}, CONTROL_TIMEOUT))["r"]
        workers = []
        for worker_id, info in sorted(fleet.worker_info.items()):
            seen = stats.get(worker_id)
            workers.append(
                {
                    "worker_id": worker_id,
                    "node": info.get("node"),
                    "node_id": info.get("node_id"),
                    "port": info.get("port"),
                    "pid": info.get("pid"),
                    "connections": seen["connections"] if isinstance(seen, dict) else None,
                    "error": None if isinstance(seen, dict) else str(seen),
                }
            )
        description = await self.describe()
        return {
            "server_id": fleet.config.server_id,
            "urls": fleet.node_urls(),
            "workers": workers,
            "connections": sum(w["connections"] or 0 for w in workers),
            "registry": registry if isinstance(registry, dict) else {"error": str(registry)},
            "controller_node": description["controller_node"],
            "restarted": self._restarted,
            "events": description["events"][-10:],
        }

    def node_urls(self) -> list[str]:
        return self._fleet.node_urls()

    async def stats(self) -> list[dict[str, Any]]:
        await self._recovery
        workers = self._fleet.workers
        return list((await answers({w: h.stats.remote() for w, h in workers.items()}, CONTROL_TIMEOUT)).values())

    async def set_batching(self, preset: str | None, fields: dict[str, Any]) -> Config:
        """Change batching on every worker at run time (a preset and/or Config batch fields)."""
        await self._recovery
        fleet = self._fleet
        async with self._lock:
            config = fleet.config.with_preset(preset) if preset else fleet.config
            fleet.config = config.replace(**fields)
            policy = fleet.config.batch_policy()
            await asyncio.gather(*(w.set_batch_policy.remote(policy) for w in fleet.workers.values()))
            return fleet.config

    async def shutdown(self) -> None:
        """Stop the workers and the registry; the caller then kills this actor."""
        await self._recovery
        fleet = self._fleet
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        async with self._lock:
            await answers({w: h.stop.remote() for w, h in fleet.workers.items()}, 10.0)
            for handle in [*fleet.workers.values(), fleet.registry]:
                if handle is not None:
                    try:
                        ray.kill(handle, no_restart=True)
                    except Exception as exc:
                        log.debug("killing %s: %s", handle, exc)
            fleet.workers.clear()
            fleet.worker_info.clear()
            fleet.registry = None

    async def ping(self) -> str:
        return self._fleet.config.server_id

    # -- placement and watchdog ----------------------------------------------------------------
    async def reconcile(self) -> list[str]:
        await self._recovery
        async with self._lock:
            return await launching.reconcile(self._fleet)

    async def _watch(self) -> None:
        watch = watchdog.DeathWatch()
        try:
            while not self._stopping:
                interval = self._fleet.config.health_check_interval
                try:
                    due = await watch.due(self._fleet, interval)
                except Exception:
                    log.exception("watching the router failed")
                    await asyncio.sleep(interval)
                    due = True
                if due and not self._stopping:
                    try:
                        await self.check()
                    except Exception:
                        log.exception("health check failed")
        finally:
            watch.close()

    async def check(self) -> list[str]:
        """One health check (``watchdog.py``): release the workers that are gone, then start the
        missing ones. Returns the ids of the lost workers."""
        await self._recovery
        async with self._lock:
            if self._stopping or not self._fleet.workers:
                return []
            lost = await watchdog.release_lost(self._fleet)
            if not self._stopping:
                await launching.reconcile(self._fleet)
            return lost
