"""The v3/v4 wire, spoken raw: a two-segment msgpack frame codec and a bare WebSocket peer.

The one raw client of the tests and the benchmarks (``RawPeer``), and the codec the bare relay
shares with it, so both ends of the raw comparison read frames the same way. A frame is
``msgpack(header) + payload`` where the payload is the already-packed extra segment (or
nothing); it is never decoded on the hot path. A v4 peer also receives batch frames
(``rhizomorph/protocol/frames.py``), split here into their messages.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable, Iterable
from typing import Any

import msgpack
import websockets

from rhizomorph.protocol import envelope, frames

Frame = bytes
#: Called for every binary message a listening peer receives: (header, message, payload offset).
FrameHandler = Callable[[dict[str, Any], bytes, int], None]
#: Called with the undecoded message while no request waits for a reply (and no ``on_frame``).
MessageHandler = Callable[[bytes], None]


class FrameError(ValueError):
    """A binary frame whose header is not a msgpack map with a string ``to``."""


def split_frame(frame: bytes) -> tuple[dict[str, Any], int]:
    """Decode only the header of a frame; returns it and the offset where the payload starts."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(len(frame), 1))
    unpacker.feed(frame)
    try:
        header = unpacker.unpack()
    except (msgpack.OutOfData, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise FrameError(f"bad header: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("to"), str):
        raise FrameError("header must be a map with a string 'to'")
    return header, unpacker.tell()


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def frame(header: dict[str, Any], payload: bytes = b"") -> Frame:
    """A two-segment frame: the packed header followed by an already packed extra segment."""
    return pack(header) + payload


def unpack_payload(frame_: bytes, offset: int) -> dict[str, Any]:
    if offset >= len(frame_):
        return {}
    return msgpack.unpackb(memoryview(frame_)[offset:], raw=False, strict_map_key=False)


def _reply_kind(header: dict[str, Any]) -> tuple[str, str]:
    """``(session, "resolve"|"reject")`` for a reply's header, else ``(session, other)``."""
    method = header.get("method")
    session, _, kind = method.rpartition(".") if isinstance(method, str) else ("", "", "")
    return session, kind


def call_extra(args: list[Any], timeout: float) -> dict[str, Any]:
    """A call's extra segment as hypha-rpc writes it for a reply by session (``"promise": "*"``)
    with ``t``, the heartbeat interval (half the timeout): Hypha's manager expands the promise
    with it, and a call without it never gets an answer from Hypha."""
    return {"args": args, "promise": "*", "t": timeout / 2}


class RawPeer:
    """One WebSocket client speaking the v3 (or v4) handshake and binary frames, nothing more.

    After ``connect`` the caller reads the socket itself (``ws``, ``next_binary``, ``next_text``,
    ``receive_count``), or calls ``listen`` once: a task then reads it, hands replies to
    ``request`` and every other message to ``on_frame`` (header decoded) or ``on_message``
    (undecoded, while no request waits). ``send`` always writes its own ``from``: the router
    overwrites it, the bare relay trusts it.
    """

    _sessions = itertools.count()

    def __init__(self, ws: Any, info: dict[str, Any]) -> None:
        self.ws = ws
        self.info = info
        self.workspace: str = info["workspace"]
        self.address = f"{info['workspace']}/{info['client_id']}"
        self.manager = f"*/{info['manager_id']}"
        self.v4 = info.get("wire_protocol") == 4
        self.on_frame: FrameHandler | None = None
        self.on_message: MessageHandler | None = None
        self._replies: dict[str, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        client_id: str | None = None,
        workspace: str | None = None,
        token: str | None = None,
        reconnection_token: str | None = None,
        wire_protocol: int = 3,
        timeout: float = 20.0,
        **options: Any,
    ) -> RawPeer:
        """Open the socket, send the auth frame, wait for ``connection_info``.

        ``client_id=None`` lets the server name the client; ``wire_protocol=4`` asks for v4 (the
        server may answer 3: see ``v4``). ``options`` go to ``websockets.connect``."""
        ws = await websockets.connect(
            url, **{"max_size": None, "compression": None, "open_timeout": timeout, **options}
        )
        auth: dict[str, Any] = {
            "client_id": client_id,
            "workspace": workspace,
            "token": token,
            "reconnection_token": reconnection_token,
        }
        if wire_protocol != 3:
            auth["wire_protocol"] = wire_protocol
        try:
            await ws.send(json.dumps(auth))
            while True:  # binary frames before connection_info are skipped, as the real clients do
                reply = await asyncio.wait_for(ws.recv(), timeout)
                if isinstance(reply, str):
                    break
            info = json.loads(reply)
            if info.get("type") != "connection_info":
                raise ConnectionError(f"handshake refused: {info}")
        except BaseException:
            await ws.close()
            raise
        return cls(ws, info)

    # -- sending ------------------------------------------------------------------------------
    async def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        header["from"] = self.address
        await self.ws.send(frame(header, payload))

    async def send_frames(self, outgoing: Iterable[bytes]) -> None:
        """Write pre-encoded frames (messages or v4 batches) back to back, one ``send`` each."""
        ws = self.ws
        for data in outgoing:
            await ws.send(data)

    async def request(self, to: str, method: str, payload: bytes, timeout: float = 60.0) -> tuple[str, bytes, int]:
        """Send a call with a session; returns the reply kind (resolve/reject), its frame and payload offset.

        Without ``listen`` this reads the socket until the reply, dropping what comes before it."""
        session = f"b{next(self._sessions)}"
        header = {"type": "method", "to": to, "method": method, "session": session}
        try:
            if self._reader is None:
                await self.send(header, payload)
                return await asyncio.wait_for(self._read_reply(session), timeout)
            reply = asyncio.get_running_loop().create_future()
            self._replies[session] = reply
            try:
                await self.send(header, payload)
                return await asyncio.wait_for(reply, timeout)
            finally:
                self._replies.pop(session, None)
        except TimeoutError:
            raise TimeoutError(f"no reply to {method} from {to} within {timeout:g} s") from None

    async def call_manager(self, method: str, *args: Any, timeout: float = 20.0) -> Any:
        """Call ``services.default.<method>`` on the server's manager peer and return the result."""
        kind, reply, offset = await self.manager_reply(method, *args, timeout=timeout)
        result = (unpack_payload(reply, offset).get("args") or [None])[0]
        if kind != "resolve":
            raise RuntimeError(f"{method} failed: {result}")
        return result

    async def manager_reply(self, method: str, *args: Any, timeout: float = 20.0) -> tuple[str, bytes, int]:
        """Like ``call_manager``, but returns the reply as ``request`` does, a reject included."""
        payload = pack(call_extra(list(args), timeout))
        return await self.request(self.manager, f"services.default.{method}", payload, timeout)

    # -- reading it yourself --------------------------------------------------------------------
    async def next_binary(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next binary frame, decoded whole (header and extra) by ``rhizomorph.protocol.envelope``."""
        while True:
            data = await asyncio.wait_for(self.ws.recv(), timeout)
            if isinstance(data, bytes):
                return envelope.decode(data)

    async def next_text(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next text frame, as JSON."""
        while True:
            data = await asyncio.wait_for(self.ws.recv(), timeout)
            if isinstance(data, str):
                return json.loads(data)

    async def receive_count(self, expected: int) -> None:
        """Read until ``expected`` messages have arrived, counting each one of a v4 batch."""
        recv, is_v4, decode_batch = self.ws.recv, frames.is_v4, frames.decode_batch
        count = 0
        while count < expected:
            data = await recv()
            if isinstance(data, bytes):
                count += len(decode_batch(data)) if is_v4(data) else 1

    async def _read_reply(self, session: str) -> tuple[str, bytes, int]:
        while True:
            data = await self.ws.recv()
            if not isinstance(data, bytes):
                continue
            for message in frames.decode_batch(data) if self.v4 and frames.is_v4(data) else (data,):
                try:
                    header, offset = split_frame(message)
                except FrameError:
                    continue
                got, kind = _reply_kind(header)
                if got == session and kind in ("resolve", "reject"):
                    return kind, message, offset

    # -- a reader task --------------------------------------------------------------------------
    def listen(self, on_frame: FrameHandler | None = None, on_message: MessageHandler | None = None) -> RawPeer:
        """Start the reader task (once); returns the peer."""
        if on_frame is not None:
            self.on_frame = on_frame
        if on_message is not None:
            self.on_message = on_message
        if self._reader is None:
            self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def _read(self) -> None:
        dispatch = self._dispatch
        try:
            if self.v4:
                is_v4, decode_batch = frames.is_v4, frames.decode_batch
                async for data in self.ws:
                    if isinstance(data, bytes):
                        if is_v4(data):
                            for message in decode_batch(data):
                                dispatch(message)
                        else:
                            dispatch(data)
            else:
                async for data in self.ws:
                    if isinstance(data, bytes):  # text frames (pong, tokens, errors) are not measured
                        dispatch(data)
        except (websockets.ConnectionClosed, asyncio.CancelledError):
            pass

    def _dispatch(self, message: bytes) -> None:
        if self.on_message is not None and not self._replies and self.on_frame is None:
            self.on_message(message)  # nothing awaited: no header to decode
            return
        try:
            header, offset = split_frame(message)
        except FrameError:
            return
        method = header.get("method")  # _reply_kind, inline: this runs for every message
        session, _, kind = method.rpartition(".") if isinstance(method, str) else ("", "", "")
        reply = self._replies.get(session) if kind in ("resolve", "reject") else None
        if reply is not None:
            if not reply.done():
                reply.set_result((kind, message, offset))
        elif self.on_frame is not None:
            self.on_frame(header, message, offset)
        elif self.on_message is not None:
            self.on_message(message)

    async def close(self, timeout: float = 5.0) -> None:
        """Close the socket: the closing handshake if it ends within ``timeout``, else the TCP
        connection is aborted. Either way the socket is released when this returns (a cancelled
        handshake alone would leave it open, to warn unclosed when collected)."""
        if self._reader is not None:
            self._reader.cancel()
        try:
            await asyncio.wait_for(self.ws.close(), timeout)
        except Exception:
            pass
        finally:
            await self.abort()

    async def abort(self) -> None:
        """Drop the TCP connection now, without a closing handshake, and wait until the socket is
        released. For a peer that stopped reading: its handshake cannot end (websockets reads
        nothing more, the router's close frame included), so ``close`` would wait out its timeout."""
        self.ws.transport.abort()
        await self.ws.wait_closed()
