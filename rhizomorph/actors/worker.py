"""Gateway workers: Ray actors that own client sockets and route every frame.

Each worker listens on the shared port (``rhizomorph/gateway/server.py``), hosts a ``Router``
(``rhizomorph/gateway/router.py``) and its workspace manager, and keeps a replica of the
directory pushed by the registry. Peers on the same node reach it over a Unix socket
(``channel.py``), other peers, the registry and the controller over Ray calls (the methods
below). It also keeps its clients' share of the registry (``RegistryCalls.owned``), which a
restarted registry rebuilds itself from (``owned_state``, ``replace_directory``).

Workers are detached named actors (rhizomorph/actors/naming.py): they serve on whether or not
the process that started the router, or the controller, is alive.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING, Any

import ray

from rhizomorph import logs
from rhizomorph.actors import Held, event_loop
from rhizomorph.actors.channel import ChannelServer
from rhizomorph.actors.chunking import node_relay
from rhizomorph.actors.peer_link import Item
from rhizomorph.actors.registry_calls import RegistryCalls
from rhizomorph.config import Config
from rhizomorph.protocol.batching import BatchPolicy
from rhizomorph.protocol.close_codes import CloseCode
from rhizomorph.protocol.login import LoginError

if TYPE_CHECKING:
    from rhizomorph.gateway import server


@ray.remote(num_cpus=0, max_restarts=0)
class GatewayWorker:
    """A Ray actor hosting one ``Router`` and its share of the gateway's sockets."""

    def __init__(self, config: Config, worker_id: str, registry: Any) -> None:
        # The gateway is imported here, in the worker's process, not with this module: the
        # controller imports this module only to create workers, and need not load the gateway.
        from rhizomorph.gateway import memory
        from rhizomorph.gateway.router import Router

        logs.configure(config.log_level, config.log_format)
        memory.tune_heap()
        self._config = config
        self._registry = registry
        self._calls = RegistryCalls(registry)
        self._router = Router(config, worker_id, self._calls)
        self._channel: ChannelServer | None = None
        self._node_id = ""
        self._server: server.Listener | None = None
        #: The registry epoch of the directory this worker holds: older updates are dropped.
        self._epoch = 0
        self._info: dict[str, Any] = {}
        self._held = Held()

    async def start(self, listener_handover: str = "") -> dict[str, Any]:
        """Listen, serve, greet the registry. With ``listener_handover`` (the launcher's Unix
        socket, ``rhizomorph/listening.py``) the worker serves the socket the launcher bound
        before Ray started, with the connections already queued on it; else it binds its own."""
        from rhizomorph import listening

        config = self._config
        handed = None
        if listener_handover:
            handed = await asyncio.to_thread(listening.take_over, listener_handover, config.port)
        sock = handed.socket if handed is not None else listening.reuseport_socket(config.host, config.port)
        try:
            info = await self._serve(sock)
        except BaseException:
            if handed is not None:  # the launcher keeps its copy for the worker that replaces this one
                if self._server is not None:
                    self._server.close()
                handed.abandon()
            raise
        if handed is not None:
            await asyncio.to_thread(handed.confirm)
        self._info = {**info, "listener": "handed over" if handed is not None else "bound"}
        return self._info

    async def _serve(self, sock: socket.socket) -> dict[str, Any]:
        from rhizomorph.gateway import server

        config = self._config
        loop = event_loop.check(config.loop)
        self._router.listening_on(sock.getsockname()[1])
        self._server = await server.serve(self._router.config, self._router, sock)
        node_id = self._node_id = ray.get_runtime_context().get_node_id()
        if config.peer_channel == "socket":
            self._channel = ChannelServer(self._router.deliver)
            await self._channel.start()
        self._router.peers.dead_peer_errors = (ray.exceptions.ActorDiedError,)
        await self._hello()
        self._router.clients.watch_writes(config.write_timeout)
        return {
            "worker_id": self._router.worker_id,
            "pid": os.getpid(),
            "node_id": node_id,
            "port": sock.getsockname()[1],
            "loop": loop,
        }

    async def _hello(self) -> None:
        hello = await self._registry.add_worker.remote(self._router.worker_id, self._self_handle())
        self._epoch = max(self._epoch, hello["epoch"])
        self._router.update_directory(list(hello["directory"].items()))

    async def info(self) -> dict[str, Any]:
        """What ``start`` returned (empty until then): how a restarted controller finds it again."""
        return self._info

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
        if any(w not in channels for w in peers if w != self._router.worker_id):
            self._use_chunk_relay()
        self._router.peers.set_peers(peers, channels)

    def _use_chunk_relay(self) -> None:
        """The node's chunking actor, made by the first worker that has a peer reached over Ray
        calls (none has on one node with socket channels, so there it never runs)."""
        if self._router.peers.chunk_relay is None:
            self._router.peers.chunk_relay = node_relay(self._config.server_id, self._node_id, self._config.loop)

    async def ping(self) -> str:
        """Liveness check of the controller's watchdog."""
        return self._router.worker_id

    async def hold(self) -> None:
        """The controller's death watch (``Held``): unanswered while this worker lives."""
        await self._held.hold()

    async def forget_clients(self, removed: dict[str, list[dict[str, Any]]]) -> None:
        self._router.forget_clients(removed)
        self._calls.owned.forget(removed)

    async def update_directory(self, updates: list[tuple[str, str | None]], epoch: int | None = None) -> None:
        if epoch is not None and epoch < self._epoch:
            return  # from a registry that has been replaced since
        self._router.update_directory(updates)

    # -- a registry that starts again ----------------------------------------------------------
    async def owned_state(self) -> dict[str, Any]:
        """This worker's share of the registry, for a restarted registry to rebuild from."""
        held = {conn.address: (conn.generation, conn.identity.user_id) for conn in self._router.clients}
        return {"worker_id": self._router.worker_id, "epoch": self._epoch, **self._calls.owned.snapshot(held)}

    async def replace_directory(self, epoch: int, directory: dict[str, str]) -> None:
        """The whole directory of a rebuilt registry: the replica becomes it (local clients stay)."""
        if epoch < self._epoch:
            return
        self._epoch = epoch
        me = self._router.worker_id
        owners = self._router.replica.owners
        updates: list[tuple[str, str | None]] = [(a, w) for a, w in directory.items() if owners.get(a) != w]
        updates += [(a, None) for a in list(owners) if a not in directory and a not in self._router.clients]
        self._router.update_directory(updates)
        owned = self._calls.owned
        owned.forget([a for a, record in owned.clients.items() if record.leaving and directory.get(a) != me])

    async def set_registry(self, registry: Any) -> None:
        """A registry that replaces a lost one (the controller made it): use it from now on."""
        self._registry = registry
        self._calls.handle = registry
        await self._hello()

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

    async def login(self, op: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A login session of this worker, for another worker (``Peers.login``)."""
        service = self._router.manager.login
        if service is None:
            return {"error": "this server has no login service"}
        try:
            return {"value": await service.serve(op, kwargs)}
        except LoginError as exc:
            return {"error": str(exc)}

    async def stats(self) -> dict[str, Any]:
        # Registry calls made and the Ray calls (batches) that carried them.
        registry = {"registry_calls": self._calls.calls, "registry_batches": self._calls.batches}
        return {**self._router.stats(), **registry}

    async def set_batch_policy(self, policy: BatchPolicy) -> None:
        self._router.set_batch_policy(policy)

    async def stop(self) -> None:
        self._router.clients.stop_watching()
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
