"""The listening side of a gateway worker: the shared port, WebSocket upgrades and plain HTTP.

Every worker of a node listens on the same port (SO_REUSEPORT: the kernel spreads connections
over them; the sockets come from ``rhizomorph/listening.py``, where the first worker of an
embedded ``serve`` takes over the socket the launcher bound before Ray started). Each accepted
connection starts at a ``FrontDoor`` (``http_server.py``): a WebSocket upgrade on any path
becomes a client connection (``connection.py``), anything else is HTTP/1.1 and goes to
``dispatch``:

    /health, /healthz          ok
    /metrics                   Prometheus text (``prometheus.py``)
    /rpc                       hypha-rpc's HTTP transport (``http_rpc.py``)
    /{ws}/services/...         Hypha's service API (``http_services.py``)
    /public/apps/hypha-login/  the login page of the identity provider (``login.py``)
    /{ws}/apps/{sid}/...       ASGI and functions apps (``http_apps.py``)
    anything else (GET)        the console, the examples and the JS client (``http.py``)
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any, cast

import websockets
from websockets.asyncio.server import Server

from rhizomorph.config import Config
from rhizomorph.gateway import connection, http, memory, prometheus
from rhizomorph.gateway.http_callers import Callers
from rhizomorph.gateway.http_rpc import HttpTransport
from rhizomorph.gateway.http_server import FrontDoor, HttpFront, HttpLimits, HttpRequest, Reply
from rhizomorph.gateway.http_services import HttpServices
from rhizomorph.gateway.login import LoginService
from rhizomorph.gateway.router import Router
from rhizomorph.listening import LISTEN_BACKLOG, reuseport_socket
from rhizomorph.protocol import login
from rhizomorph.protocol.http_api import Endpoint, api_route, cors_headers

__all__ = ["LISTEN_BACKLOG", "Listener", "dispatch", "reuseport_socket", "serve"]

#: Headers of the static answers that the HTTP connection sets itself.
_OWN_HEADERS = frozenset({"content-length", "connection", "date"})


class _StaticRequest:
    """What ``http.respond`` reads of a request."""

    def __init__(self, path: str) -> None:
        self.path = path


def dispatch(
    cluster_stats: Callable[[], Awaitable[list[dict[str, Any]]]],
    transport: HttpTransport,
    services: HttpServices,
    login_service: LoginService | None = None,
) -> Callable[[HttpRequest, Reply], Awaitable[None]]:
    """The plain-HTTP endpoints of the gateway port."""

    async def handle(request: HttpRequest, reply: Reply) -> None:
        path, method = request.path, request.method
        if method == "OPTIONS":  # a browser's CORS preflight
            headers = cors_headers(request.header("origin") or None, request.header("access-control-request-headers"))
            await reply.send(204, [*headers, ("Access-Control-Max-Age", "600")])
            return
        if path in ("/health", "/healthz"):
            await reply.send(200, [("Content-Type", "text/plain; charset=utf-8")], b"ok\n")
            return
        if path == "/metrics":
            body = prometheus.render(await cluster_stats())
            await reply.send(200, [("Content-Type", prometheus.CONTENT_TYPE)], body)
            return
        if path == "/rpc":
            if method == "GET":
                await transport.stream(request, reply)
            elif method == "POST":
                await transport.post(request, reply)
            else:
                await reply.send_error(405, f"{method} /rpc is not allowed", [("Allow", "GET, POST")])
            return
        route = api_route(path)
        if (
            login_service is not None
            and route is not None
            and route.endpoint is Endpoint.APP
            and (route.workspace, route.service_id) == (login.WORKSPACE, login.NAME)
        ):
            await login_service.handle_http(request, reply, route.path)
            return
        if route is not None:
            await services.handle(request, reply, route)
            return
        if method not in ("GET", "HEAD"):
            await reply.send_error(405, f"{method} is not allowed here", [("Allow", "GET, HEAD")])
            return
        target = path + (f"?{request.query}" if request.query else "")
        static = http.respond(cast(Any, _StaticRequest(target)))
        headers = [(k, v) for k, v in static.headers.raw_items() if k.lower() not in _OWN_HEADERS]
        await reply.send(static.status_code, headers, bytes(static.body))

    return handle


class Listener:
    """A worker's listening side: the WebSocket server and the HTTP endpoints beside it."""

    def __init__(self, websocket: Server, front: HttpFront, transport: HttpTransport, callers: Callers) -> None:
        self.websocket = websocket
        self.http = front
        self.transport = transport
        self.callers = callers

    def close(self) -> None:
        self.http.close()
        self.websocket.close()

    async def wait_closed(self) -> None:
        await self.websocket.wait_closed()
        await self.callers.close()


async def serve(config: Config, router: Router, sock: socket.socket) -> Listener:
    """Serve clients on ``sock`` (see ``reuseport_socket``) until the listener is closed."""
    callers = Callers(router, method_timeout=config.manager_call_timeout)
    transport = HttpTransport(router)
    services = HttpServices(callers, config.http_call_timeout, config.max_message_size)
    front = HttpFront(
        dispatch(router.cluster_stats, transport, services, router.manager.login),
        HttpLimits(max_body=config.max_message_size),
    )

    def create_connection(protocol: Any, server: Server, **options: Any) -> FrontDoor:
        def websocket() -> connection.RouterServerConnection:
            return connection.RouterServerConnection(protocol, server, **options)

        return FrontDoor(websocket, front.connection, config.handshake_timeout)

    websocket_server = await websockets.serve(
        lambda ws: connection.serve(ws, router),
        sock=sock,
        backlog=LISTEN_BACKLOG,  # asyncio listens again on the socket, with its own default (100)
        max_size=config.max_message_size,
        compression="deflate" if config.compression else None,
        # websockets builds every accepted connection through this: ours reads the request
        # head first and hands the socket to websockets only for an upgrade.
        create_connection=cast(Any, create_connection),
    )
    memory.FREE_LISTS.warm(asyncio.get_running_loop())  # before any wave (gateway/memory.py)
    return Listener(websocket_server, front, transport, callers)
