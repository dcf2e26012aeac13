"""Broadcasts through one worker: to its subscribed clients, and to the peers that have some.

A broadcast (``to: "*"``) reaches the clients of the sender's workspace that subscribed to its
event type, on every worker. This worker delivers to its own subscribers and forwards to the
peers that said they have a subscriber for that (workspace, event type); it tells its peers
the same about itself whenever a pair appears or vanishes here (``subscriptions_changed``,
which the manager calls after ``subscribe`` and ``unsubscribe``, and a client's departure).
The bookkeeping is ``rhizomorph/protocol/interest.py``; the updates travel on the ordered peer
links (``rhizomorph/actors/peers.py``).
"""

from __future__ import annotations

from typing import Any

from rhizomorph.actors.peers import Peers
from rhizomorph.gateway.clients import Clients
from rhizomorph.protocol import envelope
from rhizomorph.protocol.interest import InterestUpdate, LocalInterest

#: Seconds ``subscribe`` waits, at most, for its interest update to reach the peers.
ANNOUNCE_TIMEOUT = 5.0


class Broadcasts:
    def __init__(self, worker_id: str, clients: Clients, peers: Peers) -> None:
        self.local = LocalInterest(worker_id)
        self._clients = clients
        self._peers = peers

    def greeting(self) -> InterestUpdate:
        """This worker's whole interest set (the first item on every new peer link)."""
        return self.local.full()

    def send(self, target: str, event_type: str, frame: bytes, *, forward: bool) -> None:
        """Deliver to this worker's subscribers of the workspace of ``target`` (``<ws>/*``),
        then, if ``forward``, to every peer with a subscriber for it."""
        workspace = target[:-2]
        for conn in self._clients.in_workspace(workspace):
            if event_type in conn.subscriptions:
                conn.queue.put(frame)
        if forward:
            self._peers.send_event(workspace, (target, event_type, frame))

    def event(self, workspace: str, event_type: str, data: Any, *, forward: bool = True) -> None:
        """An event the router itself sends (``service_added``, ``client_disconnected``, ...)."""
        self.send(f"{workspace}/*", event_type, envelope.event_frame(event_type, data), forward=forward)

    def departure(self, address: str, services: list[dict[str, Any]], *, forward: bool) -> None:
        """``service_removed`` for each of a departed client's services, then ``client_disconnected``
        (with the bare client id, as hypha-rpc expects), to the subscribers of its workspace."""
        workspace, client_id = address.split("/", 1)
        for info in services:
            if info.get("type") != "built-in":
                self.event(workspace, "service_removed", info, forward=forward)
        self.event(workspace, "client_disconnected", {"id": client_id, "workspace": workspace}, forward=forward)

    async def subscriptions_changed(self, address: str) -> None:
        """The subscriptions of ``address`` changed: tell the peers if a pair appeared or
        vanished here, and return once the peer links have carried it, so an event broadcast
        on another worker after ``subscribe`` returned reaches the subscriber."""
        if self.changed(address):
            await self._peers.flushed(ANNOUNCE_TIMEOUT)

    def changed(self, address: str) -> bool:
        """Bring the local interest up to date with ``address`` (gone: none); ``True`` if the
        peers were told something."""
        conn = self._clients.get(address)
        if conn is None:
            update = self.local.drop(address)
        else:
            update = self.local.set(address, conn.workspace, conn.subscriptions)
        self._peers.announce(update)
        return bool(update)
