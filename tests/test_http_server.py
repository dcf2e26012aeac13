"""The gateway's HTTP/1.1 side without a router (rhizomorph/gateway/http_server.py): the front door
that tells upgrades from plain requests, keep-alive, pipelining, bounded bodies, streamed answers,
and what happens when the client leaves. Real sockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from rhizomorph.gateway import http_server
from rhizomorph.gateway.http_server import FrontDoor, HttpFront, HttpLimits, HttpRequest, Reply


class Recorder(asyncio.Protocol):
    """Stands in for websockets: records what the front door hands it."""

    def __init__(self) -> None:
        self.data = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.data += data
        if self.transport is not None:
            self.transport.write(b"upgraded")


class Site:
    def __init__(self) -> None:
        self.upgrades: list[Recorder] = []
        self.lost = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.go_on = asyncio.Event()

    async def handle(self, request: HttpRequest, reply: Reply) -> None:
        if request.path == "/echo":
            body = json.dumps({"method": request.method, "query": request.query, "body": request.body.decode()})
            await reply.send(200, [("Content-Type", "application/json")], body.encode())
        elif request.path == "/stream":
            await reply.start(200, [("Content-Type", "text/plain")])
            await reply.write(b"first;")
            await self.go_on.wait()  # the test reads the first chunk before the second is written
            await reply.write(b"second;")
        elif request.path == "/forever":
            await reply.start(200, [("Content-Type", "text/plain")])
            await reply.write(b"tick;")
            try:
                await reply.lost
                self.lost.set()
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
        elif request.path == "/boom":
            raise RuntimeError("boom")
        else:
            await reply.send_error(404, "not found")

    def recorder(self) -> Recorder:
        recorder = Recorder()
        self.upgrades.append(recorder)
        return recorder


@pytest.fixture
async def site() -> AsyncIterator[tuple[Site, int]]:
    site = Site()
    front = HttpFront(site.handle, HttpLimits(max_body=1000, request_timeout=1.0, keepalive_timeout=5.0))
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FrontDoor(site.recorder, front.connection, 0.5), "127.0.0.1", 0)
    yield site, server.sockets[0].getsockname()[1]
    front.close()
    server.close()
    await server.wait_closed()


async def _exchange(port: int, data: bytes, *, until_closed: bool = True, timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    try:
        if until_closed:
            return await asyncio.wait_for(reader.read(), timeout)
        return await asyncio.wait_for(reader.read(65536), timeout)
    finally:
        writer.close()


def _bodies(raw: bytes) -> list[Any]:
    """The JSON bodies of consecutive Content-Length responses."""
    bodies = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = int(
            next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        )
        bodies.append((head.split(b" ")[1], json.loads(rest[:length])))
        raw = rest[length:]
    return bodies


async def test_upgrades_go_to_websockets_with_every_byte(site: tuple[Site, int]) -> None:
    handler, port = site
    request = b"GET /any HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframe-bytes"
    assert await _exchange(port, request, until_closed=False) == b"upgraded"
    assert handler.upgrades[0].data == request


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(site: tuple[Site, int]) -> None:
    _, port = site
    requests = (
        b"GET /echo?a=1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answers = _bodies(await _exchange(port, requests))
    assert answers == [
        (b"200", {"method": "GET", "query": "a=1", "body": ""}),
        (b"200", {"method": "POST", "query": "", "body": "hello"}),
        (b"404", {"success": False, "detail": "not found"}),
    ]


async def test_chunked_request_bodies_are_read(site: tuple[Site, int]) -> None:
    _, port = site
    request = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
    )
    assert _bodies(await _exchange(port, request))[0][1]["body"] == "abcde"


async def test_a_body_over_the_limit_is_refused_and_the_connection_closed(site: tuple[Site, int]) -> None:
    _, port = site
    declared = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
    answer = await _exchange(port, declared)
    assert answer.startswith(b"HTTP/1.1 413 ") and b"larger than 1000 bytes" in answer
    chunked = (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"3e8\r\n" + b"x" * 1000 + b"\r\n"
    )
    answer = await _exchange(port, chunked + b"3e8\r\n" + b"x" * 1000 + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")


async def test_a_malformed_request_is_answered_400(site: tuple[Site, int]) -> None:
    _, port = site
    answer = await _exchange(port, b"NOT A REQUEST\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")


async def test_a_failing_handler_is_a_500_and_the_connection_lives_on(site: tuple[Site, int]) -> None:
    _, port = site
    answers = _bodies(
        await _exchange(
            port, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    )
    assert answers[0][0] == b"500" and "boom" in answers[0][1]["detail"]
    assert answers[1][0] == b"200"


async def test_head_gets_headers_only(site: tuple[Site, int]) -> None:
    _, port = site
    answer = await _exchange(port, b"HEAD /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: " in head.lower() and body == b""


async def test_a_streamed_answer_arrives_chunk_by_chunk(site: tuple[Site, int]) -> None:
    handler, port = site
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    seen = b""
    while b"first;" not in seen:
        seen += await asyncio.wait_for(reader.read(1024), 5)
    assert b"transfer-encoding: chunked" in seen.lower() and b"second;" not in seen
    handler.go_on.set()
    while not seen.endswith(b"0\r\n\r\n"):
        seen += await asyncio.wait_for(reader.read(1024), 5)
    assert b"second;" in seen
    writer.close()


async def test_a_client_that_leaves_is_noticed_then_its_handler_cancelled(
    site: tuple[Site, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_server, "LOST_GRACE", 0.5)
    handler, port = site
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /forever HTTP/1.1\r\nHost: x\r\n\r\n")
    seen = b""
    while b"tick;" not in seen:
        seen += await asyncio.wait_for(reader.read(1024), 5)
    writer.close()
    await asyncio.wait_for(handler.lost.wait(), 5)  # first told, so it can end by itself
    assert not handler.cancelled.is_set()
    await asyncio.wait_for(handler.cancelled.wait(), 5)  # then cancelled, as it did not


async def test_silent_and_slow_sockets_are_dropped(site: tuple[Site, int]) -> None:
    _, port = site
    # Nothing at all: the front door's timeout (0.5 s).
    assert await _exchange(port, b"", timeout=3) == b""
    # Half a request head, then nothing.
    assert await _exchange(port, b"GET /echo HTTP/1.1\r\nHo", timeout=3) == b""
    # A head, then half a body: the request timeout (1 s).
    answer = await _exchange(port, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc", timeout=3)
    assert answer == b""


async def test_an_oversized_head_is_refused(site: tuple[Site, int]) -> None:
    _, port = site
    answer = await _exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")


async def test_expect_continue_is_answered(site: tuple[Site, int]) -> None:
    _, port = site
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim.startswith(b"HTTP/1.1 100 ")
    writer.write(b"ok")
    rest = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert _bodies(rest)[0][1]["body"] == "ok"
