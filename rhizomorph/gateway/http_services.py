"""Hypha's HTTP API for services: list, describe and call them with plain HTTP.

- ``GET /{ws}/services/``: the services of ``ws`` the caller may see (ids without the workspace);
- ``GET /{ws}/services/{sid}``: one service's info;
- ``GET|POST /{ws}/services/{sid}/{function}``: call ``function`` (a dotted path for nested
  ones). GET takes keyword arguments from the query; POST a JSON or msgpack body (an object:
  keyword arguments, an array: positional ones). The result is JSON, or msgpack when the
  request body was msgpack (or ``Accept`` asks for it only). A generator's items stream as
  server-sent events (JSON, ending with ``data: [DONE]``) or as concatenated msgpack objects.

Each request is carried out by a caller of ``rhizomorph/gateway/http_callers.py`` through the
router. Errors are ``{"success": false, "detail": ...}`` with the status Hypha gives them
(``rhizomorph/protocol/http_api.py: status_for_error``); a call that takes longer than
``http_call_timeout`` is 504. ``/{ws}/apps/...`` is ``rhizomorph/gateway/http_apps.py``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import TYPE_CHECKING, Any

import msgpack

from rhizomorph.gateway import http_apps
from rhizomorph.gateway.http_callers import Caller, Callers, _keep_exception_handler
from rhizomorph.gateway.http_server import ClientGone, HttpRequest, Reply
from rhizomorph.protocol.handshake import HandshakeError
from rhizomorph.protocol.http_api import (
    JSON,
    MSGPACK,
    SSE_CONTENT_TYPE,
    SSE_DONE,
    ApiRoute,
    BadRequest,
    Endpoint,
    bearer_token,
    body_arguments,
    cors_headers,
    decoded_body,
    error_detail,
    json_bytes,
    query_arguments,
    query_params,
    sse_event,
    status_for_error,
    wants_msgpack,
)

if TYPE_CHECKING:
    from hypha_rpc.rpc import RPC

log = logging.getLogger("rhizomorph.http")

_codec: RPC | None = None


def codec() -> RPC:
    """An RPC without a connection, to turn HTTP values into hypha-rpc's and back (numpy
    arrays travel as ``{"_rtype": "ndarray", ...}``), as Hypha does."""
    global _codec
    if _codec is None:
        from hypha_rpc.rpc import RPC  # on first use, as in http_callers.py

        loop = asyncio.get_running_loop()
        with _keep_exception_handler(loop):
            _codec = RPC(None, client_id="http-codec", silent=True, loop=loop)
    return _codec


def serialize(value: Any) -> Any:
    """A service or value for display: functions become ``{"type": "function", ...}``."""
    if value is None or isinstance(value, (int, float, str, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): serialize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [serialize(v) for v in value]
    if callable(value):
        schema = getattr(value, "__schema__", None)
        if schema is not None:
            return {"type": "function", "function": schema}
        return {"type": "function", "function": {"name": getattr(value, "__name__", "function")}}
    if isinstance(value, bytes):
        return {"_rtype": "bytes", "size": len(value)}
    return str(value)


def caller_refusal(exc: HandshakeError) -> int:
    if getattr(exc, "close_code", None) == 1013:
        return 503
    message = str(exc)
    denied = message.startswith("Permission denied") or message.endswith("does not exist or is not accessible")
    return 403 if denied or "bound to another client" in message else 401


def lookup(service: Any, key: str) -> Any:
    """``a.b.c`` inside a service, or ``None``."""
    value = service
    for part in key.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
        if value is None:
            return None
    return value


class HttpServices:
    def __init__(self, callers: Callers, call_timeout: float, max_body: int) -> None:
        self._callers = callers
        self._timeout = call_timeout
        self._max_body = max_body

    async def handle(self, request: HttpRequest, reply: Reply, route: ApiRoute) -> None:
        cors = cors_headers(request.header("origin") or None)
        endpoint = route.endpoint
        if endpoint is Endpoint.SERVICES_REDIRECT:
            await reply.send(307, [("Location", request.path + "/"), *cors])
            return
        if endpoint is Endpoint.APP_REDIRECT:
            query = f"?{request.query}" if request.query else ""
            await reply.send(307, [("Location", request.path + "/" + query), *cors])
            return
        if request.method not in ("GET", "HEAD") and endpoint is not Endpoint.CALL and endpoint is not Endpoint.APP:
            await reply.send_error(405, f"{request.method} is not allowed here", cors)
            return
        token = bearer_token(request.header("authorization"), request.header("cookie"))
        try:
            async with self._callers.use(token, route.workspace) as caller:
                if endpoint is Endpoint.APP:
                    await http_apps.serve_app(caller, request, reply, route, self._timeout)
                else:
                    await self._api(caller, request, reply, route, cors)
        except HandshakeError as exc:
            if not reply.started:
                await reply.send_error(caller_refusal(exc), str(exc), cors)

    async def _api(self, caller: Caller, request: HttpRequest, reply: Reply, route: ApiRoute, cors: list) -> None:
        mode = query_params(request.query).get("_mode") or None
        manager = caller.manager
        try:
            if route.endpoint is Endpoint.SERVICES:
                services = await asyncio.wait_for(manager.list_services({"workspace": route.workspace}), self._timeout)
                listed = serialize(services)
                for info in listed:
                    info["id"] = str(info.get("id", "")).split("/")[-1]
                await self._json(reply, 200, listed, cors)
                return
            if route.endpoint is Endpoint.SERVICE_INFO:
                if route.service_id == "ws":
                    await self._json(reply, 200, serialize(dict(manager)), cors)
                    return
                info = await asyncio.wait_for(
                    manager.get_service_info(f"{route.workspace}/{route.service_id}", {"mode": mode}), self._timeout
                )
                await self._json(reply, 200, serialize(info), cors)
                return
            await self._call(caller, request, reply, route, mode, cors)
        except BadRequest as exc:
            await reply.send_error(400, str(exc), cors)
        except TimeoutError:
            await reply.send_error(504, f"the service did not answer within {self._timeout:g} s", cors)
        except ClientGone:
            raise
        except Exception as exc:
            if reply.started:
                raise
            status = status_for_error(str(exc))
            if route.endpoint is not Endpoint.CALL and status == 500:
                status = 404  # as Hypha: a listing or info that fails is "not found"
            await reply.send_error(status, error_detail(exc), cors)

    async def _call(
        self, caller: Caller, request: HttpRequest, reply: Reply, route: ApiRoute, mode: str | None, cors: list
    ) -> None:
        content_type = request.header("content-type")
        args: list[Any]
        if request.method in ("GET", "HEAD"):
            args, kwargs = [], query_arguments(request.query)
        elif request.method == "POST":
            body = decoded_body(request.body, request.header("content-encoding"), self._max_body)
            args, kwargs = body_arguments(body, content_type)
        else:
            await reply.send_error(405, f"{request.method} is not allowed here", cors)
            return
        use_msgpack = wants_msgpack(content_type, request.header("accept"))
        if route.service_id == "ws":
            service = caller.manager
        else:
            service = await asyncio.wait_for(
                caller.manager.get_service(f"{route.workspace}/{route.service_id}", {"mode": mode}), self._timeout
            )
        function = lookup(service, route.function)
        if function is None:
            await reply.send_error(404, f"{route.function} not found.", cors)
            return
        if not callable(function):
            await self._json(reply, 200, serialize(function), cors)
            return
        rpc = codec()
        result = function(*rpc.decode(args), **rpc.decode(kwargs))
        if inspect.isawaitable(result):
            result = await asyncio.wait_for(result, self._timeout)
        if inspect.isasyncgen(result) or inspect.isgenerator(result):
            await self._stream(reply, result, use_msgpack, cors)
            return
        value = rpc.encode(result)
        if use_msgpack:
            await reply.send(200, [("Content-Type", MSGPACK), *cors], msgpack.packb(value, use_bin_type=True))
        else:
            await self._json(reply, 200, value, cors)

    async def _json(self, reply: Reply, status: int, value: Any, cors: list) -> None:
        try:
            body = json_bytes(value)
        except (TypeError, ValueError) as exc:
            await reply.send_error(500, f"the result is not JSON ({exc}); ask for application/msgpack", cors)
            return
        await reply.send(status, [("Content-Type", JSON), *cors], body)

    async def _stream(self, reply: Reply, items: Any, use_msgpack: bool, cors: list) -> None:
        """A generator's items as they come: msgpack objects, or server-sent events."""
        rpc = codec()
        content_type = MSGPACK if use_msgpack else SSE_CONTENT_TYPE
        await reply.start(200, [("Content-Type", content_type), ("Cache-Control", "no-cache"), *cors])
        try:
            while True:
                try:
                    if inspect.isasyncgen(items):
                        item = await asyncio.wait_for(items.__anext__(), self._timeout)
                    else:
                        item = next(items)
                except (StopAsyncIteration, StopIteration):
                    break
                value = rpc.encode(item)
                await reply.write(msgpack.packb(value, use_bin_type=True) if use_msgpack else sse_event(value))
        except ClientGone:
            raise
        except Exception as exc:  # the items so far are sent: the error is the last item
            log.info("HTTP stream of a generator failed: %s", exc)
            error = {"error": error_detail(exc)}
            await reply.write(msgpack.packb(error) if use_msgpack else sse_event(error))
        finally:
            if inspect.isasyncgen(items):
                await _close_quietly(items)
        if not use_msgpack:
            await reply.write(SSE_DONE)
        await reply.end()


async def _close_quietly(items: Any) -> None:
    try:
        await asyncio.wait_for(items.aclose(), 5)
    except Exception:
        pass
