"""Frames for targets in no directory replica: one registry lookup per target, frames in order.

The replica holds every connected client, so a target missing from it is one that does not
exist, or one that connected a moment ago. The registry is asked once per target; frames for
it sent meanwhile wait behind that lookup, in order (a burst makes one call, not one each),
at most ``MAX_WAITING_PER_LOOKUP`` of them. What a lookup may cost is bounded per connection
(``rhizomorph/protocol/lookups.py``): a target the registry just said nobody owns is refused
without asking again, and a connection over its budget of lookups has its calls to unknown
targets refused without one, and is held (``throttle.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from rhizomorph.actors.peers import Peers
from rhizomorph.background import spawn
from rhizomorph.gateway.clients import ClientRegistry, Clients
from rhizomorph.gateway.connection import ClientConnection
from rhizomorph.gateway.reconnecting import ReconnectWaits
from rhizomorph.gateway.stats import Counters
from rhizomorph.gateway.throttle import Throttle
from rhizomorph.gateway.undeliverable import Undeliverable
from rhizomorph.protocol import routing
from rhizomorph.protocol.directory import DirectoryReplica
from rhizomorph.protocol.lookups import Lookup, UnknownTargets

#: A frame waiting for the registry: (frame, its header if parsed, whether a peer forwarded it).
Waiting = tuple[bytes, "dict[str, Any] | None", bool]
#: Frames that may wait behind one registry lookup; more are refused (the lookup is slow).
MAX_WAITING_PER_LOOKUP = 1000


class RouterRegistry(ClientRegistry, Protocol):
    """The registry as the router calls it (``rhizomorph.actors.registry.RegistryCalls``)."""

    def locate(self, address: str) -> Awaitable[str | None]: ...


class LocatingHost(Undeliverable, Protocol):
    """What the lookups need from the router."""

    worker_id: str
    registry: RouterRegistry
    replica: DirectoryReplica
    clients: Clients
    peers: Peers
    counters: Counters
    throttle: Throttle
    reconnects: ReconnectWaits

    def carry_out(
        self,
        route: routing.Route,
        conn: ClientConnection | None,
        target: str,
        frame: bytes,
        header: dict[str, Any] | None,
        forwarded: bool,
    ) -> None: ...


class Locating:
    def __init__(self, host: LocatingHost, unknown: UnknownTargets) -> None:
        self._host = host
        self.unknown = unknown
        #: Targets the registry is being asked about, and the frames waiting for the answer.
        self.waiting: dict[str, list[Waiting]] = {}

    def wait(self, target: str, frame: bytes, header: dict[str, Any] | None, forwarded: bool) -> None:
        """A lookup of ``target`` is under way: queue behind it (frames before this one wait too)."""
        waiting = self.waiting[target]
        if len(waiting) < MAX_WAITING_PER_LOOKUP:
            waiting.append((frame, header, forwarded))
        else:
            self._host.undeliverable(target, frame, header, f"too many messages wait for the lookup of {target}")

    def start(self, target: str, frame: bytes, header: dict[str, Any] | None, forwarded: bool) -> None:
        """``target`` is in no replica: ask the registry, unless it said "nobody" a moment ago or
        the sending connection is over its budget of lookups (then the sender is told now)."""
        host = self._host
        # A header is only at hand for a local client's frame (stamped: ``from`` is its address).
        sender = header.get("from") if header is not None else None
        verdict = self.unknown.check(target, sender)
        if verdict is Lookup.ASK:
            self.waiting[target] = [(frame, header, forwarded)]
            spawn(self._locate(target))
        elif verdict is Lookup.KNOWN_MISSING:
            host.counters.lookups_cached += 1
            host.undeliverable(target, frame, header)
        else:
            host.counters.lookups_denied += 1
            conn = host.clients.get(str(sender))  # only a local connection has a budget to be over
            if conn is not None:
                host.throttle.hold(conn)
            host.undeliverable(target, frame, header, self.unknown.over_budget(target))

    async def _locate(self, target: str) -> None:
        """Ask the registry who owns ``target``, then send what waited for the answer, in order."""
        host = self._host
        host.counters.registry_lookups += 1
        try:
            owner = await host.registry.locate(target)
        except Exception:  # the registry is unreachable: refused, but not remembered as missing
            owner = host.replica.owner(target)
        else:
            # The directory update of a client that just connected may have overtaken the answer.
            owner = owner or host.replica.owner(target)
            if owner is None and target not in host.clients:
                self.unknown.answered(target, found=False)
        peer = routing.remote_owner(owner, self_id=host.worker_id, reachable=host.peers)
        if peer is not None:
            host.replica.set_owner(target, peer)
        for frame, header, forwarded in self.waiting.pop(target, ()):
            conn = host.clients.get(target)
            route = routing.after_locate(
                local=conn is not None,
                owner=owner,
                self_id=host.worker_id,
                reachable=host.peers,
                forwarded=forwarded,
                awaited=conn is None and host.reconnects.awaits(target, frame, header),
            )
            host.carry_out(route, conn, target, frame, header, forwarded)
