"""The floor: a minimal one-frame-per-message WebSocket relay in one process.

It speaks just enough of the v3 wire for ``wire.RawPeer``: the JSON auth frame gets a
``connection_info``; each binary frame's header is decoded for ``to`` and the frame is written,
unchanged, to the target's socket (``from`` is trusted, nothing is stamped or re-packed).
``to: "*"`` goes to every client that subscribed to the frame's ``type``; calls to the manager
address answer ``subscribe`` (and, as a no-op, anything else such as ``generate_token``).
All clients share one workspace. No auth, no services, no ordering beyond one writer per socket.

    python -m benchmarks.bare_relay [--port 0]   # prints "PORT <n>" once listening
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import signal
import sys
from collections import defaultdict
from typing import Any

import websockets

from benchmarks.wire import FrameError, frame, pack, split_frame, unpack_payload

WORKSPACE = "bare"
MANAGER_ID = "manager-bare"


class Relay:
    def __init__(self) -> None:
        self.clients: dict[str, Any] = {}
        self.subscribers: dict[str, set[str]] = defaultdict(set)
        self._ids = itertools.count()

    async def serve(self, ws: Any) -> None:
        try:
            auth = json.loads(await asyncio.wait_for(ws.recv(), 10))
        except Exception:
            await ws.close(1008)
            return
        client_id = auth.get("client_id") or f"c{next(self._ids)}"
        address = f"{WORKSPACE}/{client_id}"
        self.clients[address] = ws
        try:
            await ws.send(
                json.dumps(
                    {
                        "type": "connection_info",
                        "workspace": WORKSPACE,
                        "client_id": client_id,
                        "manager_id": MANAGER_ID,
                        "user": {"id": client_id},
                    }
                )
            )
            async for message in ws:
                if isinstance(message, bytes):
                    await self.route(address, message)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.clients.pop(address, None)
            for addresses in self.subscribers.values():
                addresses.discard(address)

    async def route(self, sender: str, message: bytes) -> None:
        try:
            header, offset = split_frame(message)
        except FrameError:
            return
        to = header["to"]
        if to == "*":
            for address in self.subscribers.get(header.get("type", ""), ()):
                await self._write(address, message)
        elif to.endswith(MANAGER_ID):
            await self._manager(sender, header, unpack_payload(message, offset))
        else:
            await self._write(to, message)

    async def _manager(self, sender: str, header: dict[str, Any], extra: dict[str, Any]) -> None:
        method, session = header.get("method", ""), header.get("session")
        if method == "services.default.subscribe":
            types = extra.get("args", [[]])[0]
            for event_type in [types] if isinstance(types, str) else types:
                self.subscribers[event_type].add(sender)
        if session:
            reply = {"type": "method", "from": f"*/{MANAGER_ID}", "to": sender, "method": f"{session}.resolve"}
            await self._write(sender, frame(reply, pack({"args": [""]})))

    async def _write(self, address: str, message: bytes) -> None:
        ws = self.clients.get(address)
        if ws is not None:
            try:
                await ws.send(message)
            except websockets.ConnectionClosed:
                pass


async def main(host: str, port: int) -> None:
    relay = Relay()
    stop = asyncio.get_running_loop().create_future()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.cancel)
    async with websockets.serve(relay.serve, host, port, max_size=None, compression=None) as server:
        print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
        try:
            await stop
        except asyncio.CancelledError:
            pass


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
    sys.exit(0)
