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

import asyncio
import contextvars
import functools
import itertools
import json
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import msgpack

try:
    import hypha_rpc
    from hypha_rpc import websocket_client as _hypha_ws
except ModuleNotFoundError as exc:
    if exc.name != "hypha_rpc":
        raise  # hypha-rpc is there but something it needs is not: its own error says what
    raise ModuleNotFoundError(
        "rhizomorph.client needs hypha-rpc, which is not installed: pip install 'rhizomorph[client]'",
        name=exc.name,
    ) from exc

from rhizomorph import plain_values
from rhizomorph.gateway.delivery import DeliveryQueue
from rhizomorph.gateway.direct_write import direct_writer
from rhizomorph.incoming_calls import handle_method
from rhizomorph.protocol import envelope, frames
from rhizomorph.protocol.batching import BatchPolicy
from rhizomorph.remote_calls import ExpandedPromise, LazyPromise, PromiseState, V4RemoteFunction

log = logging.getLogger("rhizomorph.client")

WIRE_PROTOCOL = 4
CHUNK_SIZE = 256 * 1024  # bytes per chunk frame of a streamed message
GENERATOR_WINDOW = 32  # items a v4 consumer asks for per round trip (and keeps one window ahead)
_DEFAULT_CONTEXT = {"connection_type": "websocket"}
_v4_policy: contextvars.ContextVar[BatchPolicy | None] = contextvars.ContextVar("rhizomorph_v4", default=None)


class BatchingWebSocket:
    """Wraps a connected ``websockets`` client: batches sends, splits batch frames on receive."""

    def __init__(self, websocket: Any, policy: BatchPolicy) -> None:
        self._websocket = websocket
        self._policy = policy
        self._inbox: deque[bytes | dict] = deque()
        self._outbox: DeliveryQueue | None = None  # set once the router confirms v4
        self._streams = frames.StreamAssembler()
        self._stream_ids = itertools.count(1)
        self._stream_turn = asyncio.Lock()  # one stream's chunks at a time (FIFO: see send_stream)
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

    async def send_stream(self, message: bytes, chunk_size: int = CHUNK_SIZE) -> None:
        """Send one large message as a chunk stream. Each chunk is queued only once the
        outbox would write it at once (``DeliveryQueue.writable``), so small messages sent
        meanwhile go out between chunks, and none of them holds a chunk back for a turn.

        Streams take turns whole, in the order they were sent: interleaved chunk by chunk, the
        streams of a burst of calls (whose starts batching lines up) would all complete at the
        end, and the receiver could start on none of them before."""
        assert self._outbox is not None, "streams need a v4 connection"
        async with self._stream_turn:
            for chunk in frames.split_stream(message, next(self._stream_ids), chunk_size):
                await self._outbox.wait_writable()
                if not self._outbox.put(chunk):
                    raise ConnectionError("the connection is closed")

    async def recv(self) -> str | bytes | dict:
        while not self._inbox:
            data = await self._websocket.recv()
            if isinstance(data, str):
                self._on_text(data)
                return data
            if not frames.is_v4(data):
                return data
            try:
                for message in frames.decode_batch(data) if not frames.is_stream(data) else [data]:
                    if frames.is_stream(message):
                        whole = self._streams.add(message)
                        if whole is not None:
                            self._inbox.append(_decode_large(whole))
                    else:
                        self._inbox.append(message)
            except frames.FrameError as exc:  # a broken frame or stream is dropped, not the connection
                log.warning("dropped a v4 frame: %s", exc)
        return self._inbox.popleft()

    def _on_text(self, text: str) -> None:
        if '"connection_info"' not in text:
            return
        info = json.loads(text)
        if info.get("type") == "connection_info" and info.get("wire_protocol") == WIRE_PROTOCOL:
            self.wire_protocol = WIRE_PROTOCOL
            self._outbox = DeliveryQueue(
                "router",
                self._websocket.send,
                self._policy,
                wire_v4=True,
                direct=direct_writer(self._websocket),
                gather_turn=True,
            )

    def batch_metrics(self) -> dict[str, Any] | None:
        return self._outbox.metrics() if self._outbox else None


def _decode_large(message: bytes) -> dict[str, Any]:
    """Decode a reassembled message as hypha-rpc decodes a frame (its per-frame buffer limit
    of ~512 KB does not apply: the message arrived in chunks)."""
    # The header through envelope.parse (a small prefix), the payload straight from a view of
    # the message: an Unpacker would first copy all of it into its own buffer.
    parsed = envelope.parse(message)
    main = parsed.header
    main["ctx"] = dict(main, **_DEFAULT_CONTEXT)
    if parsed.payload_offset < len(message):
        try:
            extra = msgpack.unpackb(parsed.payload)
        except msgpack.ExtraData as more:  # hypha-rpc reads two segments and ignores the rest
            extra = more.unpacked
        main.update(extra)
    return main


