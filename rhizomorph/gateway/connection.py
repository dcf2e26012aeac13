"""One client's WebSocket: handshake, then read frames and hand them to the router.

This is the socket end of the path socket -> router -> per-target queue -> socket: frames read
here go to ``Router.route`` (``rhizomorph/gateway/router.py``), which stamps them and queues
them on the target's ``DeliveryQueue`` (``rhizomorph/gateway/delivery.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import shortuuid
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode, apply_mask
from websockets.protocol import OPEN, State
from websockets.streams import StreamReader

from rhizomorph.background import spawn
from rhizomorph.config import Config
from rhizomorph.gateway.delivery import WRITES, DeliveryQueue
from rhizomorph.gateway.direct_write import DirectWriter
from rhizomorph.protocol import handshake, limits, ws_frames
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
_AT_EOF = StreamReader.at_eof.__code__


def at_frame_boundary(protocol: Any) -> bool:
    """Whether websockets' parser of an open connection without extensions waits for the first
    byte of a frame, with nothing buffered and no message half read: frames may be read past
    it, and whole frames handed to it, without it missing a byte."""
    if protocol.state is not State.OPEN or protocol.extensions or protocol.reader.buffer:
        return False
    if protocol.current_size is not None:
        return False
    generator = protocol.parser
    while (inner := getattr(generator, "gi_yieldfrom", None)) is not None:
        if getattr(inner, "gi_code", None) is _AT_EOF:
            return True
        generator = inner
    return False


class RouterServerConnection(ServerConnection):
    """websockets' server connection with a shorter path each way for binary messages.

    In: ``data_received`` reads the client's binary frames itself (``_read``, headers by
    ``rhizomorph/protocol/ws_frames.py``) and hands each complete binary message to
    ``on_binary``; websockets would copy each payload into its buffer and out again, parse it
    in a generator, queue it in its Assembler and wake the reading coroutine once per message.
    Every other frame (text, control, reserved bits), and all data while websockets' parser is
    not at a frame boundary, goes to websockets as before (its ``process_event`` still hands
    binary messages to ``on_binary``).
    Out: ``send_frames`` writes several frames with one socket write. Over loopback a ``send``
    syscall is dear (the kernel delivers the segment in it), and with TCP_NODELAY each frame
    is its own segment: a flush of N frames to a v3 client would cost N of them.
    ``send_frames`` queues the frames in the protocol and ``send_data`` hands them to the
    transport as one write.
    """

    #: Set once the handshake is done: called with every complete binary message, straight from
    #: ``data_received``. Text frames still take websockets' path.
    on_binary: Callable[[bytes], None] | None = None
    _binary_parts: list[bytes] | None = None  # a fragmented binary message, until its last frame
    _binary_size = 0  # bytes in ``_binary_parts``
    _text_fragmented = False  # continuation frames of a text message go to the Assembler
    #: A frame read in part by ``_read``: its pieces so far, their size, and the size it needs.
    _in_parts: list[bytes | memoryview] | None = None
    _in_size = 0
    _in_need = 0
    _in_data_frame = False
    #: ``at_frame_boundary`` was true and websockets' parser has been fed nothing since: it
    #: still is while the connection is open (only what it reads moves its parser).
    _at_boundary = False

    def data_received(self, data: bytes) -> None:
        if self._in_parts is not None:
            self._read(data)
        elif self.on_binary is not None and (
            (self._at_boundary and self.protocol.state is OPEN) or self._check_boundary()
        ):
            self._read(data)
        else:
            self._to_websockets(data)

    def _check_boundary(self) -> bool:
        self._at_boundary = at = at_frame_boundary(self.protocol)
        return at

    def _to_websockets(self, data: bytes) -> None:
        """``data`` for websockets' own parser (it may then no longer be at a frame boundary)."""
        self._at_boundary = False
        super().data_received(data)

    def _read(self, data: bytes) -> None:
        """Binary frames straight to ``on_binary``; from the first other frame on, the rest of
        ``data`` goes to websockets (its parser is at a frame boundary: it reads it as ever)."""
        parts = self._in_parts
        position = 0
        protocol = self.protocol
        grouped = False  # the frames of this read: one write group for v3 targets (delivery.py)
        try:
            if parts is not None:
                parts.append(data)
                self._in_size += len(data)
                if self._in_size < self._in_need:
                    return
                self._in_parts = None
                extra = self._in_size - self._in_need
                if not (extra and self._in_data_frame):
                    data = b"".join(parts)
                else:  # only the kept frame's bytes are joined; the frames after it are read from ``data``
                    position = len(data) - extra
                    parts[-1] = memoryview(data)[:position]
                    frame = b"".join(parts)
                    WRITES.begin()  # another frame follows in this read
                    grouped = True
                    header = ws_frames.parse_header(frame, 0)
                    assert not isinstance(header, int)  # whole: it was kept until it was
                    at = header.payload
                    self._binary_frame(
                        apply_mask(memoryview(frame)[at:], frame[at - 4 : at]),
                        header.opcode == ws_frames.OP_BINARY,
                        header.fin,
                    )
                    if self.on_binary is None or protocol.state is not OPEN:
                        return
            end = len(data)
            while position < end:
                header = ws_frames.parse_header(data, position)
                if isinstance(header, int):
                    self._keep(data, position, header)
                    return
                fin, rsv, opcode, masked, at, length = header  # one unpacking, not an attribute each
                binary = opcode == ws_frames.OP_BINARY
                stop = at + length
                data_frame = binary or (opcode == ws_frames.OP_CONT and not self._text_fragmented)
                if not data_frame or not masked or rsv:
                    # Not ours: websockets reads it whole (it knows nothing of a binary message
                    # begun here), then the rest of the data while it is at a frame boundary.
                    if opcode == ws_frames.OP_TEXT and self._binary_parts is not None:
                        self._fail(CloseCode.PROTOCOL_ERROR, "expected a continuation frame")
                        return
                    if stop > end:
                        if opcode & 0x08 and length <= 125:  # a control frame: kept until whole
                            self._keep(data, position, stop - position)
                        else:
                            self._to_websockets(data[position:] if position else data)
                        return
                    self._to_websockets(data[position:stop])
                    position = stop
                    if not at_frame_boundary(protocol):  # it closes, or a fragmented text message began
                        if position < end:
                            self._to_websockets(data[position:])
                        return
                    continue
                if self._too_big(length):
                    return
                if stop > end:
                    self._keep(data, position, stop - position, data_frame=True)
                    return
                payload = apply_mask(memoryview(data)[at:stop], data[at - 4 : at])
                position = stop
                if position < end and not grouped:  # another frame follows in this read
                    WRITES.begin()
                    grouped = True
                # A whole message in one frame (the common case): ``_binary_frame``'s first branch
                # without its call.
                if binary and fin and self._binary_parts is None and (on_binary := self.on_binary) is not None:
                    try:
                        on_binary(payload)
                    except Exception:  # a router bug must not kill the socket's protocol callbacks
                        log.exception("routing a frame failed")
                else:
                    self._binary_frame(payload, binary, fin)
                if position < end and (self.on_binary is None or protocol.state is not OPEN):
                    return  # the connection ends (a protocol error, or routing closed it): nothing more is read
        finally:
            if grouped:
                WRITES.end()

    def _keep(self, data: bytes, position: int, need: int, data_frame: bool = False) -> None:
        """The frame at ``data[position:]`` is incomplete: wait until ``need`` bytes of it are here
        (``data_frame``: they are the whole of a data frame whose header was checked)."""
        self._in_parts = [memoryview(data)[position:] if position else data]
        self._in_size = len(data) - position
        self._in_need = need
        self._in_data_frame = data_frame

    def _too_big(self, length: int) -> bool:
        """Whether a frame of ``length`` payload bytes passes websockets' limits (``max_size``):
        then the connection fails with 1009, as websockets' own parser would."""
        protocol = self.protocol
        limit = protocol.max_message_size
        if limit is not None and self._binary_size + length > limit:
            reason = f"message over {limit} bytes"
        elif protocol.max_fragment_size is not None and length > protocol.max_fragment_size:
            reason = f"frame over {protocol.max_fragment_size} bytes"
        else:
            return False
        self._fail(CloseCode.MESSAGE_TOO_BIG, reason)
        return True

    def _fail(self, code: int, reason: str) -> None:
        """Close the connection as websockets does on a protocol error (its close frame, then EOF)."""
        self._binary_parts, self._binary_size, self._in_parts = None, 0, None
        self.protocol.fail(code, reason)
        self.send_data()

    def _binary_frame(self, data: bytes, binary: bool, fin: bool) -> None:
        """One frame of a binary message: the message goes to ``on_binary`` when it is whole."""
        if binary and self._binary_parts is not None:
            self._fail(CloseCode.PROTOCOL_ERROR, "expected a continuation frame")
            return
        if binary and fin:
            message = data
        else:  # fragments: their total is bounded by max_size (``_too_big``, or websockets' parser)
            parts = self._binary_parts
            if parts is None:
                if not binary:
                    self._fail(CloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
                    return
                parts = self._binary_parts = []
            parts.append(data)
            self._binary_size += len(data)
            if len(parts) > MAX_FRAGMENTS:  # empty fragments would grow the list forever
                self._fail(CloseCode.MESSAGE_TOO_BIG, f"more than {MAX_FRAGMENTS} fragments")
                return
            if not fin:
                return
            message, self._binary_parts, self._binary_size = b"".join(parts), None, 0
        on_binary = self.on_binary
        if on_binary is None:
            return
        try:
            on_binary(message)
        except Exception:  # a router bug must not kill the socket's protocol callbacks
            log.exception("routing a frame failed")

    def process_event(self, event: Any) -> None:
        if self.on_binary is None or not isinstance(event, Frame):
            return super().process_event(event)
        opcode = event.opcode
        if opcode is Opcode.BINARY or (opcode is Opcode.CONT and not self._text_fragmented):
            # websockets' parser checked the order of the fragments: this never fails them
            data = event.data if type(event.data) is bytes else bytes(event.data)
            self._binary_frame(data, opcode is Opcode.BINARY, event.fin)
            return
        if opcode is Opcode.TEXT or opcode is Opcode.CONT:
            self._text_fragmented = not event.fin
        super().process_event(event)

    async def send_frames(self, frames: list[bytes]) -> None:
        """Send each of ``frames`` as its own binary message (one socket write for them all)."""
        async with self.send_context():
            self.queue_binary(frames)

    async def send(self, message: Any, text: bool | None = None) -> None:
        if type(message) is bytes and text is None and self.send_in_progress is None:
            async with self.send_context():
                self.queue_binary((message,))
        else:
            await super().send(message, text=text)

    def queue_binary(self, messages: Iterable[bytes]) -> None:
        """Queue each of ``messages`` as one binary frame, for the next ``send_data``: a header
        and the message itself, no frame object, no copy (a server's frames are not masked)."""
        protocol = self.protocol
        if protocol.extensions or protocol.expect_continuation_frame or protocol.state is not State.OPEN:
            for message in messages:
                protocol.send_binary(message)  # websockets' checks, errors and extensions, as ever
            return
        writes = protocol.writes
        header = ws_frames.server_header
        for message in messages:
            writes.append(header(len(message)))
            writes.append(message)

    def write_binary(self, messages: list[bytes]) -> None:
        """Each of ``messages`` as one binary frame, to the transport now: what ``queue_binary``
        and ``send_data`` write (the same bytes in the same writes). The common flush, one message
        that fits one write with nothing else waiting in the protocol, goes straight to the
        transport without passing through ``protocol.writes``."""
        if len(messages) == 1:
            message = messages[0]
            size = len(message)
            protocol = self.protocol
            if (
                0 < size <= COALESCE_LIMIT - ws_frames.MAX_SERVER_HEADER
                and protocol.state is OPEN
                and not (protocol.writes or protocol.extensions or protocol.expect_continuation_frame)
            ):
                self.transport.write(ws_frames.server_header(size) + message)
                return
        self.queue_binary(messages)
        self.send_data()

    def send_data(self) -> None:
        protocol = self.protocol
        writes = protocol.writes
        if len(writes) > 1 and all(writes):  # an empty write is the end of the stream
            if sum(map(len, writes)) <= COALESCE_LIMIT:
                protocol.writes = [b"".join(writes)]
            else:  # headers and messages as they are, in one write(v) call
                protocol.writes = []
                self.transport.writelines(writes)
                return
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
