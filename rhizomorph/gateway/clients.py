"""The clients a gateway worker holds: its table of connections and their lifecycle.

A connection is claimed cluster-wide in the registry when it is admitted (an older socket of
the same client, here or on another worker, is closed as superseded), and released when it
closes. The router (``rhizomorph/gateway/router.py``) builds on this: routing reads the table,
and the disconnect cleanup tells senders and subscribers.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

from rhizomorph.gateway.connection import ClientConnection
from rhizomorph.protocol.close_codes import CloseCode
from rhizomorph.protocol.handshake import HandshakeError

#: The write watch's timer runs in this context: else each arming copies the current one.
_CONTEXT = contextvars.Context()


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
        #: ``get`` without a Python call in between (the router looks a target up for every frame).
        self.lookup = self._by_address.get
        self._by_workspace: dict[str, set[str]] = {}
        #: The write watch's timeout and period (``watch_writes``; 0: not watching) and its timer.
        self._watch = (0.0, 1.0)
        self._watch_timer: asyncio.TimerHandle | None = None
        self._look_now = self._look  # one bound method for every arming, made at start

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
        if self._watch_timer is None and self._watch[0] > 0:
            self._arm_watch()

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
        if not self._by_address:
            self._disarm_watch()

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

    def watch_writes(self, timeout: float, period: float = 1.0) -> None:
        """Evict clients whose socket write stalled past ``timeout`` (0: never), looking every
        ``period`` seconds while the worker holds any client (``stop_watching`` ends it).

        One loop timer, armed when the first client is added and cancelled when the last one
        leaves, not a task that sleeps: a sleep pending after a wave (its future, timer handle,
        iterator and context, made anew each period) sits in whatever pools had room, the
        wave's, and keeps their arenas (benchmarks/README.md, "After 5000 connections close")."""
        self._disarm_watch()
        self._watch = (timeout, period)
        if timeout > 0 and self._by_address:
            self._arm_watch()

    def stop_watching(self) -> None:
        self._watch = (0.0, self._watch[1])
        self._disarm_watch()

    def _arm_watch(self) -> None:
        self._watch_timer = asyncio.get_running_loop().call_later(self._watch[1], self._look_now, context=_CONTEXT)

    def _disarm_watch(self) -> None:
        if self._watch_timer is not None:
            self._watch_timer.cancel()
            self._watch_timer = None

    def _look(self) -> None:
        self._watch_timer = None
        timeout = self._watch[0]
        self.evict_stalled(time.monotonic(), timeout)
        if timeout > 0 and self._by_address and self._watch_timer is None:
            self._arm_watch()

    def evict_stalled(self, now: float, timeout: float) -> None:
        # A function of its own, run to its end at each look: nothing here outlives it (a client
        # kept while the watch waits, after it left, would keep one of a wave's arenas).
        for conn in self:
            if conn.queue.stalled(now, timeout):
                conn.queue.overflow(f"a write blocked for over {timeout:g} s")