class _V4RPC(_hypha_ws.RPC):
    """hypha-rpc's RPC with two v4 abilities, both used only between v4 peers:

    - large messages to a v4 peer travel as one chunk stream instead of ``message_cache``
      calls (one round trip per chunk); v3 peers still get ``message_cache``;
    - generators stream in windows: the consumer asks for up to ``GENERATOR_WINDOW`` items per
      call and keeps the next window in flight while it consumes (back-pressure: at most two
      windows are out). v3 consumers ignore the extra key and pull item by item.

    And cost cuts that leave the bytes on the wire as they are: remote methods are
    ``V4RemoteFunction`` objects (``rhizomorph/remote_calls.py``: a call's session id, timer, promise
    callbacks and send at less cost), each call's promise state is a ``PromiseState`` (hypha-rpc
    defines a new class for it on every call), and plain values (primitives in dicts and lists)
    are checked and decoded by ``rhizomorph/plain_values.py`` (hypha-rpc's munchify visits each
    element in Python: most of a call's CPU with a few thousand floats); a call's plain argument
    list is encoded as it is without hypha-rpc's walk through its type checks, the promise
    of a call to this client is decoded as a ``LazyPromise`` (a remote method per callback, made
    when ``_handle_method`` first looks it up), and a plain call to this client is handled by
    ``rhizomorph/incoming_calls.py`` (no heartbeat task for a method that returns at once).
    """

    _all_primitives_list = staticmethod(plain_values.is_plain_list)
    _all_primitives_dict = staticmethod(plain_values.is_plain_dict)
    _all_scalars_list = staticmethod(plain_values.is_scalar_list)

    def _handle_method(self, data: dict[str, Any]) -> None:
        handle_method(self, data, super()._handle_method)

    def _encodes_as_is(self, values: list[Any]) -> bool:
        """Whether ``_encode`` returns this argument list unchanged (it stores nothing in a session)."""
        return plain_values.is_plain_list(values) and not self._codec_for(values)

    def _create_promise_manager(self) -> PromiseState:
        return PromiseState()

    def _generate_remote_method(
        self,
        encoded_method: dict[str, Any],
        remote_parent: Any = None,
        local_parent: Any = None,
        remote_workspace: Any = None,
        local_workspace: Any = None,
    ) -> V4RemoteFunction:
        """``RPC._generate_remote_method``, making a ``V4RemoteFunction``."""
        target_id = encoded_method["_rtarget"]
        if remote_workspace and "/" not in target_id and remote_workspace != target_id:
            encoded_method["_rtarget"] = remote_workspace + "/" + target_id
        method_id = encoded_method["_rmethod"]
        return V4RemoteFunction(
            rpc_instance=self,
            encoded_method=encoded_method,
            remote_parent=remote_parent,
            local_parent=local_parent,
            remote_workspace=remote_workspace,
            local_workspace=local_workspace,
            description=f"method: {method_id}, docs: {encoded_method.get('_rdoc')}",
            with_promise=encoded_method.get("_rpromise", False),
        )

    def __init__(self, connection: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(connection, *args, **kwargs)
        builtin = self._services.get("built-in")
        websocket = getattr(connection, "_websocket", None)  # open: the router has answered
        if builtin is not None and getattr(websocket, "wire_protocol", None) == WIRE_PROTOCOL:
            # Advertised to peers in get_service("<client>:built-in"); api_version stays 3.
            # Only once the router confirmed v4: peers stream large messages to a v4 client.
            builtin["config"]["wire_protocol"] = WIRE_PROTOCOL

    async def _send_chunks(self, package: bytes, target_id: str, session_id: Any) -> None:
        websocket = getattr(self._connection, "_websocket", None)
        if isinstance(websocket, BatchingWebSocket) and websocket.wire_protocol == WIRE_PROTOCOL:
            remote = await self.get_remote_service(f"{target_id}:built-in")
            if getattr(remote.config, "wire_protocol", None) == WIRE_PROTOCOL:
                await websocket.send_stream(package)
                return
        await super()._send_chunks(package, target_id, session_id)

    def _expand_promise(self, data: dict[str, Any], caller_encryption_pub: Any = None) -> ExpandedPromise:
        return ExpandedPromise(super()._expand_promise(data, caller_encryption_pub))

    def _codec_for(self, a_object: Any) -> bool:
        """Whether a registered codec encodes ``a_object`` (hypha-rpc asks before its fast paths)."""
        for codec in self._codecs.values():  # DefaultObjectProxy entries: read as the dicts they are
            kind: Any = dict.get(codec, "type")
            if dict.get(codec, "encoder") and isinstance(a_object, kind):
                return True
        return False

    def _encode(self, a_object: Any, session_id: Any = None, local_workspace: Any = None) -> Any:
        if type(a_object) is list and self._encodes_as_is(a_object):
            return a_object  # where hypha-rpc's checks end for a plain list
        encoded = super()._encode(a_object, session_id=session_id, local_workspace=local_workspace)
        if isinstance(encoded, dict) and encoded.get("_rtype") == "generator":
            session, _, object_id = encoded["_rmethod"].rpartition(".")
            store = self._get_session_store(session, create=False)
            next_item = store.get(object_id) if isinstance(store, dict) else None
            if next_item is not None:
                store[object_id + ":window"] = _window_of(next_item)
                encoded["_rwindow_method"] = f"{session}.{object_id}:window"
        return encoded

    def _decode(
        self,
        a_object: Any,
        remote_parent: Any = None,
        local_parent: Any = None,
        remote_workspace: Any = None,
        local_workspace: Any = None,
    ) -> Any:
        if type(a_object) is dict and "_rtype" not in a_object:
            proxy = plain_values.proxy_plain(a_object)  # what hypha-rpc's fast path returns, or None
            if proxy is not None:
                return proxy
        elif type(a_object) is ExpandedPromise:
            return LazyPromise(
                a_object,
                functools.partial(
                    super()._decode,
                    remote_parent=remote_parent,
                    local_parent=local_parent,
                    remote_workspace=remote_workspace,
                    local_workspace=local_workspace,
                ),
            )
        elif isinstance(a_object, dict) and a_object.get("_rtype") == "generator" and "_rwindow_method" in a_object:

            def remote(method: str) -> Any:
                encoded = {
                    "_rtype": "method",
                    "_rserver": a_object.get("_rserver"),
                    "_rtarget": a_object["_rtarget"],
                    "_rmethod": method,
                    "_rpromise": "*",
                }
                return self._generate_remote_method(
                    encoded,
                    remote_parent=remote_parent,
                    local_parent=local_parent,
                    remote_workspace=remote_workspace,
                    local_workspace=local_workspace,
                )

            close = remote(a_object["_rclose_method"]) if "_rclose_method" in a_object else None
            return _windowed(remote(a_object["_rwindow_method"]), close)
        return super()._decode(
            a_object,
            remote_parent=remote_parent,
            local_parent=local_parent,
            remote_workspace=remote_workspace,
            local_workspace=local_workspace,
        )


def _is_stop(item: Any) -> bool:
    return isinstance(item, dict) and item.get("_rtype") == "stop_iteration"


def _window_of(next_item: Any) -> Any:
    """The producer side: up to ``count`` items per call, ending with the stop marker."""

    async def window(count: int = GENERATOR_WINDOW) -> list:
        items = []
        for _ in range(max(1, min(int(count), 1024))):
            item = await next_item()
            items.append(item)
            if _is_stop(item):
                break
        return items

    return window


async def _windowed(window: Any, close: Any) -> AsyncIterator[Any]:
    """The consumer side: yields items while the next window is already on its way."""
    pending = asyncio.ensure_future(window(GENERATOR_WINDOW))
    finished = False
    try:
        while True:
            items = await pending
            finished = not items or _is_stop(items[-1])
            if not finished:
                pending = asyncio.ensure_future(window(GENERATOR_WINDOW))
            for item in items:
                if _is_stop(item):
                    return
                yield item
            if finished:
                return
    finally:
        if not finished:
            pending.cancel()
            if close is not None:
                try:
                    await close()
                except Exception:
                    pass


class _V4Connection(_hypha_ws.WebsocketRPCConnection):
    """hypha-rpc's WebSocket connection, over a ``BatchingWebSocket``."""

    def __init__(self, *args: Any, policy: BatchPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._policy = policy

    async def _attempt_connection(self, server_url: str, attempt_fallback: bool = True) -> Any:
        websocket = await super()._attempt_connection(server_url, attempt_fallback)
        return BatchingWebSocket(websocket, self._policy)


# hypha-rpc's own classes, kept before the swap below replaces them in its module.
_PlainConnection: TypeAlias = _hypha_ws.WebsocketRPCConnection
_PlainRPC: TypeAlias = _hypha_ws.RPC


class _SelectingConnection(_PlainConnection):
    """Built by hypha-rpc's ``connect_to_server``: a v4 connection inside ours, else plain v3."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        policy = _v4_policy.get()
        if policy is None:
            return _PlainConnection(*args, **kwargs)
        connection = object.__new__(_V4Connection)
        _V4Connection.__init__(connection, *args, policy=policy, **kwargs)
        return connection


class _SelectingRPC(_PlainRPC):
    """Likewise for the RPC object: ``_V4RPC`` inside our ``connect_to_server``."""

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        rpc_class = _V4RPC if _v4_policy.get() is not None else _PlainRPC
        rpc = object.__new__(rpc_class)
        rpc.__init__(*args, **kwargs)
        return rpc


if not issubclass(_hypha_ws.WebsocketRPCConnection, _SelectingConnection):
    _hypha_ws.WebsocketRPCConnection = _SelectingConnection
    _hypha_ws.RPC = _SelectingRPC


async def connect_to_server(
    config: dict[str, Any] | None = None, *, batching: BatchPolicy | None = None, **kwargs: Any
) -> Any:
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
