"""CPU per routed message in one gateway worker: socket bytes in, socket bytes out, fake sockets.

    python -m benchmarks.delivery_cpu --routed [--wire v3|v4] [--size 256] [--messages 20000] [--no-batching]
    valgrind --tool=callgrind python -m benchmarks.delivery_cpu --routed ...   # instructions, load-free

A caller's masked WebSocket frames, one hypha-rpc call each (header ``type``/``from``/``to``/
``method``/``session``, then ``args`` and ``promise``), arrive one per event-loop turn in its
``RouterServerConnection.data_received``, as they do from a socket; the router reads, parses,
stamps and queues each for a target on the same worker, whose ``RouterServerConnection``
writes to a transport that takes every write at once. What one routed message costs the
gateway worker without Ray, the network or the clients: the frame reader, the inbound rate
limit, ``Router.route``, the envelope, the target's ``DeliveryQueue`` and the frame writer.
``--wire v4``: the target is a v4 client (its queue batches); the caller's frames are the same.
``warmup_digest`` hashes the bytes written to the target for the first ``DIGESTED`` messages:
two trees that put the same bytes on the wire print the same digest.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from collections.abc import Callable
from typing import Any

import msgpack
from websockets.asyncio.connection import Connection
from websockets.frames import apply_mask
from websockets.protocol import State
from websockets.server import ServerProtocol

from rhizomorph.config import Config
from rhizomorph.gateway.connection import ClientConnection, RouterServerConnection
from rhizomorph.gateway.router import Router
from rhizomorph.protocol import frames, limits
from rhizomorph.protocol.handshake import Identity
from rhizomorph.protocol.streams import StreamIds


class Transport(asyncio.Transport):
    """A socket that takes every write at once: bytes are counted, not sent."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.writes = 0
        self.sizes: list[int] = []  # bytes of each write, while ``record`` (the writes a stream's chunks get)
        self.record = False
        self.digest: Any = None  # a hash of what is written while set (the warm-up): the bytes on the wire

    def write(self, data: Any) -> None:
        self.written += len(data)
        self.writes += 1
        if self.record:
            self.sizes.append(len(data))
        if self.digest is not None:
            self.digest.update(data)

    def writelines(self, list_of_data: Any) -> None:
        size = sum(map(len, list_of_data))  # one write(v) call, as uvloop's writelines makes
        self.written += size
        self.writes += 1
        if self.record:
            self.sizes.append(size)
        if self.digest is not None:
            for data in list_of_data:
                self.digest.update(data)

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


class SlowTransport(Transport):
    """A socket whose peer reads slower than the router writes: a write over 64 KiB pauses the
    connection (as a transport above its high-water mark does), and it resumes two loop turns
    later; what is queued meanwhile goes through the target's writer task."""

    protocol: Any = None  # the connection that gets pause_writing / resume_writing
    pauses = 0

    def write(self, data: Any) -> None:
        super().write(data)
        self._maybe_pause(len(data))

    def writelines(self, list_of_data: Any) -> None:
        super().writelines(list_of_data)
        self._maybe_pause(sum(map(len, list_of_data)))

    def _maybe_pause(self, size: int) -> None:
        protocol = self.protocol
        if size > 65536 and protocol is not None and not protocol.paused:
            self.pauses += 1
            protocol.pause_writing()
            loop = asyncio.get_running_loop()
            loop.call_soon(loop.call_soon, protocol.resume_writing)


class NoRegistry:
    async def claim_client(self, *args: Any) -> None:
        return None

    async def release_client(self, *args: Any) -> list[Any]:
        return []

    async def locate(self, address: str) -> None:
        return None


def server_connection(transport: asyncio.Transport) -> RouterServerConnection:
    """A gateway connection past its handshake, writing to ``transport``."""
    websocket = RouterServerConnection(ServerProtocol(state=State.OPEN), None, ping_interval=None)  # type: ignore[arg-type]
    Connection.connection_made(websocket, transport)  # the server's own would start a handshake handler
    websocket.request = object()  # type: ignore[assignment]  # as if the handshake was done
    return websocket


async def _join(
    router: Router, client_id: str, wire_v4: bool, slow: bool = False
) -> tuple[ClientConnection, RouterServerConnection, Transport]:
    transport = SlowTransport() if slow else Transport()
    websocket = server_connection(transport)
    if isinstance(transport, SlowTransport):
        transport.protocol = websocket
    identity = Identity(
        workspace="ws", client_id=client_id, user_id=f"u-{client_id}", is_anonymous=True, workspaces={"ws": "rw"}
    )
    conn = ClientConnection(websocket, identity, router.batch_policy, wire_v4=wire_v4)
    await router.admit(conn, is_reconnect=False)
    return conn, websocket, transport


def call_message(size: int) -> bytes:
    """A hypha-rpc call of about ``size`` bytes (unmasked: what a client sends as one message)."""
    header = {"type": "method", "from": "ws/a", "to": "ws/b", "method": "services.echo.echo", "session": "s" * 22}
    extra = {"args": [b""], "promise": {"heartbeat": "ws/a:h", "resolve": "ws/a:r", "reject": "ws/a:j"}, "t": 15.0}
    padding = max(0, size - len(msgpack.packb(header)) - len(msgpack.packb(extra)))
    extra["args"] = [b"x" * padding]
    return msgpack.packb(header, use_bin_type=True) + msgpack.packb(extra, use_bin_type=True)


def call_frame(size: int) -> bytes:
    """A hypha-rpc call of about ``size`` bytes as the caller's socket carries it (masked)."""
    return masked_frame(call_message(size))


