"""Messages for a client between its socket's close and its reconnect (the policy and why:
``rhizomorph/protocol/reconnecting.py``).

The router (``router.py``) asks ``awaits`` before it would look a missing target up, routes
what it answers yes for to ``keep``, and says when a socket closed (``left``), when a client
connected again here (``returned``) and when one is known on another worker (``moved``: what
was kept follows it there, as ``KEPT`` items on the peer link, handed over by ``arrived``).
A wait that ends unanswered hands what it kept to ``Router.undeliverable``: its senders are
told, late but told.

What was kept is written only once the new socket is listened to. The released hypha-rpc JS
client reads the socket with a handshake handler until ``connection_info`` and installs its
message handler a moment later: a binary frame right behind ``connection_info`` reaches the
first handler, which drops it. A reconnected client's first frame is sent after that handler
is in place, so its queue is held (``DeliveryQueue.hold``) from the hand-over until the client
has sent a frame, or ``grace`` seconds at most.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from rhizomorph.actors.peers import KEPT, Peers
from rhizomorph.gateway.clients import Clients
from rhizomorph.gateway.connection import ClientConnection
from rhizomorph.gateway.undeliverable import Undeliverable
from rhizomorph.protocol import frames, refusals
from rhizomorph.protocol.close_codes import CloseCode
from rhizomorph.protocol.reconnecting import Reconnecting, is_call


class ReconnectHost(Undeliverable, Protocol):
    """What the waits need from the router."""

    peers: Peers
    clients: Clients


class ReconnectWaits:
    def __init__(self, host: ReconnectHost, state: Reconnecting) -> None:
        self._host = host
        self.state = state
        #: Reconnected sockets the client has not sent a frame on yet, each with the timer that
        #: gives up waiting for one. The router reads it on every frame (empty: one test).
        self.unheard: dict[ClientConnection, asyncio.TimerHandle] = {}
        self._timer: asyncio.TimerHandle | None = None

    def awaits(self, target: str, frame: bytes, header: dict[str, Any] | None) -> bool:
        """Whether ``frame`` is to be kept for ``target``: a client waited for, and a whole
        message that is not a call (a chunk of a stream never is: its stream began elsewhere)."""
        if target not in self.state or frames.is_v4(frame):
            return False
        return not is_call(header if header is not None else refusals.header_of(frame))

    def keep(self, target: str, frame: bytes, header: dict[str, Any] | None) -> None:
        if not self.state.keep(target, frame):
            self._host.undeliverable(target, frame, header)

    def left(self, conn: ClientConnection, unwritten: list[bytes], *, replaced: bool) -> None:
        """``conn``'s socket closed; ``unwritten``: what its queue never wrote; ``replaced``: a
        newer socket of the client is here. A client that closed its socket itself left for
        good; one superseded by a newer socket elsewhere is already there."""
        self.heard(conn)
        address = conn.address
        waited = not replaced and not conn.closed_by_client and conn.close_code != CloseCode.SUPERSEDED
        if waited:
            self._answer(self.state.left(address))
            self._schedule()
        for frame in unwritten:
            if waited and self.awaits(address, frame, None):
                self.keep(address, frame, None)
            else:
                self._host.undeliverable(address, frame)

    def returned(self, conn: ClientConnection, is_reconnect: bool) -> None:
        """``conn`` was admitted here: a reconnect (or any socket something was kept for) waits
        to be heard from, and what was kept for it goes first."""
        kept = self.state.back(conn.address)
        if (is_reconnect or kept) and self.state.enabled:
            loop = asyncio.get_running_loop()
            self.unheard[conn] = loop.call_later(self.state.grace, self.heard, conn)
        if kept:
            self._hand_over(conn, kept)

    def heard(self, conn: ClientConnection) -> None:
        """The client sent a frame on ``conn`` (or closed it, or was silent too long)."""
        timer = self.unheard.pop(conn, None)
        if timer is not None:
            timer.cancel()
            conn.queue.release()

    def moved(self, address: str, owner: str) -> None:
        """The client reconnected on the worker ``owner``: what was kept follows it there."""
        if address not in self.state:
            return
        for frame in self.state.back(address):
            if owner in self._host.peers:
                self._host.peers.send(owner, (address, KEPT, frame))
            else:
                self._host.undeliverable(address, frame)

    def arrived(self, target: str, frame: bytes) -> None:
        """A message the worker that ``target`` left kept for it."""
        conn = self._host.clients.get(target)
        if conn is not None:
            self._hand_over(conn, [frame])
            return
        # The registry told that worker before this one is done admitting the client: wait here.
        if target not in self.state:
            self._answer(self.state.left(target))
            self._schedule()
        self.keep(target, frame, None)

    def _hand_over(self, conn: ClientConnection, kept: list[bytes]) -> None:
        if conn in self.unheard:
            conn.queue.hold()
        for frame in kept:
            if not conn.queue.put(frame):
                self._host.undeliverable(conn.address, frame)

    def _answer(self, ended: list[tuple[str, list[bytes]]]) -> None:
        for address, kept in ended:
            for frame in kept:
                self._host.undeliverable(address, frame)

    def _schedule(self) -> None:
        remaining = self.state.remaining()
        if self._timer is None and remaining is not None:
            self._timer = asyncio.get_running_loop().call_later(remaining, self._expire)

    def _expire(self) -> None:
        self._timer = None
        self._answer(self.state.expired())
        self._schedule()
