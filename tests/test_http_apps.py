"""Apps over HTTP (rhizomorph/gateway/http_apps.py): an ASGI app (FastAPI) registered with
hypha-rpc's ``register_asgi_service``, a ``functions`` service, and MCP over SSE served as an ASGI
app by ``hypha_rpc.utils.mcp.serve_mcp``, all reached at ``/{ws}/apps/{service_id}/...``.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from rhizomorph import Config, Deployment

CALL_TIMEOUT = 3.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(ray_runtime) -> Iterator[Deployment]:
    # A set port, not 0: MCP's SSE endpoint announces the URL of its message endpoint from the
    # router's public_base_url, which a worker started on port 0 does not know.
    deployment = Deployment(Config(port=_free_port(), workers=1, http_call_timeout=CALL_TIMEOUT)).start()
    yield deployment
    deployment.stop()


@pytest.fixture
def base(served) -> str:
    return served.url.replace("ws://", "http://")


def _app(release: asyncio.Event) -> Any:
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"message": "Hello, World!"}

    @app.get("/items/{item}")
    async def item(item: str, q: str = "") -> dict[str, str]:
        return {"item": item, "q": q}

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        return {"body": (await request.json()), "type": request.headers["content-type"]}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def parts():
            yield b"part-1;"
            await release.wait()  # the first part must reach the client before the second exists
            yield b"part-2;"

        return StreamingResponse(parts(), media_type="text/plain")

    return app


async def test_an_asgi_app_answers_and_streams(served, base, connect) -> None:
    from hypha_rpc.utils.serve import register_asgi_service

    server = await connect(served.url)
    release = asyncio.Event()
    await register_asgi_service(server, "fast", _app(release))
    url = f"{base}/{server.config.workspace}/apps/fast"
    async with httpx.AsyncClient() as http:
        redirect = await http.get(url)
        assert redirect.status_code == 307 and redirect.headers["location"].endswith("/apps/fast/")
        assert (await http.get(f"{url}/")).json() == {"message": "Hello, World!"}
        assert (await http.get(f"{url}/items/a%20b", params={"q": "x"})).json() == {"item": "a b", "q": "x"}
        posted = await http.post(f"{url}/echo", json={"k": [1, 2]})
        assert posted.json() == {"body": {"k": [1, 2]}, "type": "application/json"}
        assert (await http.get(f"{url}/nothing")).status_code == 404  # the app's own 404
        async with http.stream("GET", f"{url}/stream") as answer:
            seen = b""
            async for chunk in answer.aiter_bytes():
                seen += chunk
                if seen == b"part-1;":
                    release.set()
            assert seen == b"part-1;part-2;"
        missing = await http.get(f"{base}/{server.config.workspace}/apps/no-such-app/")
        assert missing.status_code == 404


async def test_an_app_that_never_answers_is_a_504(served, base, connect) -> None:
    server = await connect(served.url)

    async def silent(args: dict[str, Any], context: Any = None) -> None:
        await asyncio.sleep(3600)

    await server.register_service(
        {"id": "mute", "type": "asgi", "config": {"visibility": "public", "require_context": True}, "serve": silent}
    )
    begun = time.monotonic()
    async with httpx.AsyncClient(timeout=30) as http:
        answer = await http.get(f"{base}/{server.config.workspace}/apps/mute/")
    assert answer.status_code == 504
    assert CALL_TIMEOUT <= time.monotonic() - begun < CALL_TIMEOUT + 5


async def test_a_functions_service(served, base, connect) -> None:
    server = await connect(served.url)
    token = await server.generate_token()

    async def index(scope: dict[str, Any]) -> dict[str, Any]:
        return {"status": 200, "headers": {"Content-Type": "text/html"}, "body": "<h1>index</h1>"}

    async def hello(scope: dict[str, Any]) -> dict[str, Any]:
        return {
            "status": 201,
            "headers": {"Content-Type": "application/json", "X-Method": scope["method"]},
            "body": f'{{"query": "{scope["query_string"]}", "user": "{scope["user"]["id"]}", '
            f'"body": "{(scope["body"] or b"").decode()}"}}',
        }

    async def fallback(scope: dict[str, Any]) -> dict[str, Any]:
        return {"status": 200, "body": f"default for {scope['function_path']}"}

    await server.register_service(
        {
            "id": "site",
            "type": "functions",
            "config": {"visibility": "public"},
            "index": index,
            "api": {"hello": hello},
            "default": fallback,
        }
    )
    url = f"{base}/{server.config.workspace}/apps/site"
    async with httpx.AsyncClient() as http:
        page = await http.get(f"{url}/")
        assert (page.status_code, page.text) == (200, "<h1>index</h1>")
        assert page.headers["access-control-allow-origin"] == "*"
        answer = await http.post(
            f"{url}/api/hello?x=1", content=b"payload", headers={"Authorization": f"Bearer {token}"}
        )
        assert answer.status_code == 201 and answer.headers["x-method"] == "POST"
        assert answer.json() == {"query": "x=1", "user": server.config.user["id"], "body": "payload"}
        assert (await http.get(f"{url}/some/where")).text == "default for /some/where"


async def test_a_functions_service_without_a_match(served, base, connect) -> None:
    server = await connect(served.url)
    await server.register_service(
        {"id": "bare", "type": "functions", "config": {"visibility": "public"}, "only": lambda scope: {"body": "x"}}
    )
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{base}/{server.config.workspace}/apps/bare/other")
    assert (answer.status_code, answer.text) == (404, "Function not found: other")


async def test_an_app_of_another_type_is_refused(served, base, connect) -> None:
    server = await connect(served.url)
    await server.register_service({"id": "plain", "config": {"visibility": "public"}, "f": lambda: 1})
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{base}/{server.config.workspace}/apps/plain/")
    assert answer.status_code == 500 and "Invalid service type" in answer.text


# The MCP provider runs in a process of its own: hypha-rpc's serve_mcp enters the MCP app's
# lifespan and never leaves it, and the app's unclosed streams would be this process's warnings.
MCP_PROVIDER = """
import asyncio, sys
from hypha_rpc import connect_to_server
from hypha_rpc.utils.mcp import serve_mcp
from hypha_rpc.utils.schema import schema_function
from pydantic import Field

@schema_function
def add(a: int = Field(..., description="First"), b: int = Field(..., description="Second")) -> int:
    \"\"\"Adds two integers.\"\"\"
    return a + b

async def main():
    server = await connect_to_server({"server_url": sys.argv[1]})
    info = await server.register_service({"id": "calculator", "config": {"visibility": "public"}, "add": add})
    served = await serve_mcp(server, info.id)
    print(served["mcpServers"][next(iter(served["mcpServers"]))]["url"], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


@pytest.mark.slow
async def test_mcp_over_sse_through_an_asgi_app(served, base) -> None:
    pytest.importorskip("fastmcp")
    from fastmcp import Client

    provider = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MCP_PROVIDER, base, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert provider.stdout is not None
        url = (await asyncio.wait_for(provider.stdout.readline(), 60)).decode().strip()
        assert url.startswith(f"{base}/") and url.endswith("/sse")  # an SSE endpoint of an ASGI app
        async with Client({"mcpServers": {"calculator": {"url": url, "transport": "sse"}}}) as client:
            assert "add" in [tool.name for tool in await client.list_tools()]
            result = await client.call_tool("add", {"a": 7, "b": 3})
            assert result.content[0].text == "10"
    finally:
        provider.kill()
        await provider.wait()
