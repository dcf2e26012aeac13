"""The v3 wire, spoken raw: a two-segment msgpack frame codec and a bare WebSocket peer.

Used by the raw load generator (``clients.RawClients``) and by the bare relay, so both ends of
the raw comparison share one codec. A frame is ``msgpack(header) + payload`` where the payload
is the already-packed extra segment (or nothing); it is never decoded on the hot path.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Callable
from typing import Any

import msgpack
import websockets

Frame = bytes
#: Called for every binary frame a peer receives: (header, frame, payload offset).
FrameHandler = Callable[[dict[str, Any], bytes, int], None]


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


class RawPeer:
    """One WebSocket client speaking the v3 handshake and binary frames, nothing more.

    It always writes its own ``from``: the router overwrites it, the bare relay trusts it.
    """

    _sessions = itertools.count()

    def __init__(self, ws: Any, info: dict[str, Any]) -> None:
        self.ws = ws
        self.info = info
        self.workspace: str = info["workspace"]
        self.address = f"{info['workspace']}/{info['client_id']}"
        self.manager = f"*/{info['manager_id']}"
        self.on_frame: FrameHandler | None = None
        self._replies: dict[str, asyncio.Future] = {}
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(
        cls, url: str, *, workspace: str | None = None, token: str | None = None, timeout: float = 20.0
    ) -> RawPeer:
        ws = await websockets.connect(url, max_size=None, compression=None, open_timeout=timeout)
        try:
            await ws.send(
                json.dumps(
                    {
                        "client_id": f"raw-{uuid.uuid4().hex[:12]}",
                        "workspace": workspace,
                        "token": token,
                        "reconnection_token": None,
                    }
                )
            )
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

    async def send(self, header: dict[str, Any], payload: bytes = b"") -> None:
        header["from"] = self.address
        await self.ws.send(frame(header, payload))

    async def request(self, to: str, method: str, payload: bytes, timeout: float = 60.0) -> tuple[str, bytes, int]:
        """Send a call with a session; returns the reply kind (resolve/reject), its frame and payload offset."""
        session = f"b{next(self._sessions)}"
        reply = asyncio.get_running_loop().create_future()
        self._replies[session] = reply
        try:
            await self.send({"type": "method", "to": to, "method": method, "session": session}, payload)
            return await asyncio.wait_for(reply, timeout)
        finally:
            self._replies.pop(session, None)

    async def call_manager(self, method: str, *args: Any, timeout: float = 20.0) -> Any:
        """Call ``services.default.<method>`` on the server's manager peer and return the result."""
        kind, reply, offset = await self.request(
            self.manager, f"services.default.{method}", pack({"args": list(args), "promise": "*"}), timeout
        )
        result = (unpack_payload(reply, offset).get("args") or [None])[0]
        if kind != "resolve":
            raise RuntimeError(f"{method} failed: {result}")
        return result

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                if isinstance(message, str):
                    continue  # control frames (pong, tokens, errors) are not part of a measurement
                try:
                    header, offset = split_frame(message)
                except FrameError:
                    continue
                method = header.get("method")
                session, _, kind = method.rpartition(".") if isinstance(method, str) else ("", "", "")
                reply = self._replies.get(session) if kind in ("resolve", "reject") else None
                if reply is not None:
                    if not reply.done():
                        reply.set_result((kind, message, offset))
                elif self.on_frame is not None:
                    self.on_frame(header, message, offset)
        except (websockets.ConnectionClosed, asyncio.CancelledError):
            pass

    async def close(self) -> None:
        self._reader.cancel()
        try:
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:
            pass
