"""Hypha's HTTP API for services against the router (rhizomorph/gateway/http_services.py): calls
with JSON and msgpack bodies, bearer tokens, generators as streams, listings, probes, and the
statuses of what goes wrong. Providers are released hypha-rpc clients; requests are httpx on
127.0.0.1.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from rhizomorph import Config, Deployment

CALL_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def served(ray_runtime) -> Iterator[Deployment]:
    """A router whose HTTP calls give up after CALL_TIMEOUT seconds."""
    deployment = Deployment(Config(port=0, workers=1, http_call_timeout=CALL_TIMEOUT)).start()
    yield deployment
    deployment.stop()


@pytest.fixture
def base(served) -> str:
    return served.url.replace("ws://", "http://")


@pytest.fixture
async def provider(served, connect) -> Any:
    server = await connect(served.url)
    release = asyncio.Event()

    async def counter(n: int):
        for i in range(n):
            yield {"i": i}
            if i == 0:
                await release.wait()  # the first item must reach the HTTP client before the rest exist

    async def hang() -> None:
        await asyncio.sleep(3600)

    def fail(kind: str) -> None:
        raise {"value": ValueError, "key": KeyError, "permission": PermissionError}[kind](f"{kind} failed")

    await server.register_service(
        {
            "id": "calc",
            "name": "Calculator",
            "description": "adds things",
            "config": {"visibility": "public", "require_context": True},
            "echo": lambda data=None, context=None: data,
            "add": lambda a, b, context=None: a + b,
            "whoami": lambda context=None: {
                "from": context["from"],
                "user": context["user"]["id"],
                "ws": context["ws"],
            },
            "nested": {"deep": lambda x, context=None: x * 3},
            "version": "1.2.3",
            "counter": lambda n=3, context=None: counter(n),
            "hang": lambda context=None: hang(),
            "fail": lambda kind, context=None: fail(kind),
            "blob": lambda size, context=None: b"\xab" * size,
        }
    )
    await server.register_service({"id": "private", "config": {"visibility": "protected"}, "secret": lambda: "s3cret"})
    server.release_counter = release
    return server


async def test_calls_with_query_json_msgpack_and_gzip(provider, base) -> None:
    ws = provider.config.workspace
    url = f"{base}/{ws}/services/calc"
    async with httpx.AsyncClient() as http:
        assert (await http.get(f"{url}/echo", params={"data": "3345"})).json() == 3345
        assert (await http.get(f"{url}/echo", params={"data": "abc"})).json() == "abc"
        assert (await http.post(f"{url}/add", json={"a": 1, "b": 2})).json() == 3
        assert (await http.post(f"{url}/add", json=[40, 2])).json() == 42
        assert (await http.post(f"{url}/echo", json="solo")).json() == "solo"
        assert (await http.post(f"{url}/nested.deep", json={"x": 5})).json() == 15
        assert (await http.get(f"{url}/version")).json() == "1.2.3"  # a value, not a function
        answer = await http.post(
            f"{url}/echo", content=msgpack.packb({"data": b"\x00\x01"}), headers={"Content-Type": "application/msgpack"}
        )
        assert answer.headers["content-type"] == "application/msgpack"
        assert msgpack.unpackb(answer.content) == b"\x00\x01"
        array = np.random.rand(3, 10).astype("float32")
        encoded = {"_rtype": "ndarray", "_rvalue": array.tobytes(), "_rshape": array.shape, "_rdtype": "float32"}
        answer = await http.post(
            f"{url}/echo",
            content=gzip.compress(msgpack.packb({"data": encoded})),
            headers={"Content-Type": "application/msgpack", "Content-Encoding": "gzip"},
        )
        result = msgpack.unpackb(answer.content)
        assert result["_rtype"] == "ndarray"
        assert np.array_equal(np.frombuffer(result["_rvalue"], dtype="float32").reshape(result["_rshape"]), array)
        big = await http.post(f"{url}/blob", json={"size": 2_000_000}, headers={"Accept": "application/msgpack"})
        assert msgpack.unpackb(big.content) == b"\xab" * 2_000_000  # through hypha-rpc's message_cache
        cors = await http.post(f"{url}/add", json=[1, 1], headers={"Origin": "http://localhost:3000"})
        assert cors.headers["access-control-allow-origin"] == "http://localhost:3000"


async def test_the_caller_is_the_tokens_user_or_an_anonymous_one(provider, base, connect) -> None:
    ws = provider.config.workspace
    token = await provider.generate_token()
    async with httpx.AsyncClient() as http:
        anonymous = (await http.get(f"{base}/{ws}/services/calc/whoami")).json()
        again = (await http.get(f"{base}/{ws}/services/calc/whoami")).json()
        assert anonymous["ws"].startswith("ws-user-anonymouz-") and anonymous["ws"] != ws
        assert again == anonymous  # one anonymous caller per worker, kept while in use
        assert anonymous["from"].split("/", 1)[1].startswith("http-")
        authed = await http.get(f"{base}/{ws}/services/calc/whoami", headers={"Authorization": f"Bearer {token}"})
        assert authed.json()["ws"] == ws and authed.json()["user"] == provider.config.user["id"]
        cookie = await http.get(f"{base}/{ws}/services/calc/whoami", headers={"Cookie": f"access_token={token}"})
        assert cookie.json() == authed.json()  # the same token, the same caller
        # A protected service: its workspace only.
        hidden = await http.get(f"{base}/{ws}/services/private/secret")
        assert hidden.status_code in (403, 404) and hidden.json()["success"] is False
        shown = await http.get(f"{base}/{ws}/services/private/secret", headers={"Authorization": f"Bearer {token}"})
        assert (shown.status_code, shown.json()) == (200, "s3cret")
        bad = await http.get(f"{base}/{ws}/services/calc/whoami", headers={"Authorization": "Bearer nonsense"})
        assert bad.status_code == 401
        outsider = await connect(base.replace("http://", "ws://"))
        foreign = await outsider.generate_token()  # admin of another workspace only
        other = await http.get(f"{base}/{ws}/services/private/secret", headers={"Authorization": f"Bearer {foreign}"})
        assert other.status_code in (403, 404)


async def test_generators_stream_as_events_or_msgpack(provider, base) -> None:
    url = f"{base}/{provider.config.workspace}/services/calc/counter"
    async with httpx.AsyncClient() as http:
        async with http.stream("GET", url, params={"n": 3}) as answer:
            assert answer.headers["content-type"].startswith("text/event-stream")
            seen = ""
            async for text in answer.aiter_text():
                seen += text
                if "data: " in seen and not provider.release_counter.is_set():
                    assert json.loads(seen.split("data: ", 1)[1].split("\n")[0]) == {"i": 0}
                    provider.release_counter.set()  # only now are the other items made
            assert seen.strip().split("\n\n") == ['data: {"i":0}', 'data: {"i":1}', 'data: {"i":2}', "data: [DONE]"]
        provider.release_counter.set()
        answer = await http.post(url, content=msgpack.packb({"n": 2}), headers={"Content-Type": "application/msgpack"})
        unpacker = msgpack.Unpacker()
        unpacker.feed(answer.content)
        assert list(unpacker) == [{"i": 0}, {"i": 1}]


async def test_listing_info_and_probes(provider, base, connect) -> None:
    ws = provider.config.workspace
    async with httpx.AsyncClient() as http:
        listed = (await http.get(f"{base}/{ws}/services/")).json()
        ids = [s["id"] for s in listed]
        assert f"{provider.config.client_id}:calc" in ids and all("/" not in i for i in ids)
        redirect = await http.get(f"{base}/{ws}/services")
        assert redirect.status_code == 307 and redirect.headers["location"] == f"/{ws}/services/"
        info = (await http.get(f"{base}/{ws}/services/calc")).json()
        assert info["name"] == "Calculator" and info["description"] == "adds things"
        missing = await http.get(f"{base}/{ws}/services/nothing-here")
        assert missing.status_code == 404 and missing.json()["success"] is False

        await provider.register_probes({"readiness": lambda: True, "liveness": lambda: {"ok": 1}})
        ready = await http.get(f"{base}/{ws}/services/probes/readiness")
        assert (ready.status_code, ready.json()) == (200, True)
        assert (await http.get(f"{base}/{ws}/services/probes/liveness")).json() == {"ok": 1}


async def test_errors_have_hyphas_statuses(provider, base) -> None:
    url = f"{base}/{provider.config.workspace}/services/calc"
    async with httpx.AsyncClient() as http:
        for kind, status in [("value", 400), ("key", 404), ("permission", 403)]:
            answer = await http.post(f"{url}/fail", json={"kind": kind})
            assert answer.status_code == status, answer.text
            assert answer.json()["success"] is False and f"{kind} failed" in answer.json()["detail"]
            assert "Traceback" not in answer.json()["detail"]
        missing = await http.get(f"{url}/nope")
        assert (missing.status_code, missing.json()["detail"]) == (404, "nope not found.")
        assert (
            await http.post(f"{url}/add", content=b"{", headers={"Content-Type": "application/json"})
        ).status_code == 400
        assert (await http.post(f"{url}/add", content=b"1", headers={"Content-Type": "text/csv"})).status_code == 400
        assert (await http.put(f"{url}/add")).status_code == 405
        assert (await http.post(f"{url}/add", json={"a": 1})).status_code == 400  # a missing argument: TypeError
        unjson = await http.post(f"{url}/blob", json={"size": 3})
        assert unjson.status_code == 500 and "application/msgpack" in unjson.json()["detail"]


async def test_a_provider_that_never_answers_is_a_504(provider, base) -> None:
    begun = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.get(f"{base}/{provider.config.workspace}/services/calc/hang")
    took = time.monotonic() - begun
    assert answer.status_code == 504 and "did not answer" in answer.json()["detail"]
    assert CALL_TIMEOUT <= took < CALL_TIMEOUT + 5


async def test_a_provider_that_leaves_mid_call_is_a_502(served, base, connect) -> None:
    leaving = await connect(served.url)
    started = asyncio.Event()

    async def wait_forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    await leaving.register_service({"id": "gone", "config": {"visibility": "public"}, "wait": wait_forever})
    url = f"{base}/{leaving.config.workspace}/services/gone/wait"
    async with httpx.AsyncClient(timeout=30) as http:
        call = asyncio.ensure_future(http.get(url))
        await asyncio.wait_for(started.wait(), 10)
        await leaving.disconnect()
        answer = await call
    assert answer.status_code == 502 and "disconnected" in answer.json()["detail"], answer.text


async def test_a_browsers_preflight_is_answered(base) -> None:
    async with httpx.AsyncClient() as http:
        answer = await http.options(
            f"{base}/ws/services/calc/add",
            headers={
                "Origin": "http://localhost:3000",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-extra",
            },
        )
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert answer.headers["access-control-allow-headers"] == "authorization,content-type,x-extra"
    assert "POST" in answer.headers["access-control-allow-methods"]
