"""The gateway's sockets: the shared listening socket (rhizomorph/actors/worker.py) and the server
connection class (rhizomorph/gateway/connection.py).

- Accepted sockets must have TCP_NODELAY. asyncio sets it only on sockets created with proto
  IPPROTO_TCP; without it, Nagle's algorithm and delayed ACKs hold the last small frames of a
  burst for ~40 ms.
- ``RouterServerConnection.send_frames`` writes several frames with one socket write, and each
  still arrives as its own WebSocket message (what a v3 client needs).
- ``RouterServerConnection`` reads binary frames itself: messages arrive whole and in order
  however the bytes are split, and frames out of order or too big close the connection.
"""

from __future__ import annotations

import asyncio
import socket

import pytest
import websockets
from websockets.frames import Frame, Opcode
from websockets.protocol import State

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
        transport = connection.transport
        transport_write, transport_writelines = transport.write, transport.writelines

        def counting_write(data: bytes) -> None:
            writes.append(len(data))
            transport_write(data)

        def counting_writelines(data: list[bytes]) -> None:
            writes.append(sum(map(len, data)))
            transport_writelines(data)

        transport.write, transport.writelines = counting_write, counting_writelines
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
    # Frames whose total passes COALESCE_LIMIT are not joined, but still go in one write(v) call.
    assert writes[1] == len(large[0]) + 10 + len(large[1]) + 2


# -- the gateway's own reader of binary frames (RouterServerConnection.data_received) ------------


class CountingConnection(RouterServerConnection):
    """Counts the reads its own reader took (the rest went to websockets' parser)."""

    own_reads = 0

    def _read(self, data: bytes) -> None:
        type(self).own_reads += 1
        super()._read(data)


async def _reader_rig(frames: list[bytes], pieces: int, max_size: int = 1 << 20) -> tuple[list, int | None]:
    """A server that, as the gateway, takes binary messages through ``on_binary`` once the client
    said hello; a client that then writes ``frames`` (raw, masked bytes) in ``pieces`` writes
    of about equal size. Returns what the server got, in order, and the code the connection
    closed with, as the client saw it."""
    got: list = []
    closed: asyncio.Future = asyncio.get_running_loop().create_future()

    async def handler(connection: CountingConnection) -> None:
        assert await connection.recv() == "hello"
        connection.on_binary = lambda message: got.append(bytes(message))
        await connection.send("ready")
        try:
            async for message in connection:
                got.append(("text", message))
        except websockets.ConnectionClosed:
            pass
        closed.set_result(None)

    CountingConnection.own_reads = 0
    async with websockets.serve(
        handler, "127.0.0.1", 0, create_connection=CountingConnection, compression=None, max_size=max_size
    ) as server:
        port = server.sockets[0].getsockname()[1]
        async with websockets.connect(f"ws://127.0.0.1:{port}", max_size=None, compression=None) as client:
            await client.send("hello")
            assert await client.recv() == "ready"
            raw = b"".join(frames)
            step = max(1, -(-len(raw) // pieces))
            for start in range(0, len(raw), step):
                if client.protocol.state is not State.OPEN:
                    break  # the server closed the connection: the rest is never sent
                client.transport.write(raw[start : start + step])
                await asyncio.sleep(0.002)  # separate reads on the server, as far as the kernel lets
            try:
                await asyncio.wait_for(client.recv(), 0.5)
            except (TimeoutError, websockets.ConnectionClosed):
                pass
            await client.close()
            code = client.close_code  # what the server closed with, or 1000: the client's own close
        await asyncio.wait_for(closed, 5)
    return got, code


def masked(opcode: Opcode, data: bytes | str, fin: bool = True) -> bytes:
    return Frame(opcode, data if isinstance(data, bytes) else data.encode(), fin=fin).serialize(
        mask=True, extensions=[]
    )


@pytest.mark.parametrize("pieces", [1, 7, 400])
async def test_own_reader_delivers_binary_messages_whole_and_in_order(pieces: int) -> None:
    big = bytes(range(256)) * 1200  # 307200 bytes: a 64-bit length, many reads
    frames = [
        masked(Opcode.BINARY, b"one"),
        masked(Opcode.BINARY, big),
        masked(Opcode.BINARY, b"a" * 200, fin=False),  # a fragmented message, a ping amid it
        masked(Opcode.PING, b"p"),
        masked(Opcode.CONT, b"b" * 70000, fin=False),
        masked(Opcode.CONT, b"c", fin=True),
        masked(Opcode.TEXT, "a text frame"),
        masked(Opcode.BINARY, b""),
        masked(Opcode.BINARY, b"last"),
    ]
    got, code = await _reader_rig(frames, pieces)
    assert got[:3] == [b"one", big, b"a" * 200 + b"b" * 70000 + b"c"]
    # the text message goes through websockets' Assembler and the async iterator: it may come later
    assert [m for m in got if not isinstance(m, tuple)][3:] == [b"", b"last"]
    assert ("text", "a text frame") in got
    assert code == 1000
    assert CountingConnection.own_reads >= 1  # the binary frames took the gateway's reader


async def test_own_reader_closes_an_oversized_message_with_1009() -> None:
    frames = [masked(Opcode.BINARY, b"ok"), masked(Opcode.BINARY, b"x" * 5000), masked(Opcode.BINARY, b"never")]
    got, code = await _reader_rig(frames, 3, max_size=4096)
    assert got == [b"ok"] and code == 1009
    fragments = [masked(Opcode.BINARY, b"x" * 3000, fin=False), masked(Opcode.CONT, b"y" * 3000)]
    got, code = await _reader_rig(fragments, 1, max_size=4096)  # each fragment fits, the message does not
    assert got == [] and code == 1009


@pytest.mark.parametrize(
    "frames",
    [
        [masked(Opcode.BINARY, b"a", fin=False), masked(Opcode.BINARY, b"b")],  # a new message before the end
        [masked(Opcode.CONT, b"b")],  # a continuation of nothing
        [Frame(Opcode.BINARY, b"unmasked").serialize(mask=False, extensions=[])],
    ],
    ids=["new-message-mid-fragments", "stray-continuation", "unmasked"],
)
async def test_own_reader_closes_frames_out_of_order_with_1002(frames: list[bytes]) -> None:
    got, code = await _reader_rig([masked(Opcode.BINARY, b"first"), *frames, masked(Opcode.BINARY, b"x")], 1)
    assert got == [b"first"] and code == 1002
