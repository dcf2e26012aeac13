"""Gateway workers: Ray actors that own client sockets and route every frame.

Each worker listens on the shared port (``rhizomorph/gateway/server.py``), hosts a ``Router``
(``rhizomorph/gateway/router.py``) and its workspace manager, and keeps a replica of the
directory pushed by the registry. Peers on the same node reach it over a Unix socket
(``channel.py``), other peers and the launcher over Ray calls (the methods below).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import ray

from rhizomorph import logs
from rhizomorph.actors import actor_class
from rhizomorph.actors.channel import ChannelServer
from rhizomorph.actors.chunking import ChunkRelay, relay_name
from rhizomorph.actors.peer_link import Item
from rhizomorph.actors.registry import RegistryCalls
from rhizomorph.config import Config
from rhizomorph.gateway import server
from rhizomorph.gateway.router import Router
from rhizomorph.protocol.batching import BatchPolicy
from rhizomorph.protocol.close_codes import CloseCode


@ray.remote(num_cpus=0, max_restarts=0)
class GatewayWorker:
    """A Ray actor hosting one ``Router`` and its share of the gateway's sockets."""

    def __init__(self, config: Config, worker_id: str, registry: Any) -> None:
        logs.configure(config.log_level, config.log_format)
        self._config = config
        self._registry = registry
        self._router = Router(config, worker_id, RegistryCalls(registry))
        self._channel: ChannelServer | None = None
        self._node_id = ""
        self._server: server.Listener | None = None
        self._write_watch: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, Any]:
        config = self._config
        sock = server.reuseport_socket(config.host, config.port)
        self._server = await server.serve(config, self._router, sock)
        node_id = self._node_id = ray.get_runtime_context().get_node_id()
        if config.peer_channel == "socket":
            self._channel = ChannelServer(self._router.deliver)
            await self._channel.start()
        self._router.peers.chunk_relay = (
            actor_class(ChunkRelay).options(name=relay_name(config.server_id, node_id), get_if_exists=True).remote()
        )
        snapshot = await self._registry.add_worker.remote(self._router.worker_id, self._self_handle())
        self._router.update_directory(list(snapshot.items()))
        self._write_watch = asyncio.ensure_future(self._router.clients.watch_writes(config.write_timeout))
        return {
            "worker_id": self._router.worker_id,
            "pid": os.getpid(),
            "node_id": node_id,
            "port": sock.getsockname()[1],
        }

    def _self_handle(self) -> Any:
        return ray.get_runtime_context().current_actor

    async def channel_address(self) -> tuple[str, str | None]:
        """(node id, Unix socket path or None): how a peer on the same node reaches this worker."""
        return self._node_id, self._channel.path if self._channel is not None else None

    async def set_peers(self, peers: dict[str, Any]) -> None:
        channels: dict[str, str] = {}
        if self._channel is not None:
            others = {w: h for w, h in peers.items() if w != self._router.worker_id}
            addresses = await asyncio.gather(
                *(h.channel_address.remote() for h in others.values()), return_exceptions=True
            )
            for worker_id, address in zip(others, addresses):
                if isinstance(address, tuple) and address[0] == self._node_id and address[1]:
                    channels[worker_id] = address[1]
        self._router.peers.set_peers(peers, channels)

    async def ping(self) -> str:
        """Liveness check of the launcher's watchdog."""
        return self._router.worker_id

    async def forget_clients(self, removed: dict[str, list[dict[str, Any]]]) -> None:
        self._router.forget_clients(removed)

    async def update_directory(self, updates: list[tuple[str, str | None]]) -> None:
        self._router.update_directory(updates)

    async def deliver(self, items: list[Item]) -> None:
        self._router.deliver(items)

    async def close_client(self, address: str, code: int = CloseCode.GOING_AWAY, generation: str | None = None) -> bool:
        return await self._router.close_client(address, code, generation)

    async def probe_client(self, address: str) -> bool:
        return await self._router.probe(address)

    async def http_post(self, address: str, user_id: str, body: bytes) -> tuple[int, str]:
        """A message POSTed on another worker for an HTTP-transport client of this one."""
        if self._server is None:
            return 503, "the gateway worker is starting"
        return self._server.transport.accept(address, user_id, body)

    async def stats(self) -> dict[str, Any]:
        return self._router.stats()

    async def set_batch_policy(self, policy: BatchPolicy) -> None:
        self._router.set_batch_policy(policy)

    async def stop(self) -> None:
        if self._write_watch is not None:
            self._write_watch.cancel()  # else asyncio logs "Task was destroyed but it is pending"
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self._router.manager.close()
        self._router.peers.close()
        if self._channel is not None:
            await self._channel.close()
        if self._router.peers.chunk_relay is not None:
            # Shared by the node's workers: all stop together.
            ray.kill(self._router.peers.chunk_relay, no_restart=True)
