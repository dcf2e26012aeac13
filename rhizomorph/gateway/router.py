"""The router of one gateway worker: every frame a client sends is stamped and sent on its way.

socket (``connection.py``) -> ``Router.route`` -> the target's ``DeliveryQueue``
(``delivery.py``) -> socket. A frame for a client of another worker goes to that worker over
its peer link (``rhizomorph/actors/peers.py``) and comes back in through ``Router.deliver``.
Where a frame goes is decided by ``rhizomorph/protocol/routing.py``; a frame that cannot be
delivered is answered to its sender through one entry point, ``Router.undeliverable``.
Broadcasts go through ``broadcasts.py``, to the peers that have subscribers for them.

What one client can make a worker hold is bounded: the targets it called that are remembered
(``DirectoryReplica``), and the registry lookups its calls to unknown targets cost
(``locating.py``: a budget per connection, negative answers cached).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from rhizomorph.actors.peer_link import Item
from rhizomorph.actors.peers import CONTROL, INTEREST, KEPT, SOCKET_LOST, Peers
from rhizomorph.config import Config
from rhizomorph.gateway import stats
from rhizomorph.gateway.broadcasts import Broadcasts
from rhizomorph.gateway.clients import Clients
from rhizomorph.gateway.connection import ClientConnection
from rhizomorph.gateway.delivery import WRITES
from rhizomorph.gateway.locating import Locating, RouterRegistry
from rhizomorph.gateway.login import login_service
from rhizomorph.gateway.manager import SERVER_VERSION, WorkspaceManager
from rhizomorph.gateway.memory import Reclaimer
from rhizomorph.gateway.reconnecting import ReconnectWaits
from rhizomorph.gateway.stats import Counters
from rhizomorph.gateway.streams import ChunkStreams
from rhizomorph.gateway.throttle import Throttle
from rhizomorph.protocol import envelope, frames, refusals, routing
from rhizomorph.protocol.batching import BatchPolicy
from rhizomorph.protocol.close_codes import CloseCode
from rhizomorph.protocol.directory import DirectoryReplica
from rhizomorph.protocol.handshake import Identity, TokenIssuer
from rhizomorph.protocol.lookups import UnknownTargets
from rhizomorph.protocol.reconnecting import DEFAULT_MAX_CLIENTS, Reconnecting
from rhizomorph.protocol.routing import Via

log = logging.getLogger("rhizomorph.router")
_V4 = frames.MAGIC  # the first byte of every v4 frame


class Router:
    """Runs on the worker's event loop; ``rhizomorph.actors.worker.GatewayWorker`` hosts it."""

    server_version = SERVER_VERSION

    def __init__(self, config: Config, worker_id: str, registry: RouterRegistry) -> None:
        self.config = config
        self.worker_id = worker_id
        self.registry = registry
        self.issuer = TokenIssuer(config.jwt_secret)
        self.batch_policy = config.batch_policy()
        self.peers = Peers(
            worker_id,
            on_failure=self._peer_failed,
            on_bulk_failure=self._bulk_failed,
            greeting=lambda: self.broadcasts.greeting(),
        )
        self.streams = ChunkStreams(self, self.peers)
        self.clients = Clients(worker_id, registry, self.peers, on_socket_lost=self.socket_lost)
        self._client = self.clients.lookup  # read on every frame: the table's own get
        self.broadcasts = Broadcasts(worker_id, self.clients, self.peers)
        self.replica = DirectoryReplica(config.max_tracked_targets_per_client)
        self.unknown = UnknownTargets(
            rate=config.unknown_target_lookup_rate,
            burst=config.unknown_target_lookup_burst,
            ttl=config.unknown_target_cache_ttl,
        )
        self.locating = Locating(self, self.unknown)
        self._locating = self.locating.waiting  # read on every frame
        self.throttle = Throttle(self._route_held)
        self._held = self.throttle.backlogs  # read on every frame: one attribute less
        self.counters = Counters()
        self.reclaimer = Reclaimer()  # memory back after a wave of departures
        waited = Reconnecting(
            config.reconnect_grace, config.max_queue_bytes, config.max_connections_per_worker or DEFAULT_MAX_CLIENTS
        )
        self.reconnects = ReconnectWaits(self, waited)  # replies for clients about to reconnect
        self._unheard = self.reconnects.unheard  # read on every frame
        self._waited = waited.waits  # read on every frame for a client not here
        self.manager = WorkspaceManager(
            self,
            manager_id=config.manager_id,
            server_id=config.server_id,
            base_url=config.base_url,
            issuer=self.issuer,
            call_timeout=config.manager_call_timeout,
            max_cache_bytes=config.max_message_size,
            login_service=login_service(config, worker_id, self.issuer, forward=self.peers.login),
        )

    @property
    def manager_address(self) -> str:
        return self.manager.address

    def listening_on(self, port: int) -> None:
        """The port the worker bound (``port = 0`` picks one): the URLs told to clients name it."""
        if port != self.config.port:
            self.config = self.config.replace(port=port)
            self.manager.set_base_url(self.config.base_url)

    # -- ManagerHost ---------------------------------------------------------------------------
    def identity(self, address: str) -> Identity | None:
        conn = self.clients.get(address)
        return conn.identity if conn else None

    def subscriptions(self, address: str) -> set[str] | None:
        conn = self.clients.get(address)
        return conn.subscriptions if conn else None

    async def subscriptions_changed(self, address: str) -> None:
        """The manager changed the set ``subscriptions(address)`` returned: tell the peers."""
        await self.broadcasts.subscriptions_changed(address)

    def send(self, target: str, frame: bytes) -> None:
        """Route a frame the router made itself (manager replies, calls, rejects)."""
        self._dispatch(target, frame, None)

    def broadcast_event(self, workspace: str, event_type: str, data: Any, forward: bool = True) -> None:
        self.broadcasts.event(workspace, event_type, data, forward=forward)

    async def cluster_stats(self) -> list[dict[str, Any]]:
        """Stats of this worker and of every peer (the manager's ``get_router_stats``)."""
        return [self.stats(), *await self.peers.stats()]

    # -- ConnectionHost ------------------------------------------------------------------------
    def holds(self, address: str) -> bool:
        return address in self.clients

    def connection_count(self) -> int:
        return len(self.clients)

    def on_evicted(self, conn: ClientConnection, reason: str) -> None:
        self.counters.evicted += 1

    async def admit(self, conn: ClientConnection, is_reconnect: bool) -> None:
        address = conn.address
        # A write that fails leaves frames no socket will take: their senders are told.
        conn.queue.on_unwritten = lambda unwritten: self._unwritten(address, unwritten)
        await self.clients.admit(conn, is_reconnect)
        self.replica.set_owner(address, self.worker_id)
        self.reconnects.returned(conn, is_reconnect)
        if address in self.broadcasts.local:
            self.broadcasts.changed(address)  # it replaced its own socket here, subscriptions and all

    async def disconnect(self, conn: ClientConnection) -> None:
        """Clean up after a socket closed: undelivered calls are rejected, services removed."""
        self.clients.remove(conn)
        self.throttle.release(conn)  # what it sent while held is routed now, before its state goes
        address = conn.address
        if address not in self.clients:  # else a newer socket of the client took over here
            self.replica.forget_caller(address)
            self.unknown.forget_sender(address)
            self.broadcasts.changed(address)
            self.manager.client_left(address)
        self.streams.sender_left(conn)
        # What it was not sent is answered, or waits for its reconnect.
        self.reconnects.left(conn, conn.queue.close(), replaced=address in self.clients)
        conn.queue.on_overflow = None  # conn -> queue -> conn.evict: a cycle only the collector breaks
        self.counters.departed.merge(conn.queue.batch_metrics)
        self.counters.disconnects.add(conn.close_code)
        try:
            removed = await self.clients.release(conn)
        except Exception as exc:  # registry restarting; its state is rebuilt from reconnects
            log.warning("could not release %s: %s", address, exc)
            return
        finally:
            # Counted once this coroutine let go of the connection: the wave's trim must follow its free.
            self.reclaimer.departed()
        if removed is None:
            return  # a newer socket of this client took over: it is not gone
        self.replica.forget(address, self.worker_id)
        self.broadcasts.departure(address, removed, forward=True)

    # -- the directory -------------------------------------------------------------------------
    def update_directory(self, updates: list[tuple[str, str | None]]) -> None:
        if self.reconnects.state:
            for address, owner in updates:
                if owner is not None and owner != self.worker_id:
                    self.reconnects.moved(address, owner)  # it reconnected there
        for address, callers in self.replica.apply(updates):
            # A client left for good: local clients that called it are told at once, so calls
            # it will never answer fail now, not at their timeout.
            self._tell_callers(address, callers, refusals.not_connected(address))

    def socket_lost(self, address: str, forward: bool = True) -> None:
        """``address`` reconnected (here, or on the peer that forwards this) after its previous
        socket died with its gateway worker: the calls to it that worker held, or whose answers
        it held, are lost. Local callers of it are told now (hypha-rpc then fails its pending
        calls to it), as if it had left, rather than at their timeouts; so are the peers' callers."""
        self._tell_callers(address, self.replica.callers_of.get(address, ()), refusals.lost_with_worker(address))
        if forward:
            self.peers.broadcast((CONTROL, SOCKET_LOST, address.encode()))

    def _tell_callers(self, address: str, callers: Iterable[str], message: str) -> None:
        self.manager.target_lost(address, message)  # the manager's own calls (get_service asks providers)
        for caller in list(callers):
            conn = self.clients.get(caller)
            if conn is not None:
                self.counters.refused["peer_not_found"] += 1
                conn.queue.put(envelope.peer_not_found_frame(caller=caller, target=address, message=message))

    def forget_clients(self, removed: dict[str, list[dict[str, Any]]]) -> None:
        """Clients of a lost worker, released by the launcher's watchdog: tell this worker's
        subscribers (each surviving worker is told, so nothing is forwarded)."""
        for address, services in removed.items():
            self.broadcasts.departure(address, services, forward=False)

    def set_batch_policy(self, policy: BatchPolicy) -> None:
        """Change batching at run time, for every current and future target of this worker."""
        self.batch_policy = policy
        for conn in self.clients:
            conn.queue.set_policy(policy)

    # -- from a local client -------------------------------------------------------------------
    def route(self, conn: ClientConnection, frame: bytes) -> None:
        """A binary frame from a local client: stamp it and send it on its way."""
        counters = self.counters
        counters.frames_in += 1
        counters.bytes_in += len(frame)
        unheard = self._unheard
        if unheard and conn in unheard:
            self.reconnects.heard(conn)  # it listens now: what was kept for it can go
        held = self._held
        if held and conn in held:
            held[conn].append(frame)  # routed in turn with other clients' frames (throttle.py)
            return
        if frame and frame[0] == _V4:  # ``frames.is_v4`` without its call
            self._route_v4(conn, frame)
            return
        self._route_message(conn, frame)

    def _route_held(self, conn: ClientConnection, frame: bytes) -> None:
        if frames.is_v4(frame):
            self._route_v4(conn, frame)
        else:
            self._route_message(conn, frame)

    def _route_message(self, conn: ClientConnection, frame: bytes) -> None:
        """One (non-v4) message: stamp it; a direct message to a local client goes straight to
        its queue (the hot path), anything else through ``_dispatch``."""
        stamped = self.stamp(conn, frame)
        if stamped is None:
            return
        target, frame, header = stamped
        local = self._client(target)
        if local is not None and not self._locating:
            # A stamped frame is a msgpack map, never a v4 frame: it fits v3 and v4 clients alike.
            if not local.queue.put(frame):
                self.undeliverable(target, frame, header)
        else:
            self._dispatch(target, frame, header)

    def stamp(self, conn: ClientConnection, frame: bytes | memoryview) -> tuple[str, bytes, dict[str, Any]] | None:
        """Parse, check and stamp one message: ``(target, stamped frame, header)``, or ``None``
        after telling the sender why not."""
        try:
            env = envelope.parse(frame)
        except envelope.EnvelopeError as exc:
            self.unroutable(conn, str(exc))
            return None
        header = env.header
        target = envelope.normalize_target(header["to"], conn.workspace)
        if envelope.is_broadcast(target):
            if target != f"{conn.workspace}/*":
                # Broadcasts never leave the sender's workspace.
                self.undeliverable(
                    target, None, header, f"cannot broadcast to {target} from {conn.workspace}", sender=conn.address
                )
                return None
            if not conn.identity.can(conn.workspace, "rw"):
                # Read-only (``r``) clients may call services but not broadcast (docs/security.md).
                self.counters.dropped += 1
                conn.send_error(f"permission denied: read-only clients cannot broadcast in {conn.workspace}")
                return None
        elif "session" in header:
            self.replica.note_call(conn.address, target)  # answered if the target leaves
        stamped = envelope.stamp(
            env, target=target, sender=conn.address, workspace=conn.workspace, user=conn.user, suffix=conn.stamp_suffix
        )
        return target, stamped, env.header

    def unroutable(self, conn: ClientConnection, reason: str) -> None:
        """A frame from ``conn`` that cannot be read: an error frame back, nothing routed."""
        self.counters.dropped += 1
        conn.send_error(f"unroutable frame: {reason}")

    def _route_v4(self, conn: ClientConnection, frame: bytes) -> None:
        """A v4 frame: a batch (route each message, in order) or a chunk of a stream."""
        if not conn.wire_v4:
            self.unroutable(conn, "v4 frame on a v3 connection")
            return
        if frames.is_stream(frame):
            self.streams.route(conn, frame)
            return
        try:
            messages = frames.decode_batch(frame)
        except frames.FrameError as exc:
            self.unroutable(conn, str(exc))
            return
        grouped = len(messages) > 1  # one read: its frames to one target leave together at its end
        if grouped:
            WRITES.begin()
        try:
            for message in messages:
                if message and message[0] != frames.MAGIC:
                    self._route_message(conn, message)
                else:
                    self.unroutable(conn, "nested or empty message in a batch")
        finally:
            if grouped:
                WRITES.end()

    # -- to a target ---------------------------------------------------------------------------
    def remote_owner(self, target: str) -> str | None:
        if target in self.clients:
            return None
        return routing.remote_owner(self.replica.owner(target), self_id=self.worker_id, reachable=self.peers)

    def _dispatch(self, target: str, frame: bytes, header: dict[str, Any] | None) -> None:
        if envelope.is_manager(target):
            self._to_manager(frame, header)
        elif envelope.is_broadcast(target):
            event_type = (header or envelope.parse(frame).header).get("type", "")
            self.broadcasts.send(target, event_type, frame, forward=True)
        else:
            self.to_client(target, frame, header)

    def _to_manager(self, frame: bytes, header: dict[str, Any] | None) -> None:
        header = header or envelope.parse(frame).header
        session_owner = self.manager.owns_session(str(header.get("method", "")))
        route = routing.to_manager(session_owner, self_id=self.worker_id, reachable=self.peers)
        if route.via is Via.PEER:
            self.peers.send(route.owner, (self.manager.address, None, frame))  # type: ignore[arg-type]
        else:
            self.manager.handle(frame)

    def to_client(self, target: str, frame: bytes, header: dict[str, Any] | None, forwarded: bool = False) -> None:
        conn = self.clients.get(target)
        route = routing.to_client(
            local=conn is not None,
            owner=self.replica.owner(target),
            self_id=self.worker_id,
            reachable=self.peers,
            forwarded=forwarded,
            locating=bool(self._locating) and target in self._locating,
            awaited=conn is None and target in self._waited and self.reconnects.awaits(target, frame, header),
        )
        self.carry_out(route, conn, target, frame, header, forwarded)

    def carry_out(
        self,
        route: routing.Route,
        conn: ClientConnection | None,
        target: str,
        frame: bytes,
        header: dict[str, Any] | None,
        forwarded: bool,
    ) -> None:
        via = route.via
        if via is Via.LOCAL and conn is not None:
            if frames.is_stream(frame) and conn.wire_v4 and not self.streams.accept(conn, frame):
                return
            if (frames.is_v4(frame) and not conn.wire_v4) or not conn.queue.put(frame):
                self.undeliverable(target, frame, header)  # a v3 client never receives a v4 frame
        elif via is Via.PEER and route.owner is not None:
            self.peers.send(route.owner, (target, None, frame))
        elif via is Via.WAIT:  # frames sent before this one wait for the registry: keep the order
            self.locating.wait(target, frame, header, forwarded)
        elif via is Via.LOCATE:
            self.locating.start(target, frame, header, forwarded)
        elif via is Via.KEEP:
            self.reconnects.keep(target, frame, header)
        else:
            self.undeliverable(target, frame, header)

    def deliver(self, items: list[Item]) -> None:
        """A batch from a peer worker: deliver each frame locally, in order (one write group for
        v3 targets: ``delivery.WriteGroup``)."""
        if len(items) > 1:
            WRITES.begin()
            try:
                self._deliver(items)
            finally:
                WRITES.end()
        else:
            self._deliver(items)

    def _deliver(self, items: list[Item]) -> None:
        for target, event_type, frame in items:
            if event_type is not None:
                if target == CONTROL:
                    if event_type == INTEREST:
                        self.peers.apply_interest(frame)
                    elif event_type == SOCKET_LOST:
                        self.socket_lost(bytes(frame).decode(), forward=False)
                elif event_type == KEPT and not envelope.is_broadcast(target):
                    self.reconnects.arrived(target, frame)
                else:
                    self.broadcasts.send(target, event_type, frame, forward=False)
            elif target == self.manager.address:
                self.manager.handle(frame)
            else:
                self.to_client(target, frame, None, forwarded=True)

    # -- telling senders -----------------------------------------------------------------------
    def undeliverable(
        self,
        target: str,
        frame: bytes | None,
        header: dict[str, Any] | None = None,
        reason: str | None = None,
        *,
        sender: str | None = None,
    ) -> None:
        """The one place that answers "this message cannot be delivered to ``target``".

        The sender of a call gets a reject (or ``peer_not_found`` without a session); events
        and the router's own notices are fire-and-forget. ``frame`` may be a chunk: only chunk
        0 carries the header, and it answers for the whole stream.
        """
        if header is None:
            header = refusals.header_of(frame)
            if header is None:
                return  # a later chunk (chunk 0 answered for its stream), or unreadable
        self.counters.dropped += 1
        if sender is None:
            sender = header.get("from")
        if isinstance(sender, str):
            self.replica.forget_call(sender, target)  # the caller is told now: nothing to remember
        told = refusals.answer(
            header,
            target,
            reason or refusals.not_connected(target),
            sender=sender,
            manager=self.manager.address,
            server_user=self.manager.user,
        )
        if told is None:
            return
        self.counters.refused[told.kind] += 1
        if told.to == self.manager.address:
            self._to_manager(told.frame, None)
        elif told.to in self.clients or told.to in self.replica or told.to in self.reconnects.state:
            self.to_client(told.to, told.frame, None)

    def _unwritten(self, address: str, unwritten: list[bytes]) -> None:
        """A write to ``address`` failed: what it carried, and what waited behind it."""
        for frame in unwritten:
            self.undeliverable(address, frame)

    def _bulk_failed(self, items: list[Item]) -> None:
        self.streams.bulk_failed(items)

    def _peer_failed(self, items: list[Item]) -> None:
        """A peer worker could not be reached: its frames are undeliverable."""
        for target, event_type, frame in items:
            if event_type is None or (event_type == KEPT and not envelope.is_broadcast(target)):
                self.undeliverable(target, frame)

    # -- operations ----------------------------------------------------------------------------
    async def close_client(self, address: str, code: int = CloseCode.GOING_AWAY, generation: str | None = None) -> bool:
        return await self.clients.close(address, code, generation)

    async def probe(self, address: str) -> bool:
        return await self.clients.probe(address)

    def stats(self) -> dict[str, Any]:
        snapshot = stats.snapshot(
            self.worker_id,
            self.counters,
            self.clients,
            peers=self.peers.link_stats(),
            batch_policy=self.batch_policy,
            streams_opened=self.streams.ids.issued,
        )
        snapshot["message_cache"] = self.manager.cache_stats()
        return snapshot
