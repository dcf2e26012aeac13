"""hypha-rpc's HTTP transport at ``/rpc`` (``connect_to_server({..., "transport": "http"})``).

- ``GET /rpc?client_id=&workspace=&reconnection_token=`` (``Authorization: Bearer <token>``
  optional) is the client's connection: once admitted like a WebSocket client, the answer is a
  stream of messages, each a 4-byte big-endian length and one msgpack message. The first is
  ``connection_info``; then whatever the router delivers to the client, and ``{"type":
  "ping"}`` every ``STREAM_PING_INTERVAL`` seconds so the client's read timeout never fires.
- ``POST /rpc?client_id=&workspace=`` carries one message from the client (the same bytes a
  WebSocket client sends in a binary frame) or a control message (``ping``, ``refresh_token``,
  answered on the stream). It is answered 200 once the router has taken the message.

The stream is the client's socket: a ``StreamSocket`` gives its ``ClientConnection`` what it
uses of a WebSocket, so the router stamps, routes, bounds and evicts an HTTP client exactly as
a WebSocket one. A POST must prove it comes from the stream's owner: the cookie the stream set
(a signed token naming the client), or a bearer token of the same user. A POST that reaches
another gateway worker than the stream's is handed to that worker (``GatewayWorker.http_post``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import msgpack

from rhizomorph.background import spawn
from rhizomorph.gateway.connection import ClientConnection
from rhizomorph.gateway.http_server import HttpRequest, Reply
from rhizomorph.protocol import handshake, limits
from rhizomorph.protocol.close_codes import CloseCode
from rhizomorph.protocol.handshake import HandshakeError
from rhizomorph.protocol.http_api import (
    STREAM_CONTENT_TYPE,
    bearer_token,
    control_type,
    cors_headers,
    frame,
    parse_cookies,
    query_params,
    stream_cookie_name,
)

log = logging.getLogger("rhizomorph.http")

#: Token kind of the stream cookie (verified like access tokens, never accepted as one).
STREAM = "http-stream"
#: Seconds between pings on an idle stream: hypha-rpc's read timeout is its method_timeout.
STREAM_PING_INTERVAL = 10.0
#: TCP settings of a stream's socket: a peer that vanished is dropped within about a minute.
TCP_USER_TIMEOUT_MS = 60_000
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 10, 3
#: An HTTP stream that ended without a close code of the router's.
STREAM_LOST = 1006

PING = msgpack.packb({"type": "ping"})
PONG = msgpack.packb({"type": "pong"})
#: ``accept``'s answer when the client's stream is not on this worker.
ELSEWHERE = (0, "")
OK = (200, "")


class StreamSocket:
    """What a ``ClientConnection`` uses of a WebSocket, over the GET stream of one client."""

    def __init__(self, reply: Reply, transport: asyncio.Transport | None, policy: limits.InboundPolicy) -> None:
        self._reply = reply
        #: ``ClientConnection.evict`` aborts it when a close does not get through.
        self.transport = transport
        self.policy = policy
        self.close_code: int | None = None
        self.close_reason = ""
        loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[None] = loop.create_future()
        #: Done once ``connection_info`` is written: nothing may precede it on the stream.
        self.opened: asyncio.Future[None] = loop.create_future()

    def _check(self) -> None:
        if self.close_code is not None or self._reply.lost.done():
            raise ConnectionResetError("the stream is closed")

    async def send(self, data: bytes | str) -> None:
        if not self.opened.done():
            await self.opened
        self._check()
        # Text frames are the router's JSON notices (error frames): msgpack on this stream.
        message = data if isinstance(data, bytes) else msgpack.packb(json.loads(data))
        await self._reply.write(frame(message))

    async def send_frames(self, frames: list[bytes]) -> None:
        if not self.opened.done():
            await self.opened
        self._check()
        await self._reply.write(b"".join(frame(f) for f in frames))

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            self.ended.set_result(None)

    async def ping(self) -> asyncio.Future[None]:
        """A ping frame; the returned future completes once the socket has taken it."""
        self._check()
        self._reply.write_nowait(frame(PING))
        return asyncio.ensure_future(self._reply.drained())


def _refusal_status(exc: HandshakeError) -> int:
    message = str(exc)
    if getattr(exc, "close_code", None) == CloseCode.TRY_AGAIN_LATER:
        return 503
    if message.startswith("Permission denied") or message.endswith("does not exist or is not accessible"):
        return 403
    if message == "Client already exists and is active":
        return 409
    if message.startswith(("invalid client_id", "invalid workspace", "'")):
        return 400
    return 401


def _reconnection_token(router: Any, identity: handshake.Identity) -> str:
    lifetime = router.config.reconnection_token_lifetime
    return str(
        router.issuer.issue(identity, kind=handshake.RECONNECTION, lifetime=lifetime, client_id=identity.client_id)
    )


def _keep_alive(transport: asyncio.Transport | None) -> None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, TCP_USER_TIMEOUT_MS)
    except OSError as exc:
        log.debug("stream socket options: %s", exc)


class HttpTransport:
    """The ``/rpc`` endpoints of one gateway worker."""

    def __init__(self, router: Any) -> None:
        self._router = router

    # -- GET /rpc --------------------------------------------------------------------------------
    async def stream(self, request: HttpRequest, reply: Reply) -> None:
        router, config = self._router, self._router.config
        params = query_params(request.query)
        auth = {
            "client_id": params.get("client_id") or None,
            "workspace": params.get("workspace") or None,
            "token": bearer_token(request.header("authorization")),
            "reconnection_token": params.get("reconnection_token") or None,
        }
        cors = cors_headers(request.header("origin") or None)
        try:
            identity, is_reconnect = handshake.authenticate(handshake.parse_auth(json.dumps(auth)), router.issuer)
        except HandshakeError as exc:
            log.info("HTTP stream refused: %s", exc)
            await reply.send_error(_refusal_status(exc), str(exc), cors)
            return
        policy = limits.InboundPolicy(rate=config.message_rate, burst=config.message_burst, idle_timeout=0)
        sock = StreamSocket(reply, request.transport, policy)
        conn = ClientConnection(
            sock,  # type: ignore[arg-type]  # a socket in what ClientConnection uses of one
            identity,
            router.batch_policy,
            max_queue_bytes=config.max_queue_bytes,
            on_evicted=router.on_evicted,
        )
        try:
            if not router.holds(conn.address):
                limits.check_capacity(
                    router.connection_count(), config.max_connections_per_worker, reconnecting=is_reconnect
                )
            await router.admit(conn, is_reconnect)
        except HandshakeError as exc:
            log.info("HTTP stream refused: %s", exc)
            await reply.send_error(_refusal_status(exc), str(exc), cors)
            return
        try:
            await self._serve_stream(conn, sock, reply, cors)
        finally:
            if sock.close_code is None:
                sock.close_code = STREAM_LOST
            if not sock.opened.done():
                sock.opened.set_exception(ConnectionResetError("the stream is closed"))
                sock.opened.exception()  # retrieved: queued sends fail with it
            spawn(router.disconnect(conn))  # not cut short if this task is being cancelled

    async def _serve_stream(self, conn: ClientConnection, sock: StreamSocket, reply: Reply, cors: list) -> None:
        router, config, identity = self._router, self._router.config, conn.identity
        lifetime = config.reconnection_token_lifetime
        cookie = router.issuer.issue(identity, kind=STREAM, lifetime=lifetime, client_id=identity.client_id)
        headers = [
            ("Content-Type", STREAM_CONTENT_TYPE),
            ("Cache-Control", "no-cache"),
            ("X-Accel-Buffering", "no"),  # proxies must pass messages on as they come
            (
                "Set-Cookie",
                f"{stream_cookie_name(conn.address)}={cookie}; Path=/; Max-Age={int(lifetime)}; "
                "HttpOnly; SameSite=Strict",
            ),
            *cors,
        ]
        token = _reconnection_token(router, identity)
        info = handshake.connection_info(
            identity,
            manager_id=config.manager_id,
            public_base_url=config.base_url,
            server_version=router.server_version,
            reconnection_token=token,
            token_lifetime=lifetime,
            worker_id=router.worker_id,
        )
        _keep_alive(sock.transport)
        await reply.start(200, headers)
        await reply.write(frame(msgpack.packb(info)))
        sock.opened.set_result(None)
        while not sock.ended.done() and not reply.lost.done():
            done, _ = await asyncio.wait({sock.ended, reply.lost}, timeout=STREAM_PING_INTERVAL)
            if not done:
                await reply.write(frame(PING))
        if sock.close_reason and sock.close_code != CloseCode.SUPERSEDED and not reply.lost.done():
            # As a WebSocket client gets an error frame before a refusal's close.
            try:
                reply.write_nowait(frame(msgpack.packb({"type": "error", "message": sock.close_reason})))
            except ConnectionError:
                pass

    # -- POST /rpc -------------------------------------------------------------------------------
    async def post(self, request: HttpRequest, reply: Reply) -> None:
        params = query_params(request.query)
        client_id, workspace = params.get("client_id"), params.get("workspace")
        # Which worker took the POST (the stream's may be another): for operators and tests.
        cors = [("X-Rhizomorph-Worker", self._router.worker_id), *cors_headers(request.header("origin") or None)]
        if not client_id or not workspace:
            await reply.send_error(400, "client_id and workspace are required", cors)
            return
        if not request.body:
            await reply.send_error(400, "Empty request body", cors)
            return
        address = f"{workspace}/{client_id}"
        try:
            user_id = self._poster(request, address, client_id, workspace)
        except HandshakeError as exc:
            await reply.send_error(401 if "expired" in str(exc) else 403, str(exc), cors)
            return
        status, detail = self.accept(address, user_id, request.body)
        if (status, detail) == ELSEWHERE:
            status, detail = await self._forward(address, user_id, request.body)
        if status == 200:
            await reply.send(200, cors)
        else:
            await reply.send_error(status, detail, cors)

    def _poster(self, request: HttpRequest, address: str, client_id: str, workspace: str) -> str:
        """The user a POST proves it is: from the stream's cookie, or a bearer token that grants
        the workspace. Raises ``HandshakeError`` if it proves neither."""
        issuer = self._router.issuer
        cookie = parse_cookies(request.header("cookie")).get(stream_cookie_name(address))
        if cookie:
            try:
                claims = issuer.verify(cookie, kind=STREAM)
            except HandshakeError:
                claims = {}
            if claims.get("cid") == client_id and claims.get("cws") == workspace:
                return str(claims["sub"])
        token = bearer_token(request.header("authorization"))
        if token:
            claims = issuer.verify(token, kind=handshake.ACCESS)
            granted = claims.get("ws") or {}
            if isinstance(granted, dict) and (workspace in granted or "*" in granted):
                return str(claims["sub"])
        raise HandshakeError(f"Permission denied: the request proves no right to the stream of {address}")

    def accept(self, address: str, user_id: str, body: bytes) -> tuple[int, str]:
        """A message POSTed by ``user_id`` as client ``address``: route it if the client's stream
        is on this worker. Returns ``(status, detail)``; ``ELSEWHERE`` if the stream is not here."""
        router = self._router
        conn = router.clients.get(address)
        if conn is None or not isinstance(conn.websocket, StreamSocket):
            return ELSEWHERE
        sock = conn.websocket
        if conn.identity.user_id != user_id:
            return 403, f"Permission denied: the stream of {address} belongs to another user"
        if sock.close_code is not None:
            return 400, f"the stream of {address} is closing"
        breach = sock.policy.on_frame()
        if breach is not None:
            log.info("closing the HTTP stream of %s: %s", address, breach.reason)
            spawn(sock.close(breach.code, breach.reason))
            return 429, breach.reason
        kind = control_type(body)
        if kind == "ping":
            spawn(_quietly(sock.send(PONG)))
        elif kind == "refresh_token":
            token = _reconnection_token(router, conn.identity)
            message = msgpack.packb({"type": "reconnection_token", "reconnection_token": token})
            spawn(_quietly(sock.send(message)))
        else:
            router.route(conn, body)
        return OK

    async def _forward(self, address: str, user_id: str, body: bytes) -> tuple[int, str]:
        """A POST for a client whose stream another worker holds: that worker routes it."""
        router = self._router
        owner = router.replica.owner(address)
        if owner is None or owner == router.worker_id or owner not in router.peers:
            try:
                owner = await router.registry.locate(address)
            except Exception:
                owner = None
        if owner is None or owner == router.worker_id or owner not in router.peers:
            # hypha-rpc retries a 400 (its stream may not be open yet).
            return 400, f"no open stream for client {address}"
        outcome = await router.peers.http_post(owner, address, user_id, body)
        if outcome is None or tuple(outcome) == ELSEWHERE:
            return 400, f"no open stream for client {address}"
        return int(outcome[0]), str(outcome[1])


async def _quietly(send: Any) -> None:
    try:
        await send
    except Exception:
        pass
