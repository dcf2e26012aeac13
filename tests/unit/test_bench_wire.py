"""The benchmarks' raw client writes a manager call as hypha-rpc does (Hypha's manager answers only that)."""

from __future__ import annotations

import asyncio
import json

import websockets
from websockets.protocol import State

from benchmarks.wire import RawPeer, call_extra, frame, pack, split_frame, unpack_payload
from rhizomorph.protocol import rpc


def test_a_call_by_session_carries_the_heartbeat_interval():
    extra = call_extra(["x"], timeout=20.0)
    # Hypha's manager expands "*" into resolve/reject/heartbeat callbacks with `t` as the interval.
    assert extra == {"args": ["x"], "promise": "*", "t": 10.0}
    header = {"type": "method", "to": "*/manager", "method": "services.default.echo", "session": "b7"}
    message = bytes(frame(header, pack(extra)))
    decoded, offset = split_frame(message)
    assert decoded["session"] == "b7" and unpack_payload(message, offset) == extra
    assert rpc.reply_methods({**extra, "session": "b7"}) == ("b7.resolve", "b7.reject")


async def test_close_releases_the_socket_of_a_peer_that_stopped_reading():
    """A peer whose reading is paused (``max_queue=1``, a full queue) never sees the closing handshake
    end: ``close`` gives up after its timeout and drops the connection, so no open socket is left
    to warn unclosed when it is collected. A real websockets server on 127.0.0.1."""

    async def flood(ws: websockets.ServerConnection) -> None:
        await ws.recv()
        info = {"type": "connection_info", "workspace": "w", "client_id": "c", "manager_id": "m"}
        await ws.send(json.dumps(info))
        try:
            while True:  # until the kernel's buffers are full and then until the client drops
                await ws.send(b"\0" * 65536)
        except websockets.ConnectionClosed:
            pass

    async with websockets.serve(flood, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        peer = await RawPeer.connect(f"ws://127.0.0.1:{port}", max_queue=1)
        await asyncio.sleep(0.2)  # the queue fills, websockets pauses reading
        await peer.close(timeout=0.5)
        assert peer.ws.state is State.CLOSED
        assert peer.ws.transport.is_closing()
