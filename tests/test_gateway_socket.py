"""The gateway's sockets: the shared listening socket (rhizomorph/actors/worker.py) and the server
connection class (rhizomorph/gateway/connection.py).

- Accepted sockets must have TCP_NODELAY. asyncio sets it only on sockets created with proto
  IPPROTO_TCP; without it, Nagle's algorithm and delayed ACKs hold the last small frames of a
  burst for ~40 ms.
- ``RouterServerConnection.send_frames`` writes several frames with one socket write, and each
  still arrives as its own WebSocket message (what a v3 client needs).
"""

from __future__ import annotations

import asyncio
import socket

import websockets

from rhizomorph.gateway.connection import COALESCE_LIMIT, RouterServerConnection
from rhizomorph.gateway.server import reuseport_socket


async def test_accepted_gateway_sockets_have_nodelay() -> None:
    listener = reuseport_socket("127.0.0.1", 0)
    accepted: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        writer.close()

    server = await asyncio.start_server(on_client, sock=listener)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", listener.getsockname()[1])
        assert await asyncio.wait_for(accepted, 5) != 0
        writer.close()
    finally:
        server.close()
        await server.wait_closed()


def test_listening_socket_is_shared_with_reuseport() -> None:
    first = reuseport_socket("127.0.0.1", 0)
    try:
        second = reuseport_socket("127.0.0.1", first.getsockname()[1])  # a second worker, same port
        second.close()
    finally:
        first.close()


async def test_send_frames_is_one_socket_write_of_separate_messages() -> None:
    small = [bytes([i]) * 100 for i in range(5)]
    large = [b"L" * COALESCE_LIMIT, b"M" * 10]
    writes: list[int] = []

    async def handler(connection: RouterServerConnection) -> None:
        transport_write = connection.transport.write

        def counting_write(data: bytes) -> None:
            writes.append(len(data))
            transport_write(data)

        connection.transport.write = counting_write
        await connection.send_frames(small)
        await connection.send_frames(large)
        await connection.wait_closed()

    async with websockets.serve(
        handler, "127.0.0.1", 0, create_connection=RouterServerConnection, compression=None
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with websockets.connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None) as client:
            received = [await asyncio.wait_for(client.recv(), 5) for _ in range(len(small) + len(large))]

    assert received == small + large  # one WebSocket message per frame, in order
    assert writes[0] == sum(len(f) + 2 for f in small)  # the 5 small frames (2-byte headers): one write
    # Frames whose total passes COALESCE_LIMIT are written one by one (then the close frame).
    assert writes[1:3] == [len(large[0]) + 10, len(large[1]) + 2]
