"""One client's WebSocket: handshake, then read frames and hand them to the router.

This is the socket end of the path socket -> router -> per-target queue -> socket: frames read
here go to ``Router.route`` (``rhizomorph/gateway/router.py``), which stamps them and queues
them on the target's ``DeliveryQueue`` (``rhizomorph/gateway/delivery.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

import shortuuid
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from rhizomorph.background import spawn
from rhizomorph.config import Config
from rhizomorph.gateway.delivery import DeliveryQueue
from rhizomorph.gateway.direct_write import DirectWriter
from rhizomorph.protocol import handshake, limits
from rhizomorph.protocol.batching import BatchPolicy
from rhizomorph.protocol.close_codes import CloseCode
from rhizomorph.protocol.envelope import identity_suffix
from rhizomorph.protocol.handshake import HandshakeError, Identity, TokenIssuer
from rhizomorph.protocol.streams import SendingStreams

log = logging.getLogger("rhizomorph.connection")

MAX_CONTROL_TEXT = 1000  # Hypha ignores longer client text frames too
ERROR_SEND_TIMEOUT = 5.0  # seconds to hand a closing client its error frame
#: Seconds an evicted client's close handshake may take before its transport is aborted.
EVICTION_ABORT_AFTER = 2.0
#: Seconds a probe waits for the pong.
PROBE_TIMEOUT = 3.0


#: Frames waiting in websockets' protocol buffer are joined into one socket write up to this
#: many bytes; bigger writes gain nothing from joining (the copy costs more than the syscall).
COALESCE_LIMIT = 65536
MAX_FRAGMENTS = 4096  # fragments of one binary message (websockets assembles at most as many)


class RouterServerConnection(ServerConnection):
    """websockets' server connection with a shorter path each way for binary messages.

    In: ``process_event`` hands each binary message to ``on_binary`` as the bytes arrive.
    Out: ``send_frames`` writes several frames with one socket write. Over loopback a ``send``
    syscall is dear (the kernel delivers the segment in it), and with TCP_NODELAY each frame
    is its own segment: a flush of N frames to a v3 client would cost N of them.
    ``send_frames`` queues the frames in the protocol and ``send_data`` hands them to the
    transport as one write.
    """

    #: Set once the handshake is done: called with every complete binary message, straight from
    #: ``data_received``. websockets would otherwise queue each frame in its Assembler and wake
    #: the reading coroutine once per message; text frames still take that path.
    on_binary: Callable[[bytes], None] | None = None
    _binary_parts: list[bytes] | None = None  # a fragmented binary message, until its last frame
    _text_fragmented = False  # continuation frames of a text message go to the Assembler

    def process_event(self, event: Any) -> None:
        on_binary = self.on_binary
        if on_binary is None or not isinstance(event, Frame):
            return super().process_event(event)
        opcode = event.opcode
        if opcode is Opcode.BINARY or (opcode is Opcode.CONT and not self._text_fragmented):
            data = event.data if type(event.data) is bytes else bytes(event.data)
            if opcode is Opcode.BINARY and event.fin:
                message = data
            else:  # fragments: the protocol parser already bounds their total by max_size
                parts = self._binary_parts
                if parts is None:
                    parts = self._binary_parts = []
                parts.append(data)
                if len(parts) > MAX_FRAGMENTS:  # empty fragments would grow the list forever
                    self._binary_parts = None
                    self.protocol.fail(CloseCode.MESSAGE_TOO_BIG, f"more than {MAX_FRAGMENTS} fragments")
                    self.send_data()
                    return
                if not event.fin:
                    return
                message, self._binary_parts = b"".join(parts), None
            try:
                on_binary(message)
            except Exception:  # a router bug must not kill the socket's protocol callbacks
                log.exception("routing a frame failed")
            return
        if opcode is Opcode.TEXT or opcode is Opcode.CONT:
            self._text_fragmented = not event.fin
        super().process_event(event)

    async def send_frames(self, frames: list[bytes]) -> None:
        """Send each of ``frames`` as its own binary message (one socket write for them all)."""
        async with self.send_context():
            for frame in frames:
                self.protocol.send_binary(frame)

    def send_data(self) -> None:
        writes = self.protocol.writes
        if len(writes) > 1 and all(writes) and sum(map(len, writes)) <= COALESCE_LIMIT:
            self.protocol.writes = [b"".join(writes)]
        super().send_data()


class ClientConnection:
    """A connected client: who it is, its socket, its delivery queue and its subscriptions.

    The queue is bounded when it is made: a put past ``max_queue_bytes``, or a write blocked
    past the write timeout, evicts the client (``evict``) and tells ``on_evicted``.
    """

    def __init__(
        self,
        websocket: ServerConnection,
        identity: Identity,
        policy: BatchPolicy,
        *,
        wire_v4: bool = False,
        max_queue_bytes: int = 0,
        on_evicted: Callable[[ClientConnection, str], None] | None = None,
    ) -> None:
        self.websocket = websocket
        self.wire_v4 = wire_v4
        self.identity = identity
        self.address = identity.address
        self.workspace = identity.workspace
        self.user = identity.user_info()
        self.stamp_suffix = identity_suffix(self.address, self.workspace, self.user)
        self.generation = shortuuid.uuid()
        self.subscriptions: set[str] = set()
        #: Chunk streams (v4) this client is sending.
        self.streams = SendingStreams()
        self._on_evicted = on_evicted
        send_frames = getattr(websocket, "send_frames", None)  # RouterServerConnection
        direct = DirectWriter(websocket) if isinstance(websocket, RouterServerConnection) else None
        self.queue = DeliveryQueue(
            self.address,
            websocket.send,
            policy,
            wire_v4=wire_v4,
            send_frames=send_frames,
            direct=direct,
            max_bytes=max_queue_bytes,
            on_overflow=self.evict,
        )

    @property
    def close_code(self) -> int | None:
        return self.websocket.close_code

    @property
    def closed_by_client(self) -> bool:
        """Whether the client closed its socket itself (its close frame came first): hypha-rpc
        then does not reconnect. Any other end, the router's close or a lost connection, it
        reconnects after. Sockets that do not tell (HTTP streams) count as not closed by it."""
        protocol = getattr(self.websocket, "protocol", None)
        return getattr(protocol, "close_rcvd_then_sent", None) is True

    async def send_text(self, payload: dict[str, Any]) -> None:
        await self.websocket.send(json.dumps(payload))

    def send_error(self, message: str) -> None:
        """Tell the client the router refused something (an error text frame; best effort)."""
        spawn(_send_quietly(self.websocket, handshake.error_frame(message)))

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code, limits.close_reason(reason))

    async def probe(self, timeout: float = PROBE_TIMEOUT) -> bool:
        """Whether the client answers a ping within ``timeout``."""
        try:
            pong = await self.websocket.ping()
            await asyncio.wait_for(pong, timeout)
            return True
        except Exception:
            return False

    def evict(self, reason: str) -> None:
        """A consumer that does not drain: close it (4001). Its undelivered frames are
        answered to their senders by the disconnect cleanup; the bound keeps memory flat."""
        log.warning("evicting slow consumer %s: %s", self.address, reason)
        if self._on_evicted is not None:
            self._on_evicted(self, reason)
        spawn(self.close(CloseCode.SLOW_CONSUMER, reason))
        # A blocked write would hold the close handshake: give up on the transport too.
        transport = getattr(self.websocket, "transport", None)
        if transport is not None:
            asyncio.get_running_loop().call_later(EVICTION_ABORT_AFTER, transport.abort)


async def _send_quietly(websocket: ServerConnection, text: str) -> None:
    try:
        await websocket.send(text)
    except Exception:
        pass


class ConnectionHost(Protocol):
    """What a connection needs from the router of its worker."""

    config: Config
    issuer: TokenIssuer
    worker_id: str
    server_version: str
    batch_policy: BatchPolicy

    def holds(self, address: str) -> bool: ...

    def connection_count(self) -> int: ...

    def on_evicted(self, conn: ClientConnection, reason: str) -> None: ...

    async def admit(self, conn: ClientConnection, is_reconnect: bool) -> None: ...

    def route(self, conn: ClientConnection, frame: bytes) -> None: ...

    async def disconnect(self, conn: ClientConnection) -> None: ...


async def serve(websocket: ServerConnection, router: ConnectionHost) -> None:
    """The whole life of one client connection."""
    connection = await _handshake(websocket, router)
    if connection is None:
        return
    config = router.config
    policy = limits.InboundPolicy(
        rate=config.message_rate, burst=config.message_burst, idle_timeout=config.idle_timeout
    )
    watchdog = spawn(_watch_idle(websocket, policy)) if config.idle_timeout > 0 else None
    closing: list[asyncio.Task[None]] = []  # the close of a flooding client, once under way

    def on_binary(message: bytes) -> None:
        if closing:
            return  # the flood is read and dropped until the close handshake completes
        breach = policy.on_frame()
        if breach is not None:
            log.info("closing %s: %s", connection.address, breach.reason)
            closing.append(spawn(close_with_error(websocket, breach.code, breach.reason)))
            return
        router.route(connection, message)

    if isinstance(websocket, RouterServerConnection):
        websocket.on_binary = on_binary  # binary messages skip the loop below (see process_event)
    try:
        async for message in websocket:
            if closing:
                continue
            if isinstance(message, bytes):
                on_binary(message)
                continue
            breach = policy.on_frame()
            if breach is not None:
                log.info("closing %s: %s", connection.address, breach.reason)
                await _close_draining(websocket, breach.code, breach.reason)
                break
            await _control(connection, message, router)
    except ConnectionClosed:
        pass
    finally:
        if isinstance(websocket, RouterServerConnection):
            websocket.on_binary = None
        if watchdog is not None:
            watchdog.cancel()
        for close in closing:
            await close
        await router.disconnect(connection)


async def _watch_idle(websocket: ServerConnection, policy: limits.InboundPolicy) -> None:
    """Close the socket once no data frame arrived for ``idle_timeout`` (one sleep per period)."""
    while (breach := policy.idle_breach()) is None:
        await asyncio.sleep(policy.idle_remaining())
    log.info("closing an idle connection: %s", breach.reason)
    await close_with_error(websocket, breach.code, breach.reason)


async def _close_draining(websocket: ServerConnection, code: int, reason: str) -> None:
    """Close a flooding client: its close frame is queued behind its flood, so keep reading
    (and discarding) until the close handshake completes."""
    closing = spawn(close_with_error(websocket, code, reason))
    try:
        async for _ in websocket:
            pass
    except ConnectionClosed:
        pass
    await closing


async def close_with_error(websocket: ServerConnection, code: int, reason: str, *, error_frame: bool = True) -> None:
    """End a connection the router refuses: the text frame ``{"type":"error"}``, then the close.

    The error frame is what hypha-rpc clients report (``ConnectionAbortedError`` during the
    handshake). A client that does not read cannot stall us: the send gives up after a while.
    """
    try:
        if error_frame:
            await asyncio.wait_for(websocket.send(handshake.error_frame(reason)), ERROR_SEND_TIMEOUT)
        await websocket.close(code, limits.close_reason(reason))
    except (TimeoutError, ConnectionClosed):
        pass


async def _handshake(websocket: ServerConnection, router: ConnectionHost) -> ClientConnection | None:
    try:
        first = await asyncio.wait_for(websocket.recv(), router.config.handshake_timeout)
        request = handshake.parse_auth(first)
        identity, is_reconnect = handshake.authenticate(request, router.issuer)
        wire_v4 = request.wire_protocol >= 4 and router.config.enable_v4
        connection = ClientConnection(
            websocket,
            identity,
            router.batch_policy,
            wire_v4=wire_v4,
            max_queue_bytes=router.config.max_queue_bytes,
            on_evicted=router.on_evicted,
        )
        if not router.holds(connection.address):  # a socket replacing its own is not a new one
            limits.check_capacity(
                router.connection_count(), router.config.max_connections_per_worker, reconnecting=is_reconnect
            )
        await router.admit(connection, is_reconnect)
    except (TimeoutError, HandshakeError) as exc:
        reason = "no auth frame in time" if isinstance(exc, TimeoutError) else str(exc)
        log.info("handshake refused: %s", reason)
        # Limits carry their own close code (1013 when the worker is full); the rest is 1008.
        await close_with_error(
            websocket,
            getattr(exc, "close_code", CloseCode.POLICY_VIOLATION),
            reason,
            error_frame=getattr(exc, "error_frame", True),
        )
        return None
    except ConnectionClosed:
        return None
    token = router.issuer.issue(
        identity,
        kind=handshake.RECONNECTION,
        lifetime=router.config.reconnection_token_lifetime,
        client_id=identity.client_id,
    )
    info = handshake.connection_info(
        identity,
        manager_id=router.config.manager_id,
        public_base_url=router.config.base_url,
        server_version=router.server_version,
        reconnection_token=token,
        token_lifetime=router.config.reconnection_token_lifetime,
        worker_id=router.worker_id,
        wire_protocol=4 if connection.wire_v4 else 3,
    )
    try:
        await connection.send_text(info)
    except ConnectionClosed:
        await router.disconnect(connection)
        return None
    return connection


async def _control(connection: ClientConnection, text: str, router: ConnectionHost) -> None:
    """Text frames after the handshake are control messages: ping and token refresh."""
    if len(text) > MAX_CONTROL_TEXT:
        return
    try:
        kind = json.loads(text).get("type")
    except (ValueError, AttributeError):
        return
    if kind == "ping":
        await connection.send_text({"type": "pong"})
    elif kind == "refresh_token":
        token = router.issuer.issue(
            connection.identity,
            kind=handshake.RECONNECTION,
            lifetime=router.config.reconnection_token_lifetime,
            client_id=connection.identity.client_id,
        )
        await connection.send_text({"type": "reconnection_token", "reconnection_token": token})
