"""A Python API v4 client: hypha-rpc's RPC layer over a batching WebSocket.

``connect_to_server`` has the user-facing API of ``hypha_rpc.connect_to_server``
(``register_service``, ``get_service``, calls, generators, ``disconnect``). Underneath, the
WebSocket announces ``wire_protocol: 4`` in its auth frame; once the router confirms it in
``connection_info``, outgoing messages go through the same per-target batcher the router
uses (a lone call is written at once; messages produced while a write is in flight leave
together in one batch frame) and incoming batch frames are split back into messages.

Why build on hypha-rpc rather than natively: the RPC layer (encoding, promises,
heartbeats, generators, ``message_cache`` chunking, reconnection) is the compatibility
contract with v3 peers; re-implementing it would fork that contract. Large messages keep
hypha-rpc's own chunking, so a v4 client and a v3 client exchange 2 MB payloads unchanged.

hypha-rpc builds its connection object inside ``connect_to_server``; the class it uses is
swapped, once, for a subclass that builds a v4 connection only inside this module's
``connect_to_server`` (a context variable says so) and a plain v3 one everywhere else.
"""

from __future__ import annotations

import contextvars
import json
from collections import deque
from typing import Any

import hypha_rpc
from hypha_rpc import websocket_client as _hypha_ws

from actors.batching import BatchPolicy
from actors.delivery import DeliveryQueue
from gateway import frames

WIRE_PROTOCOL = 4
_v4_policy: contextvars.ContextVar[BatchPolicy | None] = contextvars.ContextVar("rhizomorph_v4", default=None)


class BatchingWebSocket:
    """Wraps a connected ``websockets`` client: batches sends, splits batch frames on receive."""

    def __init__(self, websocket: Any, policy: BatchPolicy) -> None:
        self._websocket = websocket
        self._policy = policy
        self._inbox: deque[bytes] = deque()
        self._outbox: DeliveryQueue | None = None  # set once the router confirms v4
        self.wire_protocol = 3

    def __getattr__(self, name: str) -> Any:  # state, close_code, close, ping, ...
        return getattr(self._websocket, name)

    async def send(self, data: str | bytes) -> None:
        if isinstance(data, str):
            await self._websocket.send(self._announce(data))
        elif self._outbox is None:
            await self._websocket.send(data)
        elif not self._outbox.put(data):
            raise ConnectionError("the connection is closed")

    def _announce(self, text: str) -> str:
        """Add ``wire_protocol: 4`` to the auth frame (the only text frame with a client_id)."""
        try:
            message = json.loads(text)
        except ValueError:
            return text
        if isinstance(message, dict) and "client_id" in message and "type" not in message:
            message["wire_protocol"] = WIRE_PROTOCOL
            return json.dumps(message)
        return text

    async def recv(self) -> str | bytes:
        if self._inbox:
            return self._inbox.popleft()
        data = await self._websocket.recv()
        if isinstance(data, str):
            self._on_text(data)
            return data
        if frames.is_v4(data):
            messages = frames.decode_batch(data)
            self._inbox.extend(messages[1:])
            return messages[0]
        return data

    def _on_text(self, text: str) -> None:
        if '"connection_info"' not in text:
            return
        info = json.loads(text)
        if info.get("type") == "connection_info" and info.get("wire_protocol") == WIRE_PROTOCOL:
            self.wire_protocol = WIRE_PROTOCOL
            self._outbox = DeliveryQueue("router", self._websocket.send, self._policy, wire_v4=True)

    def batch_metrics(self) -> dict[str, Any] | None:
        return self._outbox.metrics() if self._outbox else None


class _V4Connection(_hypha_ws.WebsocketRPCConnection):
    """hypha-rpc's WebSocket connection, over a ``BatchingWebSocket``."""

    def __init__(self, *args: Any, policy: BatchPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._policy = policy

    async def _attempt_connection(self, server_url: str, attempt_fallback: bool = True) -> Any:
        websocket = await super()._attempt_connection(server_url, attempt_fallback)
        return BatchingWebSocket(websocket, self._policy)


_PlainConnection = _hypha_ws.WebsocketRPCConnection


class _SelectingConnection(_PlainConnection):
    """Built by hypha-rpc's ``connect_to_server``: a v4 connection inside ours, else plain v3."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        policy = _v4_policy.get()
        if policy is None:
            return _PlainConnection(*args, **kwargs)
        connection = object.__new__(_V4Connection)
        connection.__init__(*args, policy=policy, **kwargs)
        return connection


if not issubclass(_hypha_ws.WebsocketRPCConnection, _SelectingConnection):
    _hypha_ws.WebsocketRPCConnection = _SelectingConnection


async def connect_to_server(config: dict[str, Any] | None = None, *, batching: BatchPolicy | None = None,
                            **kwargs: Any) -> Any:
    """Connect as an API v4 client. Same options and result as ``hypha_rpc.connect_to_server``.

    ``batching`` sets the client's own send-side batching (default: the balanced preset).
    """
    token = _v4_policy.set(batching or BatchPolicy())
    try:
        return await hypha_rpc.connect_to_server(config, **kwargs)
    finally:
        _v4_policy.reset(token)


def wire_protocol(server: Any) -> int:
    """The wire protocol a connected client ended up with: 4 when the router accepted v4."""
    return int(server.config.get("wire_protocol", 3)) if hasattr(server.config, "get") else 3
