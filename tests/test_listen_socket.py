"""The gateway's shared listening socket (actors/worker.py): accepted sockets must have TCP_NODELAY.

asyncio sets TCP_NODELAY only on sockets created with proto IPPROTO_TCP; without it, Nagle's
algorithm and delayed ACKs hold the last small frames of a burst for ~40 ms.
"""

from __future__ import annotations

import asyncio
import socket

from actors.worker import _reuseport_socket


async def test_accepted_gateway_sockets_have_nodelay() -> None:
    listener = _reuseport_socket("127.0.0.1", 0)
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
    first = _reuseport_socket("127.0.0.1", 0)
    try:
        second = _reuseport_socket("127.0.0.1", first.getsockname()[1])  # a second worker, same port
        second.close()
    finally:
        first.close()
