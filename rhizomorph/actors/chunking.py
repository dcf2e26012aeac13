"""The chunking actor: one per node, it carries the chunks of large messages between workers
that talk over Ray calls (on different nodes, or with ``peer_channel = "ray"``).

Gateway workers hand it slices of chunk frames (at most ~1 MiB per call, large arguments
travel through Ray's object store) for a destination worker, and it delivers them there.
Keeping bulk bytes off the workers' ordered message links is what lets small RPCs to the same
target interleave between the chunks of a 16 MB transfer. Chunks of a stream between two
clients of the same worker never leave that worker.
"""

from __future__ import annotations

from typing import Any

import ray

from rhizomorph.actors import actor_class, event_loop, naming
from rhizomorph.actors.peer_link import Item


@ray.remote(num_cpus=0, max_restarts=-1)
class ChunkRelay:
    """Stateless but for counters, so a restart after a crash loses nothing but the slices in
    flight: their streams fail on both ends (``ChunkStreams.bulk_failed`` in
    rhizomorph/gateway/streams.py) and the next ones work."""

    def __init__(self) -> None:
        self.chunks = 0
        self.bytes = 0

    async def relay(self, worker: Any, items: list[Item]) -> None:
        """Deliver chunk frames to a worker, in order; returns once that worker has queued them."""
        self.chunks += len(items)
        self.bytes += sum(len(frame) for _, _, frame in items)
        await worker.deliver.remote(items)

    def stats(self) -> dict[str, int]:
        return {"chunks": self.chunks, "bytes": self.bytes}


def relay_name(server_id: str, node_id: str) -> str:
    """Under the router's prefix (rhizomorph/actors/naming.py), so ``stop`` finds it too."""
    return f"{naming.router_prefix(server_id)}chunks-{node_id[:12]}"


def node_relay(server_id: str, node_id: str, loop: str = "auto") -> Any:
    """The chunking actor of the node, started by the first worker of the node that asks.

    Detached, as the other actors of a router are: an actor belongs to the process that
    created it and dies with it, and this one is shared by every worker of the node, so it
    must not die with the worker that happened to start it (its peers would keep a handle to
    a dead actor and every chunk stream they send would be cut).
    """
    name = relay_name(server_id, node_id)
    options = {"name": name, "namespace": naming.NAMESPACE, "lifetime": "detached", "get_if_exists": True}
    options.update(event_loop.child_options(loop))  # ``loop``: ``Config.loop``
    return actor_class(ChunkRelay).options(**options).remote()
