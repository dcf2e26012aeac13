"""The controller: a detached actor that places a router's gateway workers and watches them.

One per router (``server_id``). It creates the registry and the workers, pins workers to every
alive node (``NodeAffinitySchedulingStrategy``, nodes from ``ray.nodes()``), and runs the
watchdog: every ``health_check_interval`` it releases the clients of lost workers, tells the
survivors and starts replacements (docs/deploy.md). Being detached, it outlives the process
that started it (``rhizomorph serve``, a ``Deployment``): a crashed launcher leaves the router
serving, and ``rhizomorph status`` / ``stop`` reach it by name.

It is restartable: the registry and the workers are detached named actors too, so Ray's
restart of a crashed controller (or of one whose node was lost) finds them by name
(``_recover``) and carries on; nothing of the gateway stops meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any

import ray
from ray.exceptions import ActorDiedError

from rhizomorph import logs
from rhizomorph.actors import actor_class, answers, event_loop, naming
from rhizomorph.actors.placement import control_plane, on_node, worker_runtime, workers_for_node
from rhizomorph.config import Config

log = logging.getLogger("rhizomorph.controller")

#: Seconds a starting worker may take (actor creation, import, bind, registry hello).
WORKER_START_TIMEOUT = 120.0
#: Seconds a control call to a live worker may take before the controller moves on.
CONTROL_TIMEOUT = 30.0
#: Watchdog events kept for ``describe`` (the oldest are dropped).
EVENTS_KEPT = 200


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class Controller:
    """Worker ids are ``n<node index>w<number>`` (``n0`` is the node the controller started on);
    a worker that replaces a lost one gets the next number, so an id never names two actors."""

    def __init__(self, config: Config, listener_handover: str = "") -> None:
        logs.configure(config.log_level, config.log_format)
        self.config = config
        #: Where an embedded launcher hands out the port it bound before Ray (listening.py):
        #: offered to one worker at a time until one of them started.
        self._listener_handover = listener_handover
        self.registry: Any = None
        self.workers: dict[str, Any] = {}
        self.worker_info: dict[str, dict[str, Any]] = {}
        #: Ray node id -> node index (the ``n<i>`` of worker ids), in order of first sight.
        self.nodes: dict[str, int] = {}
        #: Ray node id -> the port its gateway workers share.
        self.node_ports: dict[str, int] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self._next_number: dict[str, int] = {}
        self._lock = asyncio.Lock()
        self._stopping = False
        self._watchdog: asyncio.Task[None] | None = None
        #: Whether this controller took over a running router (it was restarted).
        self.restarted = False
        # Runs on the actor's event loop (Ray's async actors): a restarted controller recovers
        # and resumes watching before anyone calls it.
        self._recovery = asyncio.get_event_loop().create_task(self._recover())

    # -- start, recover ------------------------------------------------------------------------
    async def start(self) -> dict[str, Any]:
        """Create the registry and the workers (idempotent: an attached caller gets the router
        as it is). Raises if no node can host a worker."""
        await self._recovery
        async with self._lock:
            if not self.nodes:
                self.nodes[ray.get_runtime_context().get_node_id()] = 0
            # The registry and the workers start at once: a worker binds its port before it
            # greets the registry, and its greeting waits until the registry is up.
            registry_ready = None
            if self.registry is None:
                self.registry = self._create_registry()
                registry_ready = self.registry.ready.remote()
            try:
                if not self.workers:
                    await self._reconcile()
            except Exception:
                if registry_ready is not None:
                    await registry_ready  # a registry that failed to start is what to report
                raise
            if registry_ready is not None:
                await registry_ready
            if not self.workers:
                wanted = self.config.worker_resource
                raise RuntimeError(
                    "no alive Ray node can host a gateway worker"
                    + (f" (none has the resource {wanted!r})" if wanted else "")
                )
        self._start_watchdog()
        log.info(
            "rhizomorph %s: %d gateway worker(s) on %d node(s)",
            self.config.server_id,
            len(self.workers),
            len(self.node_ports),
        )
        return await self.describe()

    def _create_registry(self) -> Any:
        from rhizomorph.actors.registry import Registry

        options = control_plane(
            self.config, naming.registry_name(self.config.server_id), event_loop.environment_value()
        )
        return (
            actor_class(Registry).options(**options).remote(self.config.max_services_per_client, self.config.server_id)
        )

    async def _recover(self) -> None:
        """After a restart: take back the registry and the workers by name, forget the workers
        that died meanwhile, and resume the watchdog. A new controller finds nothing to take."""
        try:
            names = await asyncio.to_thread(naming.named_actors, naming.router_prefix(self.config.server_id))
            workers = naming.worker_prefix(self.config.server_id)
            # What a controller takes back: the registry and the workers (not itself, nor the
            # nodes' chunking actors, which the workers find by name themselves).
            names = [n for n in names if n == naming.registry_name(self.config.server_id) or n.startswith(workers)]
            if not names:
                return
            self.restarted = True
            await self._take_back(names)
        except Exception:
            log.exception("recovering after a restart failed; the watchdog carries on from what was found")
        self._start_watchdog()

    async def _take_back(self, names: list[str]) -> None:
        server_id = self.config.server_id
        prefix = naming.worker_prefix(server_id)
        handles = {}
        for name in names:
            try:
                handle = await asyncio.to_thread(naming.get, name)
            except ValueError:
                continue
            if name == naming.registry_name(server_id):
                self.registry = handle
            elif name.startswith(prefix):
                handles[name[len(prefix) :]] = handle
        infos = await answers({w: h.info.remote() for w, h in handles.items()}, CONTROL_TIMEOUT)
        for worker_id, info in sorted(infos.items()):
            if isinstance(info, dict) and info:
                self._adopt(worker_id, handles[worker_id], info)
            elif not isinstance(info, ActorDiedError):
                log.warning("worker %s did not say what it is (%s); leaving it to the watchdog", worker_id, info)
                self._adopt(worker_id, handles[worker_id], {"worker_id": worker_id, "node_id": "", "port": 0})
        if self.registry is None:
            self.registry = self._create_registry()
        known = set(await self.registry.workers.remote())
        await self._forget_workers(sorted(known - set(self.workers)))
        log.warning("controller restarted: recovered %d worker(s) and the registry", len(self.workers))
        self.events.append({"event": "controller_recovered", "workers": sorted(self.workers), "time": time.time()})

    def _adopt(self, worker_id: str, handle: Any, info: dict[str, Any]) -> None:
        node_id = info["node_id"]
        index, number = (int(part) for part in worker_id[1:].split("w", 1))
        if node_id:
            self.nodes[node_id] = index
            self.node_ports.setdefault(node_id, info["port"])
            self._next_number[node_id] = max(self._next_number.get(node_id, 0), number + 1)
        info = {**info, "node": index}
        self.workers[worker_id], self.worker_info[worker_id] = handle, info

    def _start_watchdog(self) -> None:
        if self.config.health_check_interval > 0 and self._watchdog is None and not self._stopping:
            self._watchdog = asyncio.ensure_future(self._watch())

    # -- what it runs --------------------------------------------------------------------------
    async def describe(self) -> dict[str, Any]:
        """What runs; a restarted controller answers once it has taken the router back."""
        await self._recovery
        return {
            "server_id": self.config.server_id,
            "config": self.config,
            "registry": self.registry,
            "workers": dict(self.workers),
            "worker_info": {w: dict(i) for w, i in self.worker_info.items()},
            "nodes": dict(self.nodes),
            "node_ports": dict(self.node_ports),
            "events": list(self.events),
            "controller_node": ray.get_runtime_context().get_node_id(),
            "restarted": self.restarted,
        }

    async def status(self) -> dict[str, Any]:
        """What ``rhizomorph status`` shows: workers with their connections, the registry's counts."""
        await self._recovery
        stats = await answers({w: h.stats.remote() for w, h in self.workers.items()}, CONTROL_TIMEOUT)
        registry = (await answers({"r": self.registry.summary.remote()}, CONTROL_TIMEOUT))["r"]
        workers = []
        for worker_id, info in sorted(self.worker_info.items()):
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
            "server_id": self.config.server_id,
            "urls": self.node_urls(),
            "workers": workers,
            "connections": sum(w["connections"] or 0 for w in workers),
            "registry": registry if isinstance(registry, dict) else {"error": str(registry)},
            "controller_node": description["controller_node"],
            "restarted": self.restarted,
            "events": description["events"][-10:],
        }

    def node_urls(self) -> list[str]:
        from rhizomorph.config import url_host

        hosting = {info.get("node_id") for info in self.worker_info.values()}
        ports = sorted((self.nodes[n], p) for n, p in self.node_ports.items() if n in hosting and n in self.nodes)
        return [f"ws://{url_host(self.config.host)}:{port}" for _, port in ports]

    async def stats(self) -> list[dict[str, Any]]:
        await self._recovery
        return list((await answers({w: h.stats.remote() for w, h in self.workers.items()}, CONTROL_TIMEOUT)).values())

    async def set_batching(self, preset: str | None, fields: dict[str, Any]) -> Config:
        """Change batching on every worker at run time (a preset and/or Config batch fields)."""
        await self._recovery
        async with self._lock:
            config = self.config.with_preset(preset) if preset else self.config
            self.config = config.replace(**fields)
            policy = self.config.batch_policy()
            await asyncio.gather(*(w.set_batch_policy.remote(policy) for w in self.workers.values()))
            return self.config

    async def shutdown(self) -> None:
        """Stop the workers and the registry; the caller then kills this actor."""
        await self._recovery
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        async with self._lock:
            await answers({w: h.stop.remote() for w, h in self.workers.items()}, 10.0)
            for handle in [*self.workers.values(), self.registry]:
                if handle is not None:
                    try:
                        ray.kill(handle, no_restart=True)
                    except Exception as exc:
                        log.debug("killing %s: %s", handle, exc)
            self.workers.clear()
            self.worker_info.clear()
            self.registry = None

    async def ping(self) -> str:
        return self.config.server_id

    # -- placement -----------------------------------------------------------------------------
    async def reconcile(self) -> list[str]:
        await self._recovery
        async with self._lock:
            return await self._reconcile()

    async def _reconcile(self) -> list[str]:
        """Start the workers each alive node is missing (new nodes, lost workers). Returns their ids."""
        alive = [n for n in await asyncio.to_thread(ray.nodes) if n.get("Alive")]
        alive.sort(key=lambda n: self.nodes.get(n["NodeID"], len(self.nodes)))
        plan: list[tuple[str, int]] = []
        for node in alive:
            node_id = node["NodeID"]
            wanted = workers_for_node(self.config, node.get("Resources") or {})
            missing = wanted - sum(1 for i in self.worker_info.values() if i["node_id"] == node_id)
            if missing > 0:
                if node_id not in self.nodes:
                    self.nodes[node_id] = max(self.nodes.values(), default=-1) + 1
                plan.append((node_id, missing))
        if not plan:
            return []
        started = await self._start_workers(plan)
        if started:
            await self._call_all(("set_peers", dict(self.workers)))
            self.events.append({"event": "workers_started", "workers": started, "time": time.time()})
        return started

    def _known_port(self, node_id: str) -> int | None:
        """The port a node's workers use, or ``None`` while it is still to be picked (port 0)."""
        if node_id in self.node_ports:
            return self.node_ports[node_id]
        if self.config.distinct_node_ports:
            return self.config.port + self.nodes[node_id] if self.config.port else None
        if self.config.port:
            return self.config.port
        return next(iter(self.node_ports.values()), None)  # port 0: the first node's pick, everywhere

    async def _start_workers(self, plan: list[tuple[str, int]]) -> list[str]:
        remaining = dict(plan)
        started: list[str] = []
        # With port 0 one worker binds first and resolves the port; the others then share it
        # (per node with distinct_node_ports, else cluster-wide).
        unresolved = [node_id for node_id in remaining if self._known_port(node_id) is None]
        if unresolved:
            first = unresolved if self.config.distinct_node_ports else unresolved[:1]
            started += await self._launch([(node_id, 0) for node_id in first])
            for node_id in first:
                remaining[node_id] -= 1
        slots = [
            (node_id, port)
            for node_id, count in remaining.items()
            if (port := self._known_port(node_id)) is not None
            for _ in range(count)
        ]
        started += await self._launch(slots)
        return started

    async def _launch(self, slots: list[tuple[str, int]]) -> list[str]:
        """Create one worker per (node, port) slot, pinned to its node; wait until they serve."""
        from rhizomorph.actors.worker import GatewayWorker

        created: dict[str, tuple[str, Any]] = {}
        handover = ""  # the worker offered the launcher's socket
        runtime = worker_runtime(self.config)
        for node_id, port in slots:
            number = self._next_number.get(node_id, 0)
            self._next_number[node_id] = number + 1
            worker_id = f"n{self.nodes[node_id]}w{number}"
            options: dict[str, Any] = {
                "scheduling_strategy": on_node(node_id),
                "name": naming.worker_name(self.config.server_id, worker_id),
                "namespace": naming.NAMESPACE,
                "lifetime": "detached",
                **runtime,
            }
            if self.config.worker_resource:
                options["resources"] = {self.config.worker_resource: 1}
            handle = (
                actor_class(GatewayWorker)
                .options(**options)
                .remote(self.config.replace(port=port), worker_id, self.registry)
            )
            created[worker_id] = (node_id, handle)
            if self._listener_handover and not handover and node_id == ray.get_runtime_context().get_node_id():
                handover = worker_id
        results = await answers(
            {w: h.start.remote(self._listener_handover if w == handover else "") for w, (_, h) in created.items()},
            WORKER_START_TIMEOUT,
        )
        started, errors = [], []
        for worker_id, (node_id, handle) in created.items():
            info = results[worker_id]
            if isinstance(info, BaseException):
                errors.append(f"{worker_id}: {info}")
                ray.kill(handle, no_restart=True)
                continue
            if worker_id == handover:
                self._listener_handover = ""
            info["node"] = self.nodes[node_id]
            self.workers[worker_id], self.worker_info[worker_id] = handle, info
            self.node_ports.setdefault(node_id, info["port"])
            if self.config.port == 0 and not self.config.distinct_node_ports:
                self.config = self.config.replace(port=info["port"])
            started.append(worker_id)
        if errors:
            log.error("gateway worker(s) failed to start: %s", "; ".join(errors))
            if not self.workers:
                raise RuntimeError("gateway worker(s) failed to start: " + "; ".join(errors))
        return started

    # -- watchdog ------------------------------------------------------------------------------
    async def _watch(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.config.health_check_interval)
            try:
                await self.check()
            except Exception:
                log.exception("health check failed")

    async def check(self) -> list[str]:
        """One health check: release the workers that are gone, then start the missing ones.

        A worker is gone when Ray says its node is dead (``ray.nodes()``) or its actor died
        (``ActorDiedError`` on a ping). A worker that is merely slow to answer is left alone.
        Returns the ids of the lost workers. The registry is pinged too: a restarted one
        rebuilds itself, a lost one is made again.
        """
        await self._recovery
        async with self._lock:
            if self._stopping or not self.workers:
                return []
            alive_nodes = {n["NodeID"] for n in await asyncio.to_thread(ray.nodes) if n.get("Alive")}
            lost = [w for w, info in self.worker_info.items() if info["node_id"] not in alive_nodes]
            pings = {w: h.ping.remote() for w, h in self.workers.items() if w not in lost}
            interval = max(1.0, self.config.health_check_interval)
            for worker_id, answer in (await answers(pings, interval)).items():
                if isinstance(answer, ActorDiedError):
                    lost.append(worker_id)
                elif isinstance(answer, BaseException):  # unavailable for now: look again next time
                    log.debug("ping %s: %s", worker_id, answer)
            await self._check_registry(interval)
            if lost:
                await self._forget_workers(sorted(lost))
            if not self._stopping:
                await self._reconcile()
            return lost

    async def _check_registry(self, timeout: float) -> None:
        answer = (await answers({"r": self.registry.summary.remote()}, timeout))["r"]
        if isinstance(answer, ActorDiedError):  # killed for good: a new one rebuilds from the workers
            log.error("the registry is gone (%s); starting a new one", answer)
            self.registry = self._create_registry()
            await self._call_all(("set_registry", self.registry))
            self.events.append({"event": "registry_replaced", "time": time.time()})

    async def _forget_workers(self, lost: list[str]) -> None:
        """The registry forgets the lost workers and their clients; the survivors are told."""
        if not lost:
            return
        started = time.monotonic()
        handles = {w: self.workers.pop(w) for w in lost if w in self.workers}
        for worker_id in lost:
            self.worker_info.pop(worker_id, None)
        removed: dict[str, list[dict[str, Any]]] = {}
        forgotten = await answers({w: self.registry.remove_worker.remote(w) for w in lost}, CONTROL_TIMEOUT)
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
        calls = [("set_peers", dict(self.workers))] + ([("forget_clients", removed)] if removed else [])
        await self._call_all(*calls)
        self.events.append(
            {
                "event": "worker_lost",
                "workers": lost,
                "clients": sorted(removed),
                "time": time.time(),
                "took_s": round(time.monotonic() - started, 3),
            }
        )
        log.warning("lost gateway worker(s) %s; released %d client(s)", ", ".join(lost), len(removed))

    async def _call_all(self, *calls: tuple[str, Any]) -> None:
        """Make each ``(method, argument)`` call on every worker, all sent at once; a worker that
        fails is left to the next health check."""
        refs = {
            f"{method} on {w}": getattr(h, method).remote(argument)
            for w, h in self.workers.items()
            for method, argument in calls
        }
        for what, answer in (await answers(refs, CONTROL_TIMEOUT)).items():
            if isinstance(answer, BaseException):
                log.warning("%s failed: %s", what, answer)
