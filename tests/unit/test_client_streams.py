"""The v4 client's chunk streams on a fake socket: streams take turns whole, in the order sent."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("hypha_rpc")

from rhizomorph.client import BatchingWebSocket
from rhizomorph.gateway.delivery import DeliveryQueue
from rhizomorph.protocol import frames
from rhizomorph.protocol.batching import BatchPolicy


class SlowSocket:
    """Never ready for a write in the caller's call: every chunk goes through the writer task,
    one event-loop turn each, so concurrent streams could interleave."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    async def send(self, data: bytes) -> None:
        await asyncio.sleep(0)
        self.sent.append(data)

    def ready(self) -> bool:
        return False

    def write(self, messages: list[bytes]) -> None:
        raise AssertionError("not ready: never written directly")


@pytest.mark.parametrize("enabled", [True, False], ids=["batching", "no-batching"])
@pytest.mark.parametrize("later", range(6))
async def test_concurrent_streams_go_whole_one_after_the_other(enabled: bool, later: int) -> None:
    # The second stream starts ``later`` turns after the first (some of those would interleave
    # chunk by chunk, or even overtake, if each stream only waited for the outbox).
    socket = SlowSocket()
    websocket = BatchingWebSocket(socket, BatchPolicy(enabled=enabled))
    websocket._outbox = DeliveryQueue("router", socket.send, BatchPolicy(enabled=enabled), wire_v4=True, direct=socket)
    first, second = b"a" * 40, b"b" * 40
    sending = asyncio.ensure_future(websocket.send_stream(first, chunk_size=10))
    for _ in range(later):
        await asyncio.sleep(0)
    await asyncio.gather(sending, websocket.send_stream(second, chunk_size=10))
    for _ in range(5):  # the last chunk is queued, not yet written
        await asyncio.sleep(0)
    order = [frames.decode_chunk(chunk)[0] for chunk in socket.sent]
    assert order == [1] * 4 + [2] * 4  # stream 1's four chunks, then stream 2's
    assembler = frames.StreamAssembler()
    assert [whole for chunk in socket.sent if (whole := assembler.add(chunk)) is not None] == [first, second]


class BreakingSocket(SlowSocket):
    """Takes ``good`` writes, then fails every one: the router's end of the socket is gone."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.good = good

    async def send(self, data: bytes) -> None:
        await asyncio.sleep(0)
        if len(self.sent) >= self.good:
            raise ConnectionError("gone")
        self.sent.append(data)


@pytest.mark.parametrize("good", [0, 1, 3])
async def test_a_stream_whose_socket_breaks_fails_and_so_does_the_one_waiting_behind_it(good: int) -> None:
    # The stream's send must end (hypha-rpc starts a call's timer only once it has): with an
    # error, which fails the call at once. The stream waiting for its turn fails as well.
    socket = BreakingSocket(good)
    websocket = BatchingWebSocket(socket, BatchPolicy())
    websocket._outbox = DeliveryQueue("router", socket.send, BatchPolicy(), wire_v4=True, direct=socket)
    streams = [websocket.send_stream(b"a" * 60, chunk_size=10), websocket.send_stream(b"b" * 60, chunk_size=10)]
    results = await asyncio.wait_for(asyncio.gather(*streams, return_exceptions=True), 5)
    assert [type(r) for r in results] == [ConnectionError, ConnectionError]
    assert len(socket.sent) == good
