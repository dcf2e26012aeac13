"""Where a router's actors go: gateway workers, how many per node; the controller and registry.

The controller (rhizomorph/actors/launching.py) applies these to Ray's view of the cluster
(``ray.nodes()``); docs/deploy.md explains the choices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rhizomorph.actors import event_loop
from rhizomorph.config import Config

#: A node with this many CPUs or fewer gets one gateway worker by default (``workers_per_cpu = 0``).
SMALL_NODE_CPUS = 2


def workers_for_node(config: Config, resources: Mapping[str, float]) -> int:
    """How many gateway workers a node with these Ray resources gets.

    ``worker_resource`` set: one per unit of that resource (``workers`` caps it), none on nodes
    without it. Otherwise ``workers`` if set, else ``workers_per_cpu`` per CPU (at least one);
    ``workers_per_cpu = 0``: one per CPU, one in all on a small node (``SMALL_NODE_CPUS``).
    """
    if config.worker_resource:
        units = int(resources.get(config.worker_resource, 0))
        return min(units, config.workers) if config.workers > 0 else units
    if config.workers > 0:
        return config.workers
    cpus = resources.get("CPU", 0)
    if config.workers_per_cpu > 0:
        return max(1, int(cpus * config.workers_per_cpu))
    return 1 if cpus <= SMALL_NODE_CPUS else int(cpus)


def worker_runtime(config: Config) -> dict[str, Any]:
    """Actor options of a gateway worker that a router's actor creates: the event loop it runs
    (``event_loop.child_options``) and the variables of ``config.worker_env_vars`` in one
    runtime env (PYTHONMALLOC is read as the interpreter starts: Ray sets it before)."""
    options = event_loop.child_options(config.loop)
    env_vars = config.worker_env_vars()
    if env_vars:
        runtime_env = options.setdefault("runtime_env", {})
        runtime_env["env_vars"] = {**runtime_env.get("env_vars", {}), **env_vars}
    return options


def on_node(node_id: str) -> Any:
    """Pinned to the node: a worker serves its node's port, nowhere else."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


#: A resource only Ray's head node has.
HEAD_NODE = "node:__internal_head__"


def control_plane(config: Config, name: str, inherited_loop: str | None = None) -> dict[str, Any]:
    """Actor options of the controller and the registry: detached, named in the namespace
    (an existing one is attached to), on a node with ``control_resource`` if set, else on the
    head node. A resource, not a node id: when the node is lost, Ray restarts them on another
    node that has it. They run the event loop ``config.loop`` names (``event_loop.actor_options``,
    ``inherited_loop`` as there)."""
    from rhizomorph.actors.naming import NAMESPACE

    return {
        "name": name,
        "namespace": NAMESPACE,
        "lifetime": "detached",
        "get_if_exists": True,
        "resources": {config.control_resource or HEAD_NODE: 0.001},
        **event_loop.actor_options(config.loop, inherited_loop),
    }
