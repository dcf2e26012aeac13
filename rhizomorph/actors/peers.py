"""A worker's links to the other gateway workers, and the control calls it makes to them.

Each peer gets an ordered link (``PeerLink``): over a Unix socket (``Channel``) to a peer on the
same node, else Ray calls. A peer reached over Ray calls also gets a bulk link through the
node's chunking actor for the chunks of large messages, so they never hold up small messages;
a same-node peer on the socket takes chunks on its ordered link, in turn with small messages,
as a local target does (benchmarks/targets.md has the numbers behind this choice).

Broadcasts go only to the peers with a subscriber for their (workspace, event type):
``interest`` holds what each peer said it has (``rhizomorph/protocol/interest.py``). A
worker says it as control items on its ordered links, in order with its frames: its whole set
first on every new link (``greeting``), then each change (``announce``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from rhizomorph.actors.channel import Channel
from rhizomorph.actors.peer_link import Call, Item, PeerLink
from rhizomorph.protocol.interest import InterestUpdate, PeerInterest

log = logging.getLogger("rhizomorph.peers")

OnFailure = Callable[[list[Item]], None]

#: The target of a control item on a peer link: no client address is empty.
CONTROL = ""
#: The event type of a control item carrying an ``InterestUpdate``.
INTEREST = "interest"
#: The event type of an item for a client (not ``<ws>/*``): a message the sending worker kept
#: for the client while it reconnected (``rhizomorph/gateway/reconnecting.py``).
KEPT = "kept"
#: The event type of a control item naming a client (its address, UTF-8) whose previous socket
#: died with its gateway worker: calls in flight to it through that worker are lost.
SOCKET_LOST = "socket_lost"
#: Seconds before a peer that may have missed an interest update is sent the whole set again.
RESEND_INTEREST_AFTER = 1.0


def interest_item(update: InterestUpdate) -> Item:
    return (CONTROL, INTEREST, update.encode())


def _same_actor(a: Any, b: Any) -> bool:
    return getattr(a, "_actor_id", a) == getattr(b, "_actor_id", b)


class Peers:
    def __init__(
        self,
        worker_id: str,
        on_failure: OnFailure,
        on_bulk_failure: OnFailure,
        greeting: Callable[[], InterestUpdate] | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.links: dict[str, PeerLink] = {}
        #: Chunk frames to peers reached over Ray calls, through the node's chunking actor.
        self.bulk: dict[str, PeerLink] = {}
        self.chunk_relay: Any = None
        #: What a call to a dead peer raises (Ray's ``ActorDiedError``, set by the actor shell,
        #: rhizomorph/actors/worker.py: this module imports no Ray).
        self.dead_peer_errors: tuple[type[BaseException], ...] = ()
        self._channels: dict[str, Channel] = {}
        self._on_failure = on_failure
        self._on_bulk_failure = on_bulk_failure
        #: This worker's whole interest set, sent first on every new link.
        self._greeting = greeting
        #: What each peer has subscribers for, as the peers said.
        self.interest = PeerInterest()
        self._resending: set[str] = set()

    def __contains__(self, worker_id: object) -> bool:
        return worker_id in self.links

    def set_peers(self, peers: dict[str, Any], channels: dict[str, str] | None = None) -> None:
        """Links to every other worker: over ``channels`` (Unix socket paths of same-node peers)
        where given, else Ray calls. A worker id that comes back as a new actor gets new links."""
        channels = channels or {}
        for worker_id, handle in peers.items():
            if worker_id == self.worker_id:
                continue
            link = self.links.get(worker_id)
            if link is not None and _same_actor(link.handle, handle):
                continue
            self._close_channel(worker_id)
            on_failure = self._link_failed(worker_id)
            if worker_id in channels:
                channel = self._channels[worker_id] = Channel(channels[worker_id])
                link = PeerLink(
                    worker_id, handle, on_failure, call=channel.send, try_call=channel.try_send, kind="socket"
                )
            else:
                link = PeerLink(worker_id, handle, on_failure)
            self.links[worker_id] = link
            self._greet(link)
            self.bulk.pop(worker_id, None)
            if self.chunk_relay is not None and worker_id not in channels:
                self.bulk[worker_id] = PeerLink(
                    worker_id,
                    handle,
                    self._on_bulk_failure,
                    kind="chunk-actor",
                    call=self._through_chunk_relay(handle),
                )
        for worker_id in list(self.links):
            if worker_id not in peers:
                del self.links[worker_id]
                self.bulk.pop(worker_id, None)
                self._close_channel(worker_id)
                self.interest.forget(worker_id)

    # -- interest ------------------------------------------------------------------------------
    def _greet(self, link: PeerLink) -> None:
        if self._greeting is not None:
            link.send(interest_item(self._greeting()))

    def _link_failed(self, worker_id: str) -> OnFailure:
        def failed(items: list[Item]) -> None:
            if any(target == CONTROL for target, _, _ in items):
                self._resend_interest(worker_id)
            self._on_failure(items)

        return failed

    def _resend_interest(self, worker_id: str) -> None:
        """A call that carried an interest update failed. If the peer is only unreachable for
        a moment it would keep a stale view of this worker: it gets the whole set again soon
        (a peer that is gone leaves ``links`` meanwhile, or fails once more a second later)."""
        if worker_id in self._resending:
            return
        self._resending.add(worker_id)
        link = self.links.get(worker_id)

        def resend() -> None:
            self._resending.discard(worker_id)
            if link is not None and self.links.get(worker_id) is link:
                self._greet(link)

        asyncio.get_running_loop().call_later(RESEND_INTEREST_AFTER, resend)

    def announce(self, update: InterestUpdate) -> None:
        """A change of this worker's interest, to every peer, in order with its frames."""
        if update:
            self.broadcast(interest_item(update))

    def apply_interest(self, data: bytes) -> None:
        """A peer's interest update (a control item it sent)."""
        try:
            update = InterestUpdate.decode(data)
        except ValueError as exc:
            log.warning("ignoring a bad interest update: %s", exc)
            return
        if update.worker_id != self.worker_id:
            self.interest.apply(update)

    async def flushed(self, timeout: float) -> None:
        """Wait (at most ``timeout`` s) until every link has carried what was sent on it so far."""
        waiting = [link.idle() for link in self.links.values()]
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)

    def send_event(self, workspace: str, item: Item) -> None:
        """A broadcast of ``workspace``: to the peers with a subscriber for its event type."""
        event_type = item[1]
        if event_type is None:
            return
        links = self.links
        for worker_id in self.interest.peers_for(workspace, event_type):
            link = links.get(worker_id)
            if link is not None:
                link.send(item)

    def _through_chunk_relay(self, peer: Any) -> Call:
        def call(items: list[Item]) -> Awaitable[Any]:
            return self.chunk_relay.relay.remote(peer, items)

        return call

    def _close_channel(self, worker_id: str) -> None:
        channel = self._channels.pop(worker_id, None)
        if channel is not None:
            channel.close()

    def close(self) -> None:
        for worker_id in list(self._channels):
            self._close_channel(worker_id)

    def send(self, worker_id: str, item: Item) -> None:
        self.links[worker_id].send(item)

    def broadcast(self, item: Item) -> None:
        for link in self.links.values():
            link.send(item)

    def has_bulk_link(self, worker_id: str) -> bool:
        return worker_id in self.bulk

    def send_chunk(self, worker_id: str, item: Item, *, last: bool) -> None:
        """A chunk of a stream to a peer with a bulk link. The last chunk completes the
        message: it takes the ordered link once the bulk link has delivered the rest, so
        messages sent after this one cannot overtake it."""
        bulk = self.bulk[worker_id]
        if not last:
            bulk.send(item)
        else:
            link = self.links[worker_id]
            link.hold(bulk.idle())
            link.send(item)

    # -- control calls -------------------------------------------------------------------------
    async def probe_client(self, worker_id: str, address: str) -> bool:
        """Whether the peer's socket of ``address`` answers a ping (``False`` if unreachable)."""
        link = self.links.get(worker_id)
        if link is None:
            return False
        try:
            return bool(await link.handle.probe_client.remote(address))
        except Exception:
            return False

    async def close_client(self, worker_id: str, address: str, code: int, generation: str) -> bool:
        """Close the peer's socket of ``address``. ``False`` if that worker is gone (no link to
        it any more, or its actor died), and the socket with it."""
        link = self.links.get(worker_id)
        if link is None:
            return False
        try:
            await link.handle.close_client.remote(address, code, generation)
        except Exception as exc:
            if isinstance(exc, self.dead_peer_errors):
                return False
            log.info("closing %s on %s failed: %s", address, worker_id, exc)  # alive: the socket may be too
        return True

    async def http_post(self, worker_id: str, address: str, user_id: str, body: bytes) -> Any:
        """A message POSTed over hypha-rpc's HTTP transport for a client whose stream the peer
        holds (``rhizomorph/gateway/http_rpc.py``): the peer's ``(status, detail)``, or ``None``."""
        link = self.links.get(worker_id)
        if link is None:
            return None
        try:
            return await link.handle.http_post.remote(address, user_id, body)
        except Exception as exc:
            log.info("forwarding an HTTP post to %s failed: %s", worker_id, exc)
            return None

    async def login(self, worker_id: str, op: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A login session's operation on the peer that owns it (``rhizomorph/gateway/login.py``):
        ``{"value": ...}`` or ``{"error": message}``."""
        link = self.links.get(worker_id)
        if link is None:
            return {"error": "Invalid key, key does not exist or expired"}
        try:
            result: dict[str, Any] = await link.handle.login.remote(op, kwargs)
            return result
        except Exception as exc:
            log.info("a login operation on %s failed: %s", worker_id, exc)
            return {"error": f"the server that started this login did not answer: {type(exc).__name__}"}

    async def stats(self) -> list[dict[str, Any]]:
        """Stats of every peer that answers."""
        results = await asyncio.gather(
            *(link.handle.stats.remote() for link in self.links.values()), return_exceptions=True
        )
        return [r for r in results if isinstance(r, dict)]

    def link_stats(self) -> dict[str, dict[str, Any]]:
        return {
            "peer_calls": {w: link.calls for w, link in self.links.items()},
            "peer_channels": {w: link.kind for w, link in self.links.items()},
            "peer_frames": {w: link.frames for w, link in self.links.items()},
            "peer_interest": self.interest.stats(),
        }
