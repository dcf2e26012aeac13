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
import time
from collections.abc import Callable
from typing import Any

import msgpack
from websockets.asyncio.connection import Connection
from websockets.protocol import State
from websockets.server import ServerProtocol

from rhizomorph.config import Config
from rhizomorph.gateway.connection import ClientConnection, RouterServerConnection
from rhizomorph.gateway.router import Router
from rhizomorph.protocol import limits
from rhizomorph.protocol.handshake import Identity


class Transport(asyncio.Transport):
    """A socket that takes every write at once: bytes are counted, not sent."""

    def __init__(self) -> None:
        super().__init__()
        self.written = 0
        self.writes = 0
        self.digest: Any = None  # a hash of what is written while set (the warm-up): the bytes on the wire

    def write(self, data: Any) -> None:
        self.written += len(data)
        self.writes += 1
        if self.digest is not None:
            self.digest.update(data)

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

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
    router: Router, client_id: str, wire_v4: bool
) -> tuple[ClientConnection, RouterServerConnection, Transport]:
    transport = Transport()
    websocket = server_connection(transport)
    identity = Identity(
        workspace="ws", client_id=client_id, user_id=f"u-{client_id}", is_anonymous=True, workspaces={"ws": "rw"}
    )
    conn = ClientConnection(websocket, identity, router.batch_policy, wire_v4=wire_v4)
    await router.admit(conn, is_reconnect=False)
    return conn, websocket, transport


def call_frame(size: int) -> bytes:
    """A hypha-rpc call of about ``size`` bytes as the caller's socket carries it (masked)."""
    header = {"type": "method", "from": "ws/a", "to": "ws/b", "method": "services.echo.echo", "session": "s" * 22}
    extra = {"args": [b""], "promise": {"heartbeat": "ws/a:h", "resolve": "ws/a:r", "reject": "ws/a:j"}, "t": 15.0}
    padding = max(0, size - len(msgpack.packb(header)) - len(msgpack.packb(extra)))
    extra["args"] = [b"x" * padding]
    message = msgpack.packb(header, use_bin_type=True) + msgpack.packb(extra, use_bin_type=True)
    mask = b"\x5a\xa5\x3c\xc3"
    length = len(message)
    if length < 126:
        head = bytes((0x82, 0x80 | length))
    elif length < 65536:
        head = bytes((0x82, 0x80 | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((0x82, 0x80 | 127)) + length.to_bytes(8, "big")
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(message))
    return head + mask + masked


#: Messages whose bytes on the wire are hashed (``warmup_digest``), before the warm-up.
DIGESTED = 20


async def one_per_turn(put: Callable[[bytes], Any], frame: bytes, messages: int) -> float:
    """CPU seconds of ``messages`` calls of ``put(frame)``, one per turn of the event loop."""
    started = time.process_time()
    for _ in range(messages):
        put(frame)
        await asyncio.sleep(0)  # the next message arrives on a later turn of the loop
    await asyncio.sleep(0)
    return time.process_time() - started


async def run(size: int, messages: int, batching: bool, wire: str = "v3") -> dict[str, Any]:
    router = Router(Config(port=0, enable_message_batching=batching), "w1", NoRegistry())  # type: ignore[arg-type]
    caller, caller_socket, _ = await _join(router, "a", wire_v4=False)
    _, _, target_transport = await _join(router, "b", wire_v4=wire == "v4")
    policy = limits.InboundPolicy(
        rate=router.config.message_rate, burst=router.config.message_burst, idle_timeout=router.config.idle_timeout
    )

    def on_binary(message: bytes) -> None:  # what connection.serve installs, less the flood's close
        if policy.on_frame() is None:
            router.route(caller, message)

    caller_socket.on_binary = on_binary
    frame = call_frame(size)
    receive = caller_socket.data_received
    target_transport.digest = hashlib.sha256()
    for _ in range(DIGESTED):  # the same for any --messages: it cancels out of (I(N) - I(M)) / (N - M)
        receive(frame)
        await asyncio.sleep(0)
    digest, target_transport.digest = target_transport.digest.hexdigest()[:16], None
    for _ in range(messages // 10):  # warm-up
        receive(frame)
        await asyncio.sleep(0)
    written = target_transport.written
    elapsed = await one_per_turn(receive, frame, messages)
    return {
        **result(size, batching, wire, messages, elapsed),
        "bytes_out_per_message": round((target_transport.written - written) / messages, 1),
        "writes": target_transport.writes,
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