def masked_frame(message: bytes) -> bytes:
    """One binary WebSocket frame of ``message`` as a client sends it (masked)."""
    mask = b"\x5a\xa5\x3c\xc3"
    length = len(message)
    if length < 126:
        head = bytes((0x82, 0x80 | length))
    elif length < 65536:
        head = bytes((0x82, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x82, 0x80 | 127)) + length.to_bytes(8, "big")
    return head + mask + apply_mask(message, mask)


#: Bytes per chunk of a v4 client's stream: ``rhizomorph/client.py``'s ``CHUNK_SIZE`` (importing it
#: would import hypha-rpc and numpy, whose BLAS threads would show in callgrind's counts).
CHUNK_SIZE = 256 * 1024

#: Messages whose bytes on the wire are hashed (``warmup_digest``), before the warm-up.
DIGESTED = 20
#: Calls in a row whose bytes are cut into reads together (``unaligned``).
PERIOD = 10


async def one_per_turn(put: Callable[[bytes], Any], frame: bytes, messages: int) -> float:
    """CPU seconds of ``messages`` calls of ``put(frame)``, one per turn of the event loop."""
    started = time.process_time()
    for _ in range(messages):
        put(frame)
        await asyncio.sleep(0)  # the next message arrives on a later turn of the loop
    await asyncio.sleep(0)
    return time.process_time() - started


def stream_bytes(size: int) -> bytes:
    """A v4 client's call of about ``size`` bytes as its socket carries it: a chunk stream
    (``rhizomorph/client.py``'s ``CHUNK_SIZE``), one masked frame per chunk."""
    chunks = frames.split_stream(call_message(size), 1, CHUNK_SIZE)  # the id is free again after its last chunk
    return b"".join(masked_frame(chunk) for chunk in chunks)


async def run(
    size: int,
    messages: int,
    batching: bool,
    wire: str = "v3",
    read: int = 0,
    stream: bool = False,
    slow: bool = False,
    unaligned: bool = False,
) -> dict[str, Any]:
    """``read``: the caller's bytes arrive in reads of at most this many bytes, one per loop turn
    (0: one read per frame); ``stream``: the caller is a v4 client sending each call as a chunk
    stream; ``slow``: the target's socket pauses after each big write (``SlowTransport``);
    ``unaligned``: the reads are cut from the caller's stream of ``PERIOD`` calls in a row, as
    a socket with several calls in flight is read (a read ends inside the next call's frame),
    not one call at a time (then ``messages`` must be a multiple of ``PERIOD``)."""
    if unaligned and (not read or messages % PERIOD):
        raise ValueError(f"unaligned needs --read and a multiple of {PERIOD} messages")
    router = Router(Config(port=0, enable_message_batching=batching), "w1", NoRegistry())  # type: ignore[arg-type]
    router.streams.ids = StreamIds(random.Random(0))  # the same stream ids in every run: comparable digests
    caller, caller_socket, _ = await _join(router, "a", wire_v4=stream)
    _, _, target_transport = await _join(router, "b", wire_v4=wire == "v4", slow=slow)
    policy = limits.InboundPolicy(
        rate=router.config.message_rate, burst=router.config.message_burst, idle_timeout=router.config.idle_timeout
    )

    def on_binary(message: bytes) -> None:  # what connection.serve installs, less the flood's close
        if policy.on_frame() is None:
            router.route(caller, message)

    caller_socket.on_binary = on_binary
    data = stream_bytes(size) if stream else call_frame(size)
    pieces = [data[i : i + read] for i in range(0, len(data), read)] if read else [data]
    receive = caller_socket.data_received

    async def call() -> None:
        for piece in pieces:
            receive(piece)
            await asyncio.sleep(0)  # the next read comes on a later turn of the loop

    if unaligned:
        stream_of_calls = data * PERIOD  # cut once: the same reads for any --messages
        period = [stream_of_calls[i : i + read] for i in range(0, len(stream_of_calls), read)]

        async def calls(count: int) -> None:
            for _ in range(count // PERIOD):
                for piece in period:
                    receive(piece)
                    await asyncio.sleep(0)

    target_transport.digest = hashlib.sha256()
    if unaligned:
        await calls(DIGESTED)
    for _ in range(
        0 if unaligned else DIGESTED
    ):  # the same for any --messages: it cancels out of (I(N) - I(M)) / (N - M)
        await call()
    digest, target_transport.digest = target_transport.digest.hexdigest()[:16], None
    target_transport.record = True  # the writes of one call
    await call()
    target_transport.record = False
    for _ in range(messages // 10):  # warm-up
        await call()
    written = target_transport.written
    if unaligned:
        started = time.process_time()
        await calls(messages)
        await asyncio.sleep(0)
        elapsed = time.process_time() - started
    elif len(pieces) == 1:
        elapsed = await one_per_turn(receive, data, messages)
    else:
        started = time.process_time()
        for _ in range(messages):
            await call()
        await asyncio.sleep(0)
        elapsed = time.process_time() - started
    return {
        **result(size, batching, wire, messages, elapsed),
        "bytes_out_per_message": round((target_transport.written - written) / messages, 1),
        "writes": target_transport.writes,
        "writes_of_one_call": target_transport.sizes,
        "warmup_digest": digest,
    }


def result(size: int, batching: bool, wire: str, messages: int, elapsed: float) -> dict[str, Any]:
    """What a run measured: its arguments and the CPU µs per message."""
    return {
        "size": size,
        "batching": batching,
        "wire": wire,
        "messages": messages,
        "cpu_us_per_message": round(elapsed / messages * 1e6, 3),
    }
