"""Start and stop a router: Ray (embedded or joined), the registry and the gateway workers.

Placement and membership are Ray's: gateway workers are pinned to nodes with
``NodeAffinitySchedulingStrategy``, one set per alive node of ``ray.nodes()``, and a watchdog
thread of the launcher (the driver) polls that same view to notice lost workers and new nodes.
See docs/deploy.md.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

from rhizomorph.actors import actor_class
from rhizomorph.config import Config, url_host

log = logging.getLogger("rhizomorph")

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Seconds a starting worker may take (actor creation, import, bind, registry hello).
WORKER_START_TIMEOUT = 120.0
#: Seconds a control call to a live worker may take before the launcher moves on.
CONTROL_TIMEOUT = 30.0


def ensure_ray(address: str = "", **init_kwargs: Any) -> bool:
    """Connect to Ray. Returns ``True`` if this call started an embedded local Ray.

    Without an address, Ray is started embedded and bound to 127.0.0.1 only: a reachable Ray
    cluster runs anyone's code. Ray decides the bind address from its node IP, which it takes
    from the loopback interface only in its single-machine mode.
    """
    if not address:
        os.environ[LOCAL_ONLY_ENV] = "0"
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, **init_kwargs)
        return False
    ray_constants.ENABLE_RAY_CLUSTER = False
    # "local": always a new instance of our own, never another Ray found running on this machine.
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, **init_kwargs)
    return True


def workers_for_node(config: Config, resources: Mapping[str, float]) -> int:
    """How many gateway workers a node with these Ray resources gets.

    ``worker_resource`` set: one per unit of that resource (``workers`` caps it), none on nodes
    without it. Otherwise ``workers`` if set, else ``workers_per_cpu`` per CPU (at least one).
    """
    if config.worker_resource:
        units = int(resources.get(config.worker_resource, 0))
        return min(units, config.workers) if config.workers > 0 else units
    if config.workers > 0:
        return config.workers
    return max(1, int(resources.get("CPU", 0) * config.workers_per_cpu))


def _on_node(node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


class Deployment:
    """A running router: one registry actor plus gateway workers on every alive Ray node.

    Worker ids are ``n<node index>w<number>`` (``n0`` is the launcher's own node); a worker
    that replaces a lost one gets the next number, so an id never names two actors.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry: Any = None
        self.workers: dict[str, Any] = {}
        self.worker_info: dict[str, dict[str, Any]] = {}
        #: Ray node id -> node index (the ``n<i>`` of worker ids), in order of first sight.
        self.nodes: dict[str, int] = {}
        #: Ray node id -> the port its gateway workers share.
        self.node_ports: dict[str, int] = {}
        #: What the watchdog did: ``{"event": "worker_lost" | "workers_started", ...}``.
        self.events: list[dict[str, Any]] = []
        self._next_number: dict[str, int] = {}
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._watchdog: threading.Thread | None = None

    # -- addresses -----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The gateway of the launcher's node (``n0``); every node serves the same protocol."""
        urls = self.node_urls
        return urls[0] if urls else self._url(self.config.port)

    @property
    def node_urls(self) -> list[str]:
        """One URL per node hosting workers, by node index."""
        by_index = sorted(
            (self.nodes[node_id], port)
            for node_id, port in self.node_ports.items()
            if any(i["node_id"] == node_id for i in self.worker_info.values())
        )
        return [self._url(port) for _, port in by_index]

    def _url(self, port: int) -> str:
        return f"ws://{url_host(self.config.host)}:{port}"

    def workers_on(self, node_id: str) -> list[str]:
        return sorted(w for w, info in self.worker_info.items() if info["node_id"] == node_id)

    # -- start ---------------------------------------------------------------------------------
    def start(self) -> Deployment:
        import ray

        from rhizomorph.actors.registry import Registry

        # The registry lives on the launcher's node: if that node goes, the driver owning every
        # actor goes with it, so nothing is lost by pinning it there.
        here = ray.get_runtime_context().get_node_id()
        self.nodes[here] = 0
        self.registry = (
            actor_class(Registry)
            .options(scheduling_strategy=_on_node(here))
            .remote(self.config.max_services_per_client)
        )
        ray.get(self.registry.ready.remote())
        try:
            self.reconcile()
            if not self.workers:
                raise RuntimeError(
                    "no alive Ray node can host a gateway worker"
                    + (
                        f" (none has the resource {self.config.worker_resource!r})"
                        if self.config.worker_resource
                        else ""
                    )
                )
        except BaseException:
            self.stop()
            raise
        if self.config.health_check_interval > 0:
            self._stopping.clear()
            self._watchdog = threading.Thread(target=self._watch, name="rhizomorph-watchdog", daemon=True)
            self._watchdog.start()
        log.info(
            "rhizomorph listening on %s with %d gateway worker(s) on %d node(s)",
            ", ".join(self.node_urls),
            len(self.workers),
            len(self.node_urls),
        )
        return self

    def reconcile(self) -> list[str]:
        """Start the workers each alive node is missing (new nodes, lost workers). Returns their ids."""
        import ray

        with self._lock:
            alive = [n for n in ray.nodes() if n.get("Alive")]
            alive.sort(key=lambda n: self.nodes.get(n["NodeID"], len(self.nodes)))
            plan: list[tuple[str, int]] = []
            for node in alive:
                node_id = node["NodeID"]
                wanted = workers_for_node(self.config, node.get("Resources") or {})
                missing = wanted - len(self.workers_on(node_id))
                if missing > 0:
                    self.nodes.setdefault(node_id, len(self.nodes))
                    plan.append((node_id, missing))
            if not plan:
                return []
            started = self._start_workers(plan)
            if started:
                self._push_peers()
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

    def _start_workers(self, plan: list[tuple[str, int]]) -> list[str]:
        remaining = dict(plan)
        started: list[str] = []
        # With port 0 one worker binds first and resolves the port; the others then share it
        # (per node with distinct_node_ports, else cluster-wide).
        unresolved = [node_id for node_id in remaining if self._known_port(node_id) is None]
        if unresolved:
            first = unresolved if self.config.distinct_node_ports else unresolved[:1]
            started += self._launch([(node_id, 0) for node_id in first])
            for node_id in first:
                remaining[node_id] -= 1
        slots = [
            (node_id, port)
            for node_id, count in remaining.items()
            if (port := self._known_port(node_id)) is not None
            for _ in range(count)
        ]
        started += self._launch(slots)
        return started

    def _launch(self, slots: list[tuple[str, int]]) -> list[str]:
        """Create one worker per (node, port) slot, pinned to its node; wait until they serve."""
        import ray

        from rhizomorph.actors.worker import GatewayWorker

        if not slots:
            return []
        created: list[tuple[str, str, Any]] = []
        for node_id, port in slots:
            number = self._next_number.get(node_id, 0)
            self._next_number[node_id] = number + 1
            worker_id = f"n{self.nodes[node_id]}w{number}"
            options: dict[str, Any] = {"scheduling_strategy": _on_node(node_id)}
            if self.config.worker_resource:
                options["resources"] = {self.config.worker_resource: 1}
            handle = (
                actor_class(GatewayWorker)
                .options(**options)
                .remote(self.config.replace(port=port), worker_id, self.registry)
            )
            created.append((worker_id, node_id, handle))
        refs = [handle.start.remote() for _, _, handle in created]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=WORKER_START_TIMEOUT)
        ready_set = set(ready)
        started, errors = [], []
        for (worker_id, node_id, handle), ref in zip(created, refs):
            try:
                if ref not in ready_set:
                    raise TimeoutError(f"not started within {WORKER_START_TIMEOUT:.0f} s")
                info = ray.get(ref)
            except Exception as exc:
                errors.append(f"{worker_id}: {exc}")
                ray.kill(handle, no_restart=True)
                continue
            info["node"] = self.nodes[node_id]
            self.workers[worker_id], self.worker_info[worker_id] = handle, info
            self.node_ports.setdefault(node_id, info["port"])
            if self.config.port == 0 and not self.config.distinct_node_ports:
                self.config = self.config.replace(port=info["port"])
            started.append(worker_id)
        if errors:
            message = "gateway worker(s) failed to start: " + "; ".join(errors)
            if not self.workers:
                raise RuntimeError(message)
            log.error(message)
        return started

    # -- watchdog ------------------------------------------------------------------------------
    def _watch(self) -> None:
        while not self._stopping.wait(self.config.health_check_interval):
            try:
                self.check()
            except Exception:
                log.exception("health check failed")

    def check(self) -> list[str]:
        """One health check: release the workers that are gone, then start the missing ones.

        A worker is gone when Ray says its node is dead (``ray.nodes()``) or its actor died
        (``ActorDiedError`` on a ping). A worker that is merely slow to answer is left alone.
        Returns the ids of the lost workers.
        """
        import ray
        from ray.exceptions import ActorDiedError

        with self._lock:
            if self._stopping.is_set() or not self.workers:
                return []
            alive_nodes = {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
            lost = [w for w, info in self.worker_info.items() if info["node_id"] not in alive_nodes]
            pings = {w: h.ping.remote() for w, h in self.workers.items() if w not in lost}
            ready_set = set()
            if pings:
                ready, _ = ray.wait(
                    list(pings.values()), num_returns=len(pings), timeout=max(1.0, self.config.health_check_interval)
                )
                ready_set = set(ready)
            for worker_id, ref in pings.items():
                if ref in ready_set:
                    try:
                        ray.get(ref)
                    except ActorDiedError:
                        lost.append(worker_id)
                    except Exception as exc:  # unavailable for now: look again next time
                        log.debug("ping %s: %s", worker_id, exc)
            if lost:
                self._forget_workers(sorted(lost))
            if not self._stopping.is_set():
                self.reconcile()
            return lost

    def _forget_workers(self, lost: list[str]) -> None:
        """The registry forgets the lost workers and their clients; the survivors are told."""
        import ray

        started = time.monotonic()
        handles = {w: self.workers.pop(w) for w in lost}
        for worker_id in lost:
            self.worker_info.pop(worker_id)
        removed: dict[str, list[dict[str, Any]]] = {}
        for worker_id in lost:
            try:
                removed.update(ray.get(self.registry.remove_worker.remote(worker_id), timeout=CONTROL_TIMEOUT))
            except Exception as exc:
                log.error("registry could not forget %s: %s", worker_id, exc)
        for handle in handles.values():
            try:
                ray.kill(handle, no_restart=True)  # a hung actor on an alive node must not linger
            except Exception:
                pass
        # Both at once: per worker, Ray runs the calls in the order they were sent.
        calls = [("set_peers", dict(self.workers))] + ([("forget_clients", removed)] if removed else [])
        self._call_all(*calls)
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

    def _push_peers(self) -> None:
        self._call_all(("set_peers", dict(self.workers)))

    def _call_all(self, *calls: tuple[str, Any]) -> None:
        """Make each ``(method, argument)`` call on every worker, all sent at once; a worker that
        fails is left to the next health check."""
        import ray

        refs = {
            (w, method): getattr(h, method).remote(argument)
            for w, h in self.workers.items()
            for method, argument in calls
        }
        if not refs:
            return
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=CONTROL_TIMEOUT)
        ready_set = set(ready)
        for (worker_id, method), ref in refs.items():
            try:
                if ref not in ready_set:
                    raise TimeoutError("no answer")
                ray.get(ref)
            except Exception as exc:
                log.warning("%s on %s failed: %s", method, worker_id, exc)

    # -- run time ------------------------------------------------------------------------------
    def set_batching(self, preset: str | None = None, **fields: Any) -> None:
        """Change batching on every worker at run time (a preset and/or Config batch fields)."""
        import ray

        with self._lock:
            config = self.config.with_preset(preset) if preset else self.config
            self.config = config.replace(**fields)
            policy = self.config.batch_policy()
            ray.get([w.set_batch_policy.remote(policy) for w in self.workers.values()])

    def stats(self) -> list[dict[str, Any]]:
        import ray

        with self._lock:
            handles = list(self.workers.values())
        return ray.get([w.stats.remote() for w in handles])

    def stop(self) -> None:
        import ray

        self._stopping.set()
        if self._watchdog is not None and self._watchdog is not threading.current_thread():
            self._watchdog.join(timeout=CONTROL_TIMEOUT)
        self._watchdog = None
        with self._lock:
            if not self.workers and self.registry is None:
                return
            try:
                ray.get([w.stop.remote() for w in self.workers.values()], timeout=10)
            except Exception as exc:  # a worker already dead still gets killed below
                log.debug("stopping workers: %s", exc)
            for handle in list(self.workers.values()) + ([self.registry] if self.registry else []):
                try:
                    ray.kill(handle, no_restart=True)
                except Exception as exc:
                    log.debug("killing %s: %s", handle, exc)
            self.workers.clear()
            self.worker_info.clear()
            self.registry = None

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
