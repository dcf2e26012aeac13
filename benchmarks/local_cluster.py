"""A multi-node Ray cluster simulated on this machine (``ray.cluster_utils.Cluster``), every node on
127.0.0.1 with Ray token authentication on: for benchmarks/bench_fanout_cluster.py and
tests/cluster_scenarios.py.

``private_environment`` must run before Ray is imported; nothing here imports Ray at module level.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from typing import Any

#: Every node: one CPU, the loopback address, no dashboard, a small object store.
NODE_ARGS: dict[str, Any] = {
    "num_cpus": 1,
    "node_ip_address": "127.0.0.1",
    "include_dashboard": False,
    "object_store_memory": 80 * 1024 * 1024,
}


def private_environment(prefix: str) -> str:
    """Before Ray is imported: loopback only; a private Ray temp dir (a Cluster records its address
    in <temp dir>/ray/ray_current_cluster, where any plain ``ray.init()`` on this machine would
    find it and join); token auth with a token of our own (as a joining node or driver gets it:
    RAY_AUTH_MODE=token plus RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN). Returns the directory, for
    the caller to remove when done."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.pop("RAY_ADDRESS", None)
    directory = tempfile.mkdtemp(prefix=prefix, dir="/tmp")  # short: Ray's socket paths live under it
    os.environ["RAY_TMPDIR"] = directory
    path = os.path.join(directory, "auth_token")
    with open(path, "w") as handle:
        handle.write(secrets.token_hex(32))
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = path
    return directory


def start_cluster(nodes: int) -> tuple[Any, list[Any]]:
    """A head and ``nodes - 1`` more nodes, all up, with this process's Ray connected to them.
    Returns the Cluster and its nodes (``ray._private.node.Node``), head first."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args=dict(NODE_ARGS))
    try:
        added = [cluster.add_node(**NODE_ARGS) for _ in range(nodes - 1)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING")
    except BaseException:
        cluster.shutdown()
        raise
    return cluster, [cluster.head_node, *added]


def peer_traffic(deployment: Any) -> tuple[int, int]:
    """Ray calls and frames between gateway workers so far, summed over every worker's stats."""
    stats = deployment.stats()
    return (sum(sum(s["peer_calls"].values()) for s in stats), sum(sum(s["peer_frames"].values()) for s in stats))
