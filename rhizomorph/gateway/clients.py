"""The clients a gateway worker holds: its table of connections and their lifecycle.

A connection is claimed cluster-wide in the registry when it is admitted (an older socket of
the same client, here or on another worker, is closed as superseded), and released when it
closes. The router (``rhizomorph/gateway/router.py``) builds on this: routing reads the table,
and the disconnect cleanup tells senders and subscribers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from rhizomorph.gateway.connection import ClientConnection
from rhizomorph.protocol.close_codes import CloseCode
from rhizomorph.protocol.handshake import HandshakeError


class ClientRegistry(Protocol):
    """The registry calls the client table makes (an async adapter of the registry actor)."""

    def claim_client(
        self, address: str, worker_id: str, generation: str, user_id: str, supersede: bool
    ) -> Awaitable[dict[str, str] | None]: ...

    def release_client(self, address: str, generation: str) -> Awaitable[list[dict[str, Any]] | None]: ...


class PeerControl(Protocol):
    """The control calls the client table makes to other workers."""

    async def probe_client(self, worker_id: str, address: str) -> bool: ...

    async def close_client(self, worker_id: str, address: str, code: int, generation: str) -> bool: ...


class Clients:
    def __init__(
        self,
        worker_id: str,
        registry: ClientRegistry,
        peers: PeerControl,
        on_socket_lost: Callable[[str], None] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self._registry = registry
        self._peers = peers
        #: Called with a client's address when the socket it replaced had died with its worker.
        self._on_socket_lost = on_socket_lost
        self._closing: set[asyncio.Task[None]] = set()
        self._by_address: dict[str, ClientConnection] = {}
        self._by_workspace: dict[str, set[str]] = {}

    # -- the table -----------------------------------------------------------------------------
    def get(self, address: str) -> ClientConnection | None:
        return self._by_address.get(address)

    def __contains__(self, address: object) -> bool:
        return address in self._by_address

    def __len__(self) -> int:
        return len(self._by_address)

    def __iter__(self) -> Iterator[ClientConnection]:
        return iter(list(self._by_address.values()))

    def addresses(self) -> list[str]:
        return sorted(self._by_address)

    def in_workspace(self, workspace: str) -> Iterator[ClientConnection]:
        for address in self._by_workspace.get(workspace, ()):
            yield self._by_address[address]

    def _add(self, conn: ClientConnection) -> None:
        self._by_address[conn.address] = conn
        self._by_workspace.setdefault(conn.workspace, set()).add(conn.address)

    def remove(self, conn: ClientConnection) -> None:
        """Take ``conn`` out of the table, unless a newer socket of the client replaced it."""
        if self._by_address.get(conn.address) is not conn:
            return
        del self._by_address[conn.address]
        members = self._by_workspace.get(conn.workspace)
        if members is not None:
            members.discard(conn.address)
            if not members:
                del self._by_workspace[conn.workspace]

    # -- lifecycle -----------------------------------------------------------------------------
    async def admit(self, conn: ClientConnection, is_reconnect: bool) -> None:
        """Claim the client's address cluster-wide, replacing an older socket of the same client."""
        user_id = conn.identity.user_id
        previous = await self._registry.claim_client(
            conn.address, self.worker_id, conn.generation, user_id, is_reconnect
        )
        if previous is not None and not is_reconnect:
            if await self._owner_alive(conn.address, previous["worker_id"]):
                raise HandshakeError("Client already exists and is active")
            previous = await self._registry.claim_client(conn.address, self.worker_id, conn.generation, user_id, True)
        if previous is not None:
            await self._drop_superseded(conn.address, previous)
        self._add(conn)

    async def _owner_alive(self, address: str, worker_id: str) -> bool:
        if worker_id == self.worker_id:
            return await self.probe(address)
        return await self._peers.probe_client(worker_id, address)

    async def _drop_superseded(self, address: str, owner: dict[str, str]) -> None:
        if owner["worker_id"] == self.worker_id:
            await self.close(address, CloseCode.SUPERSEDED, owner["generation"])
        else:  # not awaited: admitting the new socket does not wait on another worker
            closing = asyncio.ensure_future(self._close_elsewhere(address, owner))
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def _close_elsewhere(self, address: str, owner: dict[str, str]) -> None:
        closed = await self._peers.close_client(owner["worker_id"], address, CloseCode.SUPERSEDED, owner["generation"])
        if not closed and self._on_socket_lost is not None:
            # The old socket died with its worker (a reconnect after a crash), and with it
            # whatever that worker held for the client and had not written.
            self._on_socket_lost(address)

    async def release(self, conn: ClientConnection) -> list[dict[str, Any]] | None:
        """Give up the client's claim in the registry. Returns its removed services, or ``None``
        if a newer socket of the client took over (it is not gone). Raises if the registry is
        unreachable."""
        return await self._registry.release_client(conn.address, conn.generation)

    async def close(self, address: str, code: int = CloseCode.GOING_AWAY, generation: str | None = None) -> bool:
        conn = self._by_address.get(address)
        if conn is None or (generation is not None and conn.generation != generation):
            return False
        await conn.close(code, "closed by the router")
        return True

    async def probe(self, address: str) -> bool:
        conn = self._by_address.get(address)
        return conn is not None and await conn.probe()

    async def watch_writes(self, timeout: float, period: float = 1.0) -> None:
        """Evict clients whose socket write stalled past ``timeout`` (runs for the worker's life)."""
        while timeout > 0:
            await asyncio.sleep(period)
            self.evict_stalled(time.monotonic(), timeout)

    def evict_stalled(self, now: float, timeout: float) -> None:
        # A function of its own: a loop variable in ``watch_writes`` would keep the last client
        # it saw alive while it sleeps, after that client left (and, after a wave, that client's
        # objects would keep one of the wave's arenas).
        for conn in self:
            if conn.queue.stalled(now, timeout):
                conn.queue.overflow(f"a write blocked for over {timeout:g} s")
