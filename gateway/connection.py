"""One client's WebSocket: handshake, then read frames and hand them to the router.

This is the socket end of the path socket -> gateway -> per-target queue -> socket:
frames read here go to ``Router.route`` (``actors/worker.py``), which stamps them and
queues them on the target's ``DeliveryQueue`` (``actors/delivery.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any

import shortuuid
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from actors.delivery import DeliveryQueue
from gateway import handshake
from gateway.handshake import HandshakeError, Identity

if TYPE_CHECKING:
    from actors.worker import Router

log = logging.getLogger("rhizomorph.connection")

# Close codes (documented in docs/protocol.md).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008  # handshake refused: bad auth frame, bad token, permission, duplicate client
CLOSE_SUPERSEDED = 4000  # the same client reconnected on a newer socket
MAX_CONTROL_TEXT = 1000  # Hypha ignores longer client text frames too


class ClientConnection:
    """A connected client: who it is, its socket, its delivery queue and its subscriptions."""

    def __init__(self, websocket: ServerConnection, identity: Identity) -> None:
        self.websocket = websocket
        self.identity = identity
        self.address = identity.address
        self.workspace = identity.workspace
        self.user = identity.user_info()
        self.generation = shortuuid.uuid()
        self.subscriptions: set[str] = set()
        self.queue = DeliveryQueue(self.address, websocket.send)

    async def send_text(self, payload: dict[str, Any]) -> None:
        await self.websocket.send(json.dumps(payload))


async def serve(websocket: ServerConnection, router: "Router") -> None:
    """The whole life of one client connection."""
    connection = await _handshake(websocket, router)
    if connection is None:
        return
    try:
        async for message in websocket:
            if isinstance(message, bytes):
                router.route(connection, message)
            else:
                await _control(connection, message, router)
    except ConnectionClosed:
        pass
    finally:
        await router.disconnect(connection)


async def _handshake(websocket: ServerConnection, router: "Router") -> ClientConnection | None:
    try:
        first = await asyncio.wait_for(websocket.recv(), router.config.handshake_timeout)
        request = handshake.parse_auth(first)
        identity, is_reconnect = handshake.authenticate(request, router.issuer)
        connection = ClientConnection(websocket, identity)
        await router.admit(connection, is_reconnect)
    except (asyncio.TimeoutError, HandshakeError) as exc:
        reason = "no auth frame in time" if isinstance(exc, asyncio.TimeoutError) else str(exc)
        log.info("handshake refused: %s", reason)
        try:
            await websocket.send(handshake.error_frame(reason))
            await websocket.close(CLOSE_POLICY, reason[:120])
        except ConnectionClosed:
            pass
        return None
    except ConnectionClosed:
        return None
    token = router.issuer.issue(identity, kind=handshake.RECONNECTION, lifetime=router.config.reconnection_token_lifetime,
                                client_id=identity.client_id)
    info = handshake.connection_info(
        identity, manager_id=router.config.manager_id, public_base_url=router.config.base_url,
        server_version=router.server_version, reconnection_token=token,
        token_lifetime=router.config.reconnection_token_lifetime, worker_id=router.worker_id)
    try:
        await connection.send_text(info)
    except ConnectionClosed:
        await router.disconnect(connection)
        return None
    return connection


async def _control(connection: ClientConnection, text: str, router: "Router") -> None:
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
        token = router.issuer.issue(connection.identity, kind=handshake.RECONNECTION,
                                    lifetime=router.config.reconnection_token_lifetime,
                                    client_id=connection.identity.client_id)
        await connection.send_text({"type": "reconnection_token", "reconnection_token": token})
