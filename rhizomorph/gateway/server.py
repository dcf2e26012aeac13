"""The listening side of a gateway worker: the shared port, WebSocket upgrades and plain HTTP.

Every worker of a node listens on the same port (SO_REUSEPORT: the kernel spreads connections
over them). A WebSocket upgrade on any path becomes a client connection
(``rhizomorph/gateway/connection.py``); other HTTP requests get health, metrics or a static page
(``rhizomorph/gateway/http.py``).
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import websockets
from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Request, Response

from rhizomorph.config import Config
from rhizomorph.gateway import connection, http, prometheus
from rhizomorph.gateway.router import Router


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``(host, port)`` that other workers of the node share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # accepted sockets inherit it. Without it Nagle and delayed ACKs hold the tail of a burst.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def http_handler(
    cluster_stats: Callable[[], Awaitable[list[dict[str, Any]]]],
) -> Callable[[ServerConnection, Request], Awaitable[Response | None]]:
    """Plain HTTP on the gateway port: health, metrics, and static pages; WebSocket upgrades go
    through on any path."""

    async def handle(conn: ServerConnection, request: Request) -> Response | None:
        if "upgrade" in request.headers.get("Connection", "").lower():
            return None
        path = request.path.split("?", 1)[0]
        if path in ("/health", "/healthz"):
            return conn.respond(HTTPStatus.OK, "ok\n")
        if path == "/metrics":
            body = prometheus.render(await cluster_stats())
            return http.response(HTTPStatus.OK, body, prometheus.CONTENT_TYPE)
        return http.respond(request)  # the console, the examples and the JS client

    return handle


async def serve(config: Config, router: Router, sock: socket.socket) -> Server:
    """Serve clients on ``sock`` (see ``reuseport_socket``) until the server is closed."""
    return await websockets.serve(
        lambda ws: connection.serve(ws, router),
        sock=sock,
        max_size=config.max_message_size,
        compression="deflate" if config.compression else None,
        process_request=http_handler(router.cluster_stats),
        create_connection=connection.RouterServerConnection,
    )
