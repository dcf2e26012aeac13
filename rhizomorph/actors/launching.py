"""Starting the gateway workers a router is missing: one per slot a node wants, pinned to it.

The controller (``controller.py``) calls ``reconcile`` at start and after every health check;
how many workers a node gets and the options that pin them come from ``placement.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ray

from rhizomorph.actors import actor_class, answers, naming
from rhizomorph.actors.fleet import Fleet, log
from rhizomorph.actors.placement import on_node, worker_runtime, workers_for_node

#: Seconds a starting worker may take (actor creation, import, bind, registry hello).
WORKER_START_TIMEOUT = 120.0


async def alive_nodes() -> list[dict[str, Any]]:
    """Ray's alive nodes (``ray.nodes()``: a call to the GCS)."""
    return [n for n in await asyncio.to_thread(ray.nodes) if n.get("Alive")]


def missing(fleet: Fleet, alive: list[dict[str, Any]]) -> list[tuple[str, int]]:
    """(node id, workers it is missing) of the ``alive`` nodes that want more than they have."""
    plan: list[tuple[str, int]] = []
    for node in sorted(alive, key=lambda n: fleet.nodes.get(n["NodeID"], len(fleet.nodes))):
        node_id = node["NodeID"]
        wanted = workers_for_node(fleet.config, node.get("Resources") or {})
        count = wanted - sum(1 for i in fleet.worker_info.values() if i["node_id"] == node_id)
        if count > 0:
            plan.append((node_id, count))
    return plan


async def reconcile(fleet: Fleet) -> list[str]:
    """Start the workers each alive node is missing (new nodes, lost workers). Returns their ids."""
    plan = missing(fleet, await alive_nodes())
    if not plan:
        return []
    for node_id, _ in plan:
        if node_id not in fleet.nodes:
            fleet.nodes[node_id] = max(fleet.nodes.values(), default=-1) + 1
    started = await _start_workers(fleet, plan)
    if started:
        await fleet.call_all(("set_peers", dict(fleet.workers)))
        fleet.events.append({"event": "workers_started", "workers": started, "time": time.time()})
    return started


def _known_port(fleet: Fleet, node_id: str) -> int | None:
    """The port a node's workers use, or ``None`` while it is still to be picked (port 0)."""
    config = fleet.config
    if node_id in fleet.node_ports:
        return fleet.node_ports[node_id]
    if config.distinct_node_ports:
        return config.port + fleet.nodes[node_id] if config.port else None
    if config.port:
        return config.port
    return next(iter(fleet.node_ports.values()), None)  # port 0: the first node's pick, everywhere


async def _start_workers(fleet: Fleet, plan: list[tuple[str, int]]) -> list[str]:
    remaining = dict(plan)
    started: list[str] = []
    # With port 0 one worker binds first and resolves the port; the others then share it
    # (per node with distinct_node_ports, else cluster-wide).
    unresolved = [node_id for node_id in remaining if _known_port(fleet, node_id) is None]
    if unresolved:
        first = unresolved if fleet.config.distinct_node_ports else unresolved[:1]
        started += await _launch(fleet, [(node_id, 0) for node_id in first])
        for node_id in first:
            remaining[node_id] -= 1
    slots = [
        (node_id, port)
        for node_id, count in remaining.items()
        if (port := _known_port(fleet, node_id)) is not None
        for _ in range(count)
    ]
    started += await _launch(fleet, slots)
    return started


async def _launch(fleet: Fleet, slots: list[tuple[str, int]]) -> list[str]:
    """Create one worker per (node, port) slot, pinned to its node; wait until they serve."""
    from rhizomorph.actors.worker import GatewayWorker

    created: dict[str, tuple[str, Any]] = {}
    handover = ""  # the worker offered the launcher's socket
    runtime = worker_runtime(fleet.config)
    for node_id, port in slots:
        number = fleet.next_number.get(node_id, 0)
        fleet.next_number[node_id] = number + 1
        worker_id = f"n{fleet.nodes[node_id]}w{number}"
        options: dict[str, Any] = {
            "scheduling_strategy": on_node(node_id),
            "name": naming.worker_name(fleet.config.server_id, worker_id),
            "namespace": naming.NAMESPACE,
            "lifetime": "detached",
            **runtime,
        }
        if fleet.config.worker_resource:
            options["resources"] = {fleet.config.worker_resource: 1}
        handle = (
            actor_class(GatewayWorker)
            .options(**options)
            .remote(fleet.config.replace(port=port), worker_id, fleet.registry)
        )
        created[worker_id] = (node_id, handle)
        if fleet.listener_handover and not handover and node_id == ray.get_runtime_context().get_node_id():
            handover = worker_id
    results = await answers(
        {w: h.start.remote(fleet.listener_handover if w == handover else "") for w, (_, h) in created.items()},
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
            fleet.listener_handover = ""
        info["node"] = fleet.nodes[node_id]
        fleet.workers[worker_id], fleet.worker_info[worker_id] = handle, info
        fleet.node_ports.setdefault(node_id, info["port"])
        if fleet.config.port == 0 and not fleet.config.distinct_node_ports:
            fleet.config = fleet.config.replace(port=info["port"])
        started.append(worker_id)
    if errors:
        log.error("gateway worker(s) failed to start: %s", "; ".join(errors))
        if not fleet.workers:
            raise RuntimeError("gateway worker(s) failed to start: " + "; ".join(errors))
    return started
