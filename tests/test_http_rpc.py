"""hypha-rpc's HTTP transport (``connect_to_server({..., "transport": "http"})``) against the router:
rhizomorph/gateway/http_rpc.py. The released hypha-rpc client is the oracle; the stream's framing
and the POST credentials are also checked with raw HTTP (httpx) on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from tests.helpers import eventually


def _http(router: Any) -> str:
    return router.url.replace("ws://", "http://")


class RawStream:
    """A GET /rpc stream read frame by frame (4-byte length, then one msgpack message) by a
    task of its own, so a test that waits in vain does not cut the stream."""

    def __init__(self, client: httpx.AsyncClient, response: httpx.Response) -> None:
        self.client = client
        self.response = response
        self._messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        buffer = b""
        async for chunk in self.response.aiter_bytes():
            buffer += chunk
            while len(buffer) >= 4 and len(buffer) >= 4 + int.from_bytes(buffer[:4], "big"):
                length = int.from_bytes(buffer[:4], "big")
                frame, buffer = buffer[4 : 4 + length], buffer[4 + length :]
                unpacker = msgpack.Unpacker(raw=False, strict_map_key=False)
                unpacker.feed(frame)
                message = unpacker.unpack()
                for extra in unpacker:
                    message.update(extra)
                self._messages.put_nowait(message)

    async def next(self, timeout: float = 10.0) -> dict[str, Any]:
        return await asyncio.wait_for(self._messages.get(), timeout)

    async def next_of(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            message = await self.next(max(0.01, deadline - time.monotonic()))
            if message.get("type") == kind:
                return message

    async def close(self) -> None:
        self._reader.cancel()
        await self.response.aclose()
        await self.client.aclose()


async def _open_stream(base: str, params: dict[str, str], headers: dict[str, str] | None = None):
    client = httpx.AsyncClient(timeout=httpx.Timeout(30.0))
    request = client.build_request(
        "GET", f"{base}/rpc", params=params, headers={"Accept": "application/x-msgpack-stream", **(headers or {})}
    )
    response = await client.send(request, stream=True)
    return client, response


@pytest.fixture
async def raw_stream(router) -> AsyncIterator[Any]:
    opened: list[RawStream] = []

    async def _open(params: dict[str, str], headers: dict[str, str] | None = None, base: str | None = None):
        client, response = await _open_stream(base or _http(router), params, headers)
        opened.append(RawStream(client, response))
        return opened[-1]

    yield _open
    for stream in opened:
        await stream.close()


@pytest.mark.parametrize("deployment", ["router", "router2"])
async def test_http_and_websocket_clients_call_each_other(request, connect, deployment) -> None:
    router = request.getfixturevalue(deployment)
    provider = await connect(router.url)
    workspace = provider.config.workspace

    async def call_back(callback, n):
        return [await callback(i) for i in range(n)]

    await provider.register_service(
        {
            "id": "ws-svc",
            "config": {"visibility": "protected", "require_context": True},
            "double": lambda array, context=None: array * 2,
            "call_back": lambda cb, n, context=None: call_back(cb, n),
            "whoami": lambda context=None: {"from": context["from"], "user": context["user"]["id"]},
        }
    )
    token = await provider.generate_token()
    client = await connect(_http(router), transport="http", token=token, workspace=workspace, client_id="http-one")
    assert client.config.workspace == workspace and client.config.client_id == "http-one"

    svc = await client.get_service(f"{provider.config.client_id}:ws-svc")
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(await svc.double(array), array * 2)
    assert await svc.call_back(lambda i: i * 10, 4) == [0, 10, 20, 30]
    # The router stamps the HTTP client's identity as it does a WebSocket client's.
    assert await svc.whoami() == {"from": f"{workspace}/http-one", "user": provider.config.user["id"]}

    await client.register_service({"id": "http-svc", "config": {"visibility": "protected"}, "add": lambda a, b: a + b})
    from_ws = await provider.get_service("http-one:http-svc")
    assert await from_ws.add(2, 3) == 5
    big = bytes(range(256)) * 4096  # 1 MiB each way: hypha-rpc's message_cache chunks over POSTs
    await client.register_service({"id": "echo", "config": {"visibility": "protected"}, "echo": lambda x: x})
    echo = await provider.get_service("http-one:echo")
    assert await echo.echo(big) == big


async def test_an_http_client_in_its_own_workspace(router, connect) -> None:
    client = await connect(_http(router), transport="http")
    workspace = client.config.workspace
    assert workspace.startswith("ws-user-anonymouz-")
    await client.register_service({"id": "mine", "config": {"visibility": "public"}, "ping": lambda: "pong"})
    listed = [s["id"] for s in await client.list_services()]
    assert f"{workspace}/{client.config.client_id}:mine" in listed
    assert await (await client.get_service("mine")).ping() == "pong"
    other = await connect(router.url)
    assert await (await other.get_service(f"{workspace}/mine")).ping() == "pong"


async def test_the_stream_survives_a_reconnection(router, connect) -> None:
    client = await connect(_http(router), transport="http", client_id="http-reconnecting")
    await client.register_service({"id": "kept", "config": {"visibility": "public"}, "ping": lambda: "pong"})
    workspace = client.config.workspace
    reconnected = asyncio.Event()
    connection = client.rpc._connection
    original = connection._handle_connected

    async def on_connected(info: dict[str, Any]) -> None:
        await original(info)
        reconnected.set()

    connection._handle_connected = on_connected
    await connection._http_client.aclose()  # the stream breaks; hypha-rpc reconnects with its token
    connection._http_client = None
    await asyncio.wait_for(reconnected.wait(), 30)
    assert connection._workspace == workspace
    caller = await connect(router.url)

    async def callable_again() -> bool:
        try:
            svc = await caller.get_service(f"{workspace}/http-reconnecting:kept")
            return await svc.ping() == "pong"
        except Exception:
            return False

    await eventually(callable_again, timeout=20, interval=0.5)


async def test_callers_of_a_departed_http_client_are_told_at_once(router, connect) -> None:
    client = await connect(_http(router), transport="http")
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.sleep(3600)

    await client.register_service({"id": "slow", "config": {"visibility": "public"}, "hang": hang})
    caller = await connect(router.url, method_timeout=60)
    svc = await caller.get_service(f"{client.config.workspace}/slow")
    call = asyncio.ensure_future(svc.hang())
    await asyncio.wait_for(started.wait(), 10)
    begun = time.monotonic()
    await client.disconnect()
    with pytest.raises(Exception, match="not connected|disconnected|Connection|peer"):
        await asyncio.wait_for(call, 20)
    assert time.monotonic() - begun < 15  # well before the 60 s method timeout


async def test_the_stream_speaks_hypha_rpcs_framing(router, raw_stream) -> None:
    stream = await raw_stream({"client_id": "raw-http"})
    assert stream.response.status_code == 200
    assert stream.response.headers["content-type"] == "application/x-msgpack-stream"
    info = await stream.next()
    assert info["type"] == "connection_info" and info["client_id"] == "raw-http"
    assert info["manager_id"] == router.config.manager_id and info["reconnection_token"]
    workspace = info["workspace"]
    params = {"client_id": "raw-http", "workspace": workspace}
    # The stream's cookie lets the same client's POSTs in (httpx keeps it).
    assert any(name.startswith("rhizomorph-rpc-") for name in stream.client.cookies)

    post = await stream.client.post(f"{_http(router)}/rpc", params=params, content=msgpack.packb({"type": "ping"}))
    assert post.status_code == 200
    assert (await stream.next_of("pong"))["type"] == "pong"
    post = await stream.client.post(
        f"{_http(router)}/rpc", params=params, content=msgpack.packb({"type": "refresh_token"})
    )
    assert post.status_code == 200 and (await stream.next_of("reconnection_token"))["reconnection_token"]

    # An RPC message: a call to the manager, answered on the stream.
    call = msgpack.packb(
        {"type": "method", "to": f"*/{info['manager_id']}", "method": "services.default.echo", "session": "s1"}
    ) + msgpack.packb({"args": ["hi"], "promise": "*"})
    post = await stream.client.post(f"{_http(router)}/rpc", params=params, content=call)
    assert post.status_code == 200
    reply = await stream.next_of("method")
    assert reply["method"] == "s1.resolve" and reply["args"] == ["hi"]


@pytest.mark.slow
async def test_an_idle_stream_gets_pings(router, raw_stream) -> None:
    stream = await raw_stream({"client_id": "raw-idle"})
    await stream.next()
    assert (await stream.next(timeout=20))["type"] == "ping"  # every 10 s (STREAM_PING_INTERVAL)


async def test_posts_must_prove_the_streams_owner(router, connect, raw_stream) -> None:
    stream = await raw_stream({"client_id": "owned"})
    info = await stream.next()
    workspace, base = info["workspace"], _http(router)
    params = {"client_id": "owned", "workspace": workspace}
    echo = msgpack.packb(
        {"type": "method", "to": f"*/{info['manager_id']}", "method": "services.default.echo", "session": "x"}
    ) + msgpack.packb({"args": ["forged"], "promise": "*"})
    async with httpx.AsyncClient() as stranger:  # no cookie, no token
        refused = await stranger.post(f"{base}/rpc", params=params, content=echo)
        assert refused.status_code == 403 and "no right to the stream" in refused.json()["detail"]
        other = await connect(router.url)
        token = await other.generate_token()  # a real token, for another workspace
        refused = await stranger.post(
            f"{base}/rpc", params=params, content=echo, headers={"Authorization": f"Bearer {token}"}
        )
        assert refused.status_code == 403
        missing = await stranger.post(f"{base}/rpc", params={"client_id": "owned"}, content=echo)
        assert missing.status_code == 400
    with pytest.raises(TimeoutError):
        await stream.next_of("method", timeout=1.0)  # nothing was routed as "owned"
    ok = await stream.client.post(f"{base}/rpc", params=params, content=echo)
    assert ok.status_code == 200 and (await stream.next_of("method"))["args"] == ["forged"]


async def test_a_token_of_the_user_may_post_without_the_cookie(router, connect, raw_stream) -> None:
    owner = await connect(router.url)
    token = await owner.generate_token()
    workspace = owner.config.workspace
    stream = await raw_stream({"client_id": "tokened", "workspace": workspace}, {"Authorization": f"Bearer {token}"})
    info = await stream.next()
    assert info["workspace"] == workspace
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}) as cookieless:
        post = await cookieless.post(
            f"{_http(router)}/rpc",
            params={"client_id": "tokened", "workspace": workspace},
            content=msgpack.packb({"type": "ping"}),
        )
    assert post.status_code == 200
    await stream.next_of("pong")


async def test_refused_streams(router, connect, raw_stream) -> None:
    base = _http(router)
    owner = await connect(router.url)
    token = await owner.generate_token()
    workspace = owner.config.workspace
    stream = await raw_stream({"client_id": "unique", "workspace": workspace}, {"Authorization": f"Bearer {token}"})
    info = await stream.next()

    async def status(params: dict[str, str], headers: dict[str, str] | None = None) -> tuple[int, str]:
        async with httpx.AsyncClient() as client:
            answer = await client.get(f"{base}/rpc", params=params, headers=headers or {})
            return answer.status_code, answer.json()["detail"]

    assert await status({"client_id": "x"}, {"Authorization": "Bearer not-a-token"}) == (
        401,
        "invalid access token: Not enough segments",
    )
    code, detail = await status({"client_id": "x", "workspace": "someone-else"})
    assert (code, detail) == (403, "Workspace someone-else does not exist or is not accessible")
    code, detail = await status({"client_id": "bad/id"})
    assert code == 400
    # The live client's id, without its reconnection token: refused, as for a WebSocket.
    code, detail = await status({"client_id": "unique", "workspace": workspace}, {"Authorization": f"Bearer {token}"})
    assert (code, detail) == (409, "Client already exists and is active")
    code, _ = await status({"client_id": "other", "reconnection_token": info["reconnection_token"]})
    assert code == 401


async def test_posts_reach_the_stream_from_any_worker(router2, raw_stream) -> None:
    """Each POST on a new connection: the kernel spreads them over both workers, and the worker
    that does not hold the stream hands the message to the one that does."""
    base = _http(router2)
    stream = await raw_stream({"client_id": "spread"}, base=base)
    info = await stream.next()
    params = {"client_id": "spread", "workspace": info["workspace"]}
    received_by: set[str] = set()
    for _ in range(20):
        post = await stream.client.post(
            f"{base}/rpc", params=params, content=msgpack.packb({"type": "ping"}), headers={"Connection": "close"}
        )
        assert post.status_code == 200, post.text
        received_by.add(post.headers["x-rhizomorph-worker"])
        await stream.next_of("pong")
    assert info["rhizomorph_worker"] in received_by and len(received_by) == 2
