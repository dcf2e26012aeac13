"""Gateway workers: Ray actors that own client sockets and route every frame.

Each worker listens on the shared port (SO_REUSEPORT: the kernel spreads connections), runs
a workspace manager, and keeps a replica of the directory (which worker owns which client).
A frame for a local client goes straight onto that client's delivery queue; a frame for a
client of another worker goes to that worker through its ``PeerLink`` (one Ray call per batch).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import socket
import time
from collections import Counter
from http import HTTPStatus
from typing import Any

import ray
import websockets
from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from rhizomorph import logs
from rhizomorph.actors.channel import Channel, ChannelServer
from rhizomorph.actors.chunking import ChunkRelay, relay_name
from rhizomorph.actors.peer_link import Item, PeerLink
from rhizomorph.config import Config
from rhizomorph.gateway import connection as gateway_connection
from rhizomorph.gateway import http as gateway_http
from rhizomorph.gateway import prometheus
from rhizomorph.gateway.connection import CLOSE_GOING_AWAY, CLOSE_SLOW_CONSUMER, CLOSE_SUPERSEDED, ClientConnection
from rhizomorph.gateway.manager import SERVER_VERSION, WorkspaceManager
from rhizomorph.protocol import envelope, frames, limits
from rhizomorph.protocol.batching import BatchMetrics, BatchPolicy
from rhizomorph.protocol.handshake import HandshakeError, Identity, TokenIssuer

log = logging.getLogger("rhizomorph.worker")

STREAM_CUT = "the chunk stream was cut: chunks were lost between gateway workers"


class Router:
    """The routing core of one gateway worker (runs on the worker's event loop)."""

    server_version = SERVER_VERSION

    def __init__(self, config: Config, worker_id: str, registry: Any) -> None:
        self.config = config
        self.worker_id = worker_id
        self.registry = registry
        self.issuer = TokenIssuer(config.jwt_secret)
        self.batch_policy = config.batch_policy()
        self.connections: dict[str, ClientConnection] = {}
        self.by_workspace: dict[str, set[str]] = {}
        self.directory: dict[str, str] = {}
        self.callers_of: dict[str, set[str]] = {}  # target -> local clients that sent it calls
        #: Targets missing from the replica that the registry is being asked about: frames for
        #: them wait here, in order, behind that one lookup (a burst makes one Ray call, not one each).
        self._locating: dict[str, list[tuple[bytes, dict[str, Any] | None, int]]] = {}
        self.registry_lookups = 0
        self.links: dict[str, PeerLink] = {}
        self.bulk: dict[str, PeerLink] = {}  # chunk frames, through the node's chunking actor
        self.chunk_relay: Any = None
        # Stream ids this worker hands out: random high half, counter low half (unique per receiver).
        self._stream_base = random.getrandbits(31) << 32
        self._stream_seq = 0
        self._failed_streams: set[int] = set()  # outbound streams whose chunks were lost between workers
        self._inbound_streams: dict[int, tuple[dict[str, Any], int]] = {}  # id -> (header, next index)
        self.manager = WorkspaceManager(
            self,
            manager_id=config.manager_id,
            server_id=config.server_id,
            base_url=config.base_url,
            issuer=self.issuer,
            call_timeout=config.manager_call_timeout,
        )
        self.dropped = 0
        self.evicted = 0
        self.frames_in = 0
        self.bytes_in = 0
        self.refused: Counter = Counter()  # undeliverable messages answered, by kind
        self.disconnects: Counter = Counter()  # closed connections, by close code
        self.departed = BatchMetrics()  # delivery counts of clients that left (totals stay monotonic)

    # -- ManagerHost ---------------------------------------------------------------------------
    def identity(self, address: str) -> Identity | None:
        conn = self.connections.get(address)
        return conn.identity if conn else None

    def subscriptions(self, address: str) -> set[str] | None:
        conn = self.connections.get(address)
        return conn.subscriptions if conn else None

    def send(self, target: str, frame: bytes) -> None:
        """Route a frame the router made itself (manager replies, calls, rejects)."""
        self._dispatch(target, frame, None)

    def broadcast_event(self, workspace: str, event_type: str, data: Any, forward: bool = True) -> None:
        self._broadcast(f"{workspace}/*", event_type, envelope.event_frame(event_type, data), forward=forward)

    # -- peers and directory -------------------------------------------------------------------
    def set_peers(self, peers: dict[str, Any], channels: dict[str, str] | None = None) -> None:
        """Links to every other worker: over ``channels`` (Unix socket paths of same-node peers)
        where given, else Ray calls. A worker id that comes back as a new actor gets new links."""
        channels = channels or {}
        for worker_id, handle in peers.items():
            if worker_id == self.worker_id:
                continue
            link = self.links.get(worker_id)
            if link is not None and link.handle._actor_id == handle._actor_id:
                continue
            if worker_id in channels:
                channel = Channel(channels[worker_id])
                link = PeerLink(
                    worker_id, handle, self._peer_failed, call=channel.send, try_call=channel.try_send, kind="socket"
                )
            else:
                link = PeerLink(worker_id, handle, self._peer_failed)
            self.links[worker_id] = link
            # Chunks of large messages to a peer reached over Ray calls take a bulk link through
            # the node's chunking actor, so they never hold up the ordered link. A same-node peer
            # on the Unix socket gets them on its ordered link, in turn with small messages (at
            # most a 256 KiB chunk ahead of one), as a local target does: measured, 2 MB v4
            # echoes between two workers of one node ran at ~56 MB/s through the actor (two Ray
            # calls per 1 MiB slice).
            self.bulk.pop(worker_id, None)
            if self.chunk_relay is not None and worker_id not in channels:
                self.bulk[worker_id] = PeerLink(
                    worker_id,
                    handle,
                    self._bulk_failed,
                    kind="chunk-actor",
                    call=lambda items, peer=handle: self.chunk_relay.relay.remote(peer, items),
                )
        for worker_id in list(self.links):
            if worker_id not in peers:
                del self.links[worker_id]
                self.bulk.pop(worker_id, None)

    def forget_clients(self, removed: dict[str, list[dict[str, Any]]]) -> None:
        """Clients of a lost worker, released by the launcher's watchdog: tell this worker's
        subscribers (each surviving worker is told, so nothing is forwarded)."""
        for address, services in removed.items():
            self._announce_departure(address, services, forward=False)

    def _announce_departure(self, address: str, services: list[dict[str, Any]], *, forward: bool) -> None:
        """``service_removed`` for each of a departed client's services, then ``client_disconnected``
        (with the bare client id, as hypha-rpc expects), to the subscribers of its workspace."""
        workspace, client_id = address.split("/", 1)
        for info in services:
            if info.get("type") != "built-in":
                self.broadcast_event(workspace, "service_removed", info, forward=forward)
        self.broadcast_event(
            workspace, "client_disconnected", {"id": client_id, "workspace": workspace}, forward=forward
        )

    def update_directory(self, updates: list[tuple[str, str | None]]) -> None:
        for address, worker_id in updates:
            if worker_id is None:
                self.directory.pop(address, None)
                self._notify_callers(address)
            else:
                self.directory[address] = worker_id

    def _notify_callers(self, address: str) -> None:
        """A client left for good: local clients that called it are told at once (peer_not_found),
        so calls it will never answer fail now, not at their timeout — in any workspace."""
        for caller in self.callers_of.pop(address, ()):
            conn = self.connections.get(caller)
            if conn is not None:
                self.refused["peer_not_found"] += 1
                conn.queue.put(
                    envelope.peer_not_found_frame(
                        caller=caller, target=address, message=f"Target peer {address} is not connected"
                    )
                )

    # -- connections ---------------------------------------------------------------------------
    async def admit(self, conn: ClientConnection, is_reconnect: bool) -> None:
        """Claim the client's address cluster-wide, replacing an older socket of the same client."""
        previous = await self.registry.claim_client.remote(
            conn.address, self.worker_id, conn.generation, conn.identity.user_id, is_reconnect
        )
        if previous is not None and not is_reconnect:
            if await self._owner_alive(conn.address, previous):
                raise HandshakeError("Client already exists and is active")
            previous = await self.registry.claim_client.remote(
                conn.address, self.worker_id, conn.generation, conn.identity.user_id, True
            )
        if previous is not None:
            await self._drop_superseded(conn.address, previous)
        conn.queue.max_bytes = self.config.max_queue_bytes
        conn.queue.on_overflow = lambda reason: self._evict(conn, reason)
        self.connections[conn.address] = conn
        self.by_workspace.setdefault(conn.workspace, set()).add(conn.address)
        self.directory[conn.address] = self.worker_id

    async def _owner_alive(self, address: str, owner: dict[str, str]) -> bool:
        if owner["worker_id"] == self.worker_id:
            return await self.probe(address)
        link = self.links.get(owner["worker_id"])
        if link is None:
            return False
        try:
            return await link.handle.probe_client.remote(address)
        except Exception:
            return False

    async def _drop_superseded(self, address: str, owner: dict[str, str]) -> None:
        if owner["worker_id"] == self.worker_id:
            await self.close_client(address, CLOSE_SUPERSEDED, owner["generation"])
        elif owner["worker_id"] in self.links:
            self.links[owner["worker_id"]].handle.close_client.remote(address, CLOSE_SUPERSEDED, owner["generation"])

    async def disconnect(self, conn: ClientConnection) -> None:
        """Clean up after a socket closed: undelivered calls are rejected, services removed."""
        if self.connections.get(conn.address) is conn:
            del self.connections[conn.address]
            members = self.by_workspace.get(conn.workspace)
            if members is not None:
                members.discard(conn.address)
                if not members:
                    del self.by_workspace[conn.workspace]
        self._abort_streams(conn)
        for stream_id in [i for i, (header, _) in self._inbound_streams.items() if header.get("to") == conn.address]:
            del self._inbound_streams[stream_id]
        for frame in conn.queue.close():
            self._target_gone(conn.address, frame)
        self.departed.merge(conn.queue.batcher.metrics)
        self.disconnects[str(conn.websocket.close_code or "none")] += 1
        try:
            removed = await self.registry.release_client.remote(conn.address, conn.generation)
        except Exception as exc:  # registry restarting; its state is rebuilt from reconnects
            log.warning("could not release %s: %s", conn.address, exc)
            return
        if removed is None:
            return  # a newer socket of this client took over: it is not gone
        if self.directory.get(conn.address) == self.worker_id:
            del self.directory[conn.address]
        self._announce_departure(conn.address, removed, forward=True)

    def _evict(self, conn: ClientConnection, reason: str) -> None:
        """A consumer that does not drain: close it; its undelivered frames are rejected to their
        senders by the disconnect cleanup, and the bound keeps the router's memory flat."""
        self.evicted += 1
        log.warning("evicting slow consumer %s: %s", conn.address, reason)
        asyncio.ensure_future(conn.websocket.close(CLOSE_SLOW_CONSUMER, limits.close_reason(reason)))
        # A blocked write would hold the close handshake: give up on the transport too.
        transport = getattr(conn.websocket, "transport", None)
        if transport is not None:
            asyncio.get_running_loop().call_later(2.0, transport.abort)

    async def watch_writes(self, period: float = 1.0) -> None:
        """Evict clients whose socket write stalled past ``write_timeout`` (runs for the worker's life)."""
        timeout = self.config.write_timeout
        while timeout > 0:
            await asyncio.sleep(period)
            now = time.monotonic()
            for conn in list(self.connections.values()):
                if conn.queue.stalled(now, timeout):
                    conn.queue.overflow(f"a write blocked for over {timeout:g} s")

    async def close_client(self, address: str, code: int = CLOSE_GOING_AWAY, generation: str | None = None) -> bool:
        conn = self.connections.get(address)
        if conn is None or (generation is not None and conn.generation != generation):
            return False
        await conn.websocket.close(code, "closed by the router")
        return True

    async def probe(self, address: str, timeout: float = 3.0) -> bool:
        conn = self.connections.get(address)
        if conn is None:
            return False
        try:
            pong = await conn.websocket.ping()
            await asyncio.wait_for(pong, timeout)
            return True
        except Exception:
            return False

    # -- routing -------------------------------------------------------------------------------
    def route(self, conn: ClientConnection, frame: bytes) -> None:
        """A binary frame from a local client: stamp it and send it on its way."""
        self.frames_in += 1
        self.bytes_in += len(frame)
        if frames.is_v4(frame):
            self._route_v4(conn, frame)
            return
        self._route_message(conn, frame)

    def _route_message(self, conn: ClientConnection, frame: bytes) -> None:
        """One (non-v4) message: stamp it; a direct message to a local client goes straight to
        its queue (the hot path), anything else through ``_dispatch``."""
        stamped = self._stamp(conn, frame)
        if stamped is None:
            return
        target, frame, header = stamped
        local = self.connections.get(target)
        if local is not None and not self._locating:
            # A stamped frame is a msgpack map, never a v4 frame: it fits v3 and v4 clients alike.
            if not local.queue.put(frame):
                self._target_gone(target, frame, header)
        else:
            self._dispatch(target, frame, header)

    def _stamp(self, conn: ClientConnection, frame: bytes) -> tuple[str, bytes, dict[str, Any]] | None:
        """Parse, check and stamp one message: ``(target, stamped frame, header)``, or ``None``
        after telling the sender why not."""
        try:
            env = envelope.parse(frame)
        except envelope.EnvelopeError as exc:
            self._unroutable(conn, str(exc))
            return None
        header = env.header
        target = envelope.normalize_target(header["to"], conn.workspace)
        if envelope.is_broadcast(target):
            if target != f"{conn.workspace}/*":
                # Broadcasts never leave the sender's workspace.
                self._refuse(header, conn.address, target, f"cannot broadcast to {target} from {conn.workspace}")
                return None
            if not conn.identity.can(conn.workspace, "rw"):
                # Read-only (``r``) clients may call services but not broadcast (docs/security.md).
                self.dropped += 1
                asyncio.ensure_future(
                    _send_error(conn, f"permission denied: read-only clients cannot broadcast in {conn.workspace}")
                )
                return None
        elif "session" in header:
            callers = self.callers_of.get(target)  # answered if the target leaves
            if callers is None:
                self.callers_of[target] = {conn.address}
            else:
                callers.add(conn.address)
        stamped = envelope.stamp(
            env, target=target, sender=conn.address, workspace=conn.workspace, user=conn.user, suffix=conn.stamp_suffix
        )
        return target, stamped, env.header

    def _unroutable(self, conn: ClientConnection, reason: str) -> None:
        self.dropped += 1
        asyncio.ensure_future(_send_error(conn, f"unroutable frame: {reason}"))

    def _route_v4(self, conn: ClientConnection, frame: bytes) -> None:
        """A v4 frame: a batch (route each message, in order) or a chunk of a stream."""
        if not conn.wire_v4:
            self._unroutable(conn, "v4 frame on a v3 connection")
            return
        if frames.is_stream(frame):
            self._route_chunk(conn, frame)
            return
        try:
            messages = frames.decode_batch(frame)
        except frames.FrameError as exc:
            self._unroutable(conn, str(exc))
            return
        for message in messages:
            if message and message[0] != frames.MAGIC:
                self._route_message(conn, message)
            else:
                self._unroutable(conn, "nested or empty message in a batch")

    def _route_chunk(self, conn: ClientConnection, frame: bytes) -> None:
        """One chunk of a large message. Chunk 0 starts with the message header, which is
        stamped like any header; the stream id is renamed so it is unique at the receiver."""
        try:
            stream_id, index, flags, data = frames.decode_chunk(frame)
        except frames.FrameError as exc:
            self._unroutable(conn, str(exc))
            return
        last = bool(flags & frames.LAST)
        if index == 0:
            if stream_id in conn.streams:
                self._unroutable(conn, f"stream {stream_id} is already open")
                return
            stamped = self._stamp(conn, data)
            if stamped is None:
                return
            target, data, header = stamped
            if target == self.manager.address or envelope.is_broadcast(target):
                self._refuse(header, conn.address, target, "a chunk stream must go to one client")
                return
            self._stream_seq += 1
            entry = (target, self._stream_base | self._stream_seq, header)
            if not last:
                conn.streams[stream_id] = entry
        else:
            entry = conn.streams.pop(stream_id, None) if last else conn.streams.get(stream_id)
            if entry is None:
                self._unroutable(conn, f"chunk {index} of unknown stream {stream_id}")
                return
        target, out_id, header = entry
        if out_id in self._failed_streams:
            if last:  # the caller was told when the loss was noticed (here or at the receiving worker)
                self._failed_streams.discard(out_id)
            return
        chunk = frames.encode_chunk(out_id, index, last, data)
        owner = self._remote_owner(target)
        if owner is None or owner not in self.bulk:
            self._to_client(target, chunk, header if index == 0 or last else None)
        elif not last:
            self.bulk[owner].send((target, None, chunk))
        else:
            # The last chunk completes the message: it takes the ordered link, after the bulk link
            # has delivered the rest, so messages sent after this one cannot overtake it.
            link = self.links[owner]
            link.hold(self.bulk[owner].idle())
            link.send((target, None, chunk))

    def _remote_owner(self, target: str) -> str | None:
        if target in self.connections:
            return None
        owner = self.directory.get(target)
        return owner if owner is not None and owner != self.worker_id and owner in self.links else None

    def _abort_streams(self, conn: ClientConnection) -> None:
        """The sender left mid-stream: tell each receiver to drop what it has."""
        for target, out_id, _ in conn.streams.values():
            self._to_client(target, frames.encode_chunk(out_id, 0, True, b"", abort=True), None)
        conn.streams.clear()

    def set_batch_policy(self, policy: BatchPolicy) -> None:
        """Change batching at run time, for every current and future target of this worker."""
        self.batch_policy = policy
        for conn in self.connections.values():
            conn.queue.set_policy(policy)

    def _dispatch(self, target: str, frame: bytes, header: dict[str, Any] | None) -> None:
        if target == self.manager.address:
            self._to_manager(frame, header)
        elif envelope.is_broadcast(target):
            event_type = (header or envelope.parse(frame).header).get("type", "")
            self._broadcast(target, event_type, frame, forward=True)
        else:
            self._to_client(target, frame, header)

    def _to_manager(self, frame: bytes, header: dict[str, Any] | None) -> None:
        header = header or envelope.parse(frame).header
        owner = self.manager.owns_session(str(header.get("method", "")))
        if owner is not None and owner != self.worker_id and owner in self.links:
            self.links[owner].send((self.manager.address, None, frame))
        else:
            self.manager.handle(frame)

    def _to_client(self, target: str, frame: bytes, header: dict[str, Any] | None, hops: int = 0) -> None:
        pending = self._locating.get(target) if self._locating else None
        if pending is not None:  # frames sent before this one wait for the registry: keep the order
            pending.append((frame, header, hops))
            return
        conn = self.connections.get(target)
        if conn is not None:
            if frames.is_stream(frame) and conn.wire_v4 and not self._accept_chunk(conn, frame):
                return
            if (frames.is_v4(frame) and not conn.wire_v4) or not conn.queue.put(frame):
                self._target_gone(target, frame, header)  # a v3 client never receives a v4 frame
            return
        owner = self._remote_owner(target) if hops == 0 else None  # a forwarded frame is not forwarded again
        if owner is not None:
            self.links[owner].send((target, None, frame))
            return
        # Not in our replica (or a stale entry): ask the registry once before giving up.
        self._locating[target] = [(frame, header, hops)]
        asyncio.ensure_future(self._locate_then_send(target))

    async def _locate_then_send(self, target: str) -> None:
        self.registry_lookups += 1
        try:
            owner = await self.registry.locate.remote(target)
        except Exception:
            owner = None
        if owner is not None and owner != self.worker_id and owner in self.links:
            self.directory[target] = owner
        for frame, header, hops in self._locating.pop(target, ()):
            conn = self.connections.get(target)
            if conn is not None:
                self._to_client(target, frame, header, hops)
            elif owner is not None and owner != self.worker_id and owner in self.links and hops == 0:
                self.links[owner].send((target, None, frame))
            else:
                self._target_gone(target, frame, header)

    def _broadcast(self, target: str, event_type: str, frame: bytes, *, forward: bool) -> None:
        """Deliver to the subscribed clients of this worker, then once to every peer worker."""
        workspace = target[:-2]
        for address in self.by_workspace.get(workspace, ()):
            conn = self.connections[address]
            if event_type in conn.subscriptions:
                conn.queue.put(frame)
        if forward:
            for link in self.links.values():
                link.send((target, event_type, frame))

    def deliver(self, items: list[Item]) -> None:
        """A batch from a peer worker: deliver each frame locally, in order."""
        for target, event_type, frame in items:
            if event_type is not None:
                self._broadcast(target, event_type, frame, forward=False)
            elif target == self.manager.address:
                self.manager.handle(frame)
            else:
                self._to_client(target, frame, None, hops=1)

    # -- telling senders -----------------------------------------------------------------------
    def _target_gone(
        self, target: str, frame: bytes, header: dict[str, Any] | None = None, reason: str | None = None
    ) -> None:
        try:
            if header is None and frames.is_stream(frame):
                _, index, _, data = frames.decode_chunk(frame)
                if index != 0:
                    return  # only the first chunk carries the header; it answers for the stream
                frame = data
            header = header or envelope.parse(frame).header
        except (envelope.EnvelopeError, frames.FrameError):
            return
        self._refuse(header, header.get("from"), target, reason or f"Target peer {target} is not connected")

    def _refuse(self, header: dict[str, Any], sender: Any, target: str, message: str) -> None:
        """Tell the sender its message was not delivered: a reject for calls, else peer_not_found."""
        self.dropped += 1
        if not isinstance(sender, str) or header.get("type") != "method":
            return  # events and server notices are fire-and-forget by design
        if sender == self.manager.address and "session" not in header:
            return  # the manager's own replies to a caller that left: nobody to tell
        session = header.get("session")
        if isinstance(session, str):
            self.refused["reject"] += 1
            frame = envelope.reject_frame(
                caller=sender,
                target=target,
                session=session,
                message=message,
                workspace=sender.split("/", 1)[0],
                user=self.manager.user,
            )
        else:
            self.refused["peer_not_found"] += 1
            frame = envelope.peer_not_found_frame(caller=sender, target=target, message=message)
        if sender == self.manager.address:
            self._to_manager(frame, None)
        elif sender in self.connections or sender in self.directory:
            self._to_client(sender, frame, None)

    def _bulk_failed(self, items: list[Item]) -> None:
        """Chunks lost with the chunking actor (or their target's worker): each stream they
        belong to fails on both ends. Its later chunks are dropped here; the receiving worker is
        told to abort it, and rejects the caller (it holds the header) — unless the header was
        in the lost chunk 0, then the caller is rejected from here."""
        for target, _, frame in items:
            stream_id, index, _, data = frames.decode_chunk(frame)
            if index == 0:
                self._target_gone(target, frame, None, reason=STREAM_CUT)
            if stream_id not in self._failed_streams:
                self._failed_streams.add(stream_id)
                self._to_client(target, frames.encode_chunk(stream_id, 0, True, b"", abort=True), None)

    def _accept_chunk(self, conn: ClientConnection, frame: bytes) -> bool:
        """Keep a delivered stream whole: a chunk out of sequence, or an abort, ends the stream
        for the receiving client (it gets the abort) and for the caller (a reject)."""
        stream_id, index, flags, data = frames.decode_chunk(frame)
        known = self._inbound_streams.get(stream_id)
        if index == 0 and not flags & frames.ABORT:
            try:
                header = envelope.parse(data).header
            except envelope.EnvelopeError:
                return False
            if not flags & frames.LAST:
                self._inbound_streams[stream_id] = (header, 1)
            return True
        if known is not None and index == known[1] and not flags & frames.ABORT:
            if flags & frames.LAST:
                del self._inbound_streams[stream_id]
            else:
                self._inbound_streams[stream_id] = (known[0], index + 1)
            return True
        if known is not None:  # a gap, or the sender's worker lost chunks on the way
            del self._inbound_streams[stream_id]
            conn.queue.put(frames.encode_chunk(stream_id, 0, True, b"", abort=True))
            header = known[0]
            self._refuse(header, header.get("from"), conn.address, STREAM_CUT)
        return False  # a finished or unknown stream: nothing to deliver

    def _peer_failed(self, items: list[Item]) -> None:
        for target, event_type, frame in items:
            if event_type is None:
                self._target_gone(target, frame)

    async def cluster_stats(self) -> list[dict[str, Any]]:
        """Stats of this worker and of every peer (the manager's ``get_router_stats``)."""
        peers = await asyncio.gather(
            *(link.handle.stats.remote() for link in self.links.values()), return_exceptions=True
        )
        return [self.stats()] + [p for p in peers if isinstance(p, dict)]

    def stats(self) -> dict[str, Any]:
        return {
            "worker_id": self.worker_id,
            "pid": os.getpid(),
            "connections": len(self.connections),
            "clients": sorted(self.connections),
            "dropped": self.dropped,
            "evicted": self.evicted,
            "streams_opened": self._stream_seq,
            "peer_calls": {w: link.calls for w, link in self.links.items()},
            "peer_channels": {w: link.kind for w, link in self.links.items()},
            "peer_frames": {w: link.frames for w, link in self.links.items()},
            "batch_policy": dataclasses.asdict(self.batch_policy),
            "frames_in": self.frames_in,
            "registry_lookups": self.registry_lookups,
            "bytes_in": self.bytes_in,
            "refused": dict(self.refused),
            "disconnects": dict(self.disconnects),
            "totals": self._delivery_totals(),
            "targets": {address: conn.queue.metrics() for address, conn in self.connections.items()},
        }

    def _delivery_totals(self) -> dict[str, Any]:
        """Delivery counts since the worker started: clients that left plus those connected."""
        totals = BatchMetrics()
        totals.merge(self.departed)
        for conn in self.connections.values():
            totals.merge(conn.queue.batcher.metrics)
        result = totals.as_dict()
        result.update(targets=len(self.connections), depth=sum(c.queue.depth for c in self.connections.values()))
        return result


async def _send_error(conn: ClientConnection, message: str) -> None:
    try:
        await conn.send_text({"type": "error", "message": message})
    except Exception:
        pass


def _reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # accepted sockets inherit it. Without it Nagle + delayed ACK hold the tail of a burst ~40 ms.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def _http_handler(router: Router) -> Any:
    """Plain HTTP on the gateway port: health, metrics, and static pages; WebSocket upgrades go
    through on any path."""

    async def handle(connection: ServerConnection, request: Request) -> Response | None:
        if "upgrade" in request.headers.get("Connection", "").lower():
            return None
        path = request.path.split("?", 1)[0]
        if path in ("/health", "/healthz"):
            return connection.respond(HTTPStatus.OK, "ok\n")
        if path == "/metrics":
            body = prometheus.render(await router.cluster_stats())
            return gateway_http.response(HTTPStatus.OK, body, prometheus.CONTENT_TYPE)
        return gateway_http.respond(request)  # the console, the examples and the JS client (rhizomorph/gateway/http.py)

    return handle


@ray.remote(num_cpus=0, max_restarts=0)
class GatewayWorker:
    """A Ray actor hosting one ``Router`` and its share of the gateway's sockets."""

    def __init__(self, config: Config, worker_id: str, registry: Any) -> None:
        logs.configure(config.log_level, config.log_format)
        self._config = config
        self._router = Router(config, worker_id, registry)
        self._channel: ChannelServer | None = None
        self._node_id = ""
        self._server: Any = None
        self._write_watch: asyncio.Future | None = None

    async def start(self) -> dict[str, Any]:
        config = self._config
        sock = _reuseport_socket(config.host, config.port)
        self._server = await websockets.serve(
            lambda ws: gateway_connection.serve(ws, self._router),
            sock=sock,
            max_size=config.max_message_size,
            compression="deflate" if config.compression else None,
            process_request=_http_handler(self._router),
            create_connection=gateway_connection.RouterServerConnection,
        )
        node_id = self._node_id = ray.get_runtime_context().get_node_id()
        if config.peer_channel == "socket":
            self._channel = ChannelServer(self._router.deliver)
            await self._channel.start()
        self._router.chunk_relay = ChunkRelay.options(
            name=relay_name(config.server_id, node_id), get_if_exists=True
        ).remote()
        snapshot = await self._router.registry.add_worker.remote(self._router.worker_id, self._self_handle())
        self._router.update_directory(list(snapshot.items()))
        self._write_watch = asyncio.ensure_future(self._router.watch_writes())
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
        self._router.set_peers(peers, channels)

    async def ping(self) -> str:
        """Liveness check of the launcher's watchdog."""
        return self._router.worker_id

    async def forget_clients(self, removed: dict[str, list[dict[str, Any]]]) -> None:
        self._router.forget_clients(removed)

    async def update_directory(self, updates: list[tuple[str, str | None]]) -> None:
        self._router.update_directory(updates)

    async def deliver(self, items: list[Item]) -> None:
        self._router.deliver(items)

    async def close_client(self, address: str, code: int = CLOSE_GOING_AWAY, generation: str | None = None) -> bool:
        return await self._router.close_client(address, code, generation)

    async def probe_client(self, address: str) -> bool:
        return await self._router.probe(address)

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
        if self._channel is not None:
            await self._channel.close()
        if self._router.chunk_relay is not None:
            ray.kill(self._router.chunk_relay, no_restart=True)  # shared by the node's workers: all stop together
