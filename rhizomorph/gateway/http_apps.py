"""Apps over HTTP: ``/{ws}/apps/{service_id}/{path}`` served by a service of type ``asgi`` or
``functions``, as in Hypha.

- ``asgi`` (``hypha_rpc.utils.serve.register_asgi_service``): the service's ``serve`` gets
  ``{"scope", "receive", "send"}``; ``receive`` and ``send`` are callbacks into the caller, so
  the app's ``http.response.start`` and ``http.response.body`` events become this response,
  streamed as they come (server-sent events, MCP over SSE). ``receive`` gives the whole request
  body once, then waits for the client to leave (``http.disconnect``).
- ``functions``: the function at ``path`` (nested by ``/``, else ``<path>/index``, else
  ``default``) is called with a scope dict (method, path, query string, headers, body, the
  caller's user) and returns ``{"status", "headers", "body"}``.

An app that has not started its answer within ``http_call_timeout`` gets 504; once started, a
response lasts as long as the app and the client both keep it. Errors are plain text, as
Hypha's are.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from rhizomorph.gateway.http_callers import Caller
from rhizomorph.gateway.http_server import HttpRequest, Reply
from rhizomorph.protocol.http_api import ApiRoute, cors_headers, error_detail, query_params, status_for_error

log = logging.getLogger("rhizomorph.http")

TEXT = [("Content-Type", "text/plain; charset=utf-8")]
#: Seconds an app may take to end after its client left (it is told ``http.disconnect``).
DISCONNECT_GRACE = 5.0


async def serve_app(caller: Caller, request: HttpRequest, reply: Reply, route: ApiRoute, timeout: float) -> None:
    mode = query_params(request.query).get("_mode") or None
    try:
        service = await asyncio.wait_for(
            caller.manager.get_service(f"{route.workspace}/{route.service_id}", {"mode": mode}), timeout
        )
    except TimeoutError:
        await reply.send(504, TEXT, f"the app did not answer within {timeout:g} s".encode())
        return
    except Exception as exc:
        await reply.send(status_for_error(str(exc)), TEXT, error_detail(exc).encode())
        return
    kind = service.get("type")
    if kind in ("asgi", "ASGI"):
        await _asgi(service, caller, request, reply, route, timeout)
    elif kind == "functions":
        await _functions(service, caller, request, reply, route, timeout)
    else:
        await reply.send(500, TEXT, f"Invalid service type: {kind}".encode())


def _scope(request: HttpRequest, route: ApiRoute) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version,
        "method": request.method,
        "scheme": "http",
        "path": route.path,
        "raw_path": route.raw_path.encode("latin-1"),
        "query_string": request.query.encode("latin-1"),
        "root_path": "",
        "headers": [[name, value] for name, value in request.raw_headers],
        "client": list(request.client) if request.client else None,
        "server": list(request.server) if request.server else None,
        "workspace": route.workspace,
        "service_id": route.service_id,
    }


async def _asgi(
    service: Any, caller: Caller, request: HttpRequest, reply: Reply, route: ApiRoute, timeout: float
) -> None:
    started = asyncio.get_running_loop().create_future()
    body_sent = False

    async def receive() -> dict[str, Any]:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": request.body, "more_body": False}
        # Nothing more comes from the client: wait until it leaves or the answer is complete.
        await asyncio.shield(reply.completed)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if reply.lost.done():
            return  # the client left: what the app still sends goes nowhere (as uvicorn does)
        kind = message.get("type")
        if kind == "http.response.start":
            headers = [(_text(name), _text(value)) for name, value in message.get("headers") or []]
            await reply.start(int(message.get("status", 200)), headers)
            if not started.done():
                started.set_result(None)
        elif kind == "http.response.body":
            if not reply.started:
                raise RuntimeError("http.response.body before http.response.start")
            await reply.write(_bytes(message.get("body") or b""))
            if not message.get("more_body", False):
                await reply.end()

    serving = asyncio.ensure_future(service.serve({"scope": _scope(request, route), "receive": receive, "send": send}))
    try:
        await asyncio.wait({serving, started}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not started.done() and not serving.done():
            serving.cancel()
            await reply.send(504, TEXT, f"the app did not answer within {timeout:g} s".encode())
            return
        await asyncio.wait({serving, reply.lost}, return_when=asyncio.FIRST_COMPLETED)
        if not serving.done():
            # The client left: the app hears http.disconnect from receive() and may end itself.
            await asyncio.wait({serving}, timeout=DISCONNECT_GRACE)
            return
        exc = serving.exception()
        if exc is not None and not reply.started:
            await reply.send(status_for_error(str(exc)), TEXT, f"Internal Server Error: {error_detail(exc)}".encode())
            return
        if exc is not None:
            log.info("ASGI app %s failed mid-answer: %s", route.service_id, exc)
        if not reply.started:
            await reply.send(500, TEXT, b"the app sent no response")
    finally:
        if not serving.done():
            serving.cancel()


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, (bytes, bytearray)) else str(value)


def _bytes(value: Any) -> bytes:
    return value.encode() if isinstance(value, str) else bytes(value)


def _find(service: Any, parts: list[str]) -> Any:
    current = service
    for part in parts:
        if isinstance(current, dict) and part in current:
            current = current[part]
        else:
            return None
    return current if callable(current) else None


async def _functions(
    service: Any, caller: Caller, request: HttpRequest, reply: Reply, route: ApiRoute, timeout: float
) -> None:
    path = route.path.strip("/") or "index"
    parts = path.split("/")
    scope: dict[str, Any] = {
        "type": "http",
        "method": request.method,
        "path": route.path,
        "raw_path": route.raw_path,
        "query_string": request.query,
        "headers": dict(request.headers),
        "body": request.body or None,
        "user": caller.identity.user_info(),
        "workspace": route.workspace,
        "service_id": route.service_id,
    }
    function = _find(service, parts) or (_find(service, [*parts, "index"]) if len(parts) > 1 else None)
    if function is None and callable(service.get("default")):
        function = service["default"]
        scope["function_path"] = "/" + path if path != "index" else "/"
    if function is None:
        await reply.send(404, TEXT, f"Function not found: {path}".encode())
        return
    try:
        result = await asyncio.wait_for(function(scope), timeout)
    except TimeoutError:
        await reply.send(504, TEXT, f"the function did not answer within {timeout:g} s".encode())
        return
    except Exception as exc:
        await reply.send(500, TEXT, f"Internal Server Error: {error_detail(exc)}".encode())
        return
    result = result if isinstance(result, dict) else {"body": result}
    headers = {str(k): str(v) for k, v in (result.get("headers") or {}).items()}
    for name, value in cors_headers(request.header("origin") or None):
        headers[name] = value
    body = result.get("body")
    status = result.get("status", 200)
    if not isinstance(status, int):
        await reply.send(500, TEXT, b"Internal Server Error: the function's status is not an integer")
        return
    payload = b"" if body is None else _bytes(body)
    await reply.send(status, [(k, v) for k, v in headers.items() if k.lower() != "content-length"], payload)
