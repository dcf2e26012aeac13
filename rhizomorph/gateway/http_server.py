"""Plain HTTP/1.1 on the gateway port, beside the WebSocket upgrades.

Every accepted connection starts at a ``FrontDoor``: it reads the request head and hands the
socket to websockets (an upgrade, ``rhizomorph/gateway/connection.py``) or to an
``HttpConnection`` (anything else). The HTTP side parses with h11 (sans-I/O), keeps connections
alive between requests, reads whole request bodies (bounded), and answers either at once or as a
stream (chunked): the downstream of hypha-rpc's HTTP transport, generator results, ASGI apps.
Routing lives in ``rhizomorph/gateway/server.py``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import h11

from rhizomorph.protocol.http_api import MAX_HEAD, error_body, head_end, is_websocket_upgrade

log = logging.getLogger("rhizomorph.http")

#: Bytes a client may send ahead (pipelined) while its request is being answered.
MAX_AHEAD = 1024 * 1024
#: Seconds a handler may go on after its client left before it is cancelled.
LOST_GRACE = 10.0


class ClientGone(ConnectionResetError):
    """The HTTP client went away: its response cannot be written."""


@dataclass(frozen=True, slots=True)
class HttpLimits:
    #: Largest request body, bytes (the gateway's ``max_message_size``).
    max_body: int
    #: Seconds a request may take to arrive (head and body) once its first byte did.
    request_timeout: float = 30.0
    #: Seconds an idle kept-alive connection stays open.
    keepalive_timeout: float = 60.0


@dataclass(slots=True)
class HttpRequest:
    method: str
    #: The path as sent (percent-encoded), without the query.
    path: str
    query: str
    #: Header names lower-case; repeated headers joined (cookies with "; ").
    headers: dict[str, str]
    raw_headers: list[tuple[bytes, bytes]]
    body: bytes = b""
    http_version: str = "1.1"
    client: tuple[str, int] | None = None
    server: tuple[str, int] | None = None
    #: The connection's socket (for options on long streams); ``None`` in tests.
    transport: asyncio.Transport | None = field(default=None, repr=False)

    def header(self, name: str) -> str:
        return self.headers.get(name, "")


Handler = Callable[[HttpRequest, "Reply"], Awaitable[None]]


class Reply:
    """One response: ``send`` a whole one, or ``start``, ``write`` chunks and ``end``.
    ``lost`` completes when the client goes away (a streaming answer stops then)."""

    def __init__(self, conn: HttpConnection, head_only: bool = False) -> None:
        self._conn = conn
        self._head_only = head_only
        self.started = False
        self.finished = False
        self.status = 0
        self.lost: asyncio.Future[None] = conn.lost
        #: Done once the whole response is written (or the client went away).
        self.completed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        conn.lost.add_done_callback(lambda _: self._complete())

    def _complete(self) -> None:
        if not self.completed.done():
            self.completed.set_result(None)

    async def send(self, status: int, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        await self.start(status, [*headers, ("Content-Length", str(len(body)))])
        if body:
            await self.write(body)
        await self.end()

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        if self.started:
            raise RuntimeError("the response has started")
        self.started, self.status = True, status
        date = ("Date", email.utils.formatdate(usegmt=True))
        self._conn.write_event(h11.Response(status_code=status, headers=[date, *headers]))

    async def write(self, data: bytes) -> None:
        """Write a chunk and wait until the socket takes it (the client's pace)."""
        self.write_nowait(data)
        await self._conn.drain()

    def write_nowait(self, data: bytes) -> None:
        if self.lost.done():
            raise ClientGone("the client went away")
        if data and not self._head_only:
            self._conn.write_event(h11.Data(data=data))

    async def drained(self) -> None:
        """Wait until the socket's write buffer is below its limit again."""
        await self._conn.drain()

    async def end(self) -> None:
        if not self.finished:
            self.finished = True
            self._conn.write_event(h11.EndOfMessage())
            self._complete()

    async def send_error(self, status: int, detail: str, headers: list[tuple[str, str]] | None = None) -> None:
        """Hypha's error body: ``{"success": false, "detail": ...}``."""
        await self.send(status, [("Content-Type", "application/json"), *(headers or [])], error_body(detail))


class HttpConnection(asyncio.Protocol):
    """One HTTP/1.1 connection: requests in turn, each answered by the handler."""

    def __init__(self, handler: Handler, limits: HttpLimits, on_close: Callable[[HttpConnection], None]) -> None:
        self._handler = handler
        self._limits = limits
        self._on_close = on_close
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self._transport: asyncio.Transport | None = None
        self._request: h11.Request | None = None
        self._body: list[bytes] = []
        self._body_size = 0
        self._busy = False  # a request is being answered
        self._ahead = 0
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._idle = False
        self._paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not derive from asyncio's.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        self._arm(self._limits.request_timeout)

    def data_received(self, data: bytes) -> None:
        if self._busy:
            self._ahead += len(data)
            if self._ahead > MAX_AHEAD:
                self.close()
                return
        elif self._idle:  # the first bytes of the next request on a kept-alive connection
            self._idle = False
            self._arm(self._limits.request_timeout)
        try:
            self._h11.receive_data(data)
        except RuntimeError:  # data after the connection was closed by h11
            self.close()
            return
        self._pump()

    def eof_received(self) -> bool:
        # A client that half-closes is gone for our purposes; the transport closes.
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if not self.lost.done():
            self.lost.set_result(None)
        if self._task is not None and not self._task.done():
            # The handler sees ``lost`` and ends (an ASGI app is told ``http.disconnect`` first);
            # one that does not is cancelled after a while.
            asyncio.get_running_loop().call_later(LOST_GRACE, self._task.cancel)
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_exception(ClientGone("the client went away"))
        self._on_close(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        for waiter in self._drain_waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._drain_waiters.clear()

    # -- writing ---------------------------------------------------------------------------------
    def write_event(self, event: Any) -> None:
        if self._transport is None or self._transport.is_closing():
            raise ClientGone("the client went away")
        data = self._h11.send(event)
        if data:
            self._transport.write(data)

    async def drain(self) -> None:
        if self._paused and not self.lost.done():
            waiter = asyncio.get_running_loop().create_future()
            self._drain_waiters.append(waiter)
            await waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    # -- reading ---------------------------------------------------------------------------------
    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self.close)

    def _pump(self) -> None:
        while not self._busy:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._refuse(exc.error_status_hint, f"bad request: {exc}")
                return
            if event is h11.NEED_DATA:
                if self._request is not None and self._h11.they_are_waiting_for_100_continue:
                    self.write_event(h11.InformationalResponse(status_code=100, headers=[]))
                return
            if event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request, self._body, self._body_size = event, [], 0
                declared = _content_length(event)
                if declared is not None and declared > self._limits.max_body:
                    self._refuse(413, f"the body is larger than {self._limits.max_body} bytes")
                    return
            elif isinstance(event, h11.Data):
                self._body_size += len(event.data)
                if self._body_size > self._limits.max_body:
                    self._refuse(413, f"the body is larger than {self._limits.max_body} bytes")
                    return
                self._body.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._start_handler()
            elif isinstance(event, h11.ConnectionClosed):
                self.close()
                return

    def _refuse(self, status: int, detail: str) -> None:
        """Answer a request that cannot be read, then close (its framing cannot be trusted)."""
        body = error_body(detail)
        try:
            if self._h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
                self.write_event(h11.Response(status_code=status, headers=[*headers, ("Connection", "close")]))
                self.write_event(h11.Data(data=body))
                self.write_event(h11.EndOfMessage())
        except (h11.LocalProtocolError, ClientGone):
            pass
        self.close()

    def _start_handler(self) -> None:
        request = self._request
        assert request is not None and self._transport is not None
        if self._timer is not None:
            self._timer.cancel()
        self._busy, self._ahead = True, 0
        target = request.target.decode("latin-1")
        path, _, query = target.partition("?")
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            if key in headers:
                headers[key] += ("; " if key == "cookie" else ", ") + text
            else:
                headers[key] = text
        transport = self._transport
        http_request = HttpRequest(
            method=request.method.decode("ascii"),
            path=path,
            query=query,
            headers=headers,
            raw_headers=[(bytes(n), bytes(v)) for n, v in request.headers],  # names lower-case, as ASGI wants
            body=b"".join(self._body),
            http_version=request.http_version.decode("ascii"),
            client=_address(transport.get_extra_info("peername")),
            server=_address(transport.get_extra_info("sockname")),
            transport=transport,
        )
        self._body = []
        self._task = asyncio.get_running_loop().create_task(self._run(http_request))

    async def _run(self, request: HttpRequest) -> None:
        reply = Reply(self, head_only=request.method == "HEAD")
        try:
            await self._handler(request, reply)
            if not reply.started:
                raise RuntimeError("the handler sent no response")
            await reply.end()
        except (ClientGone, asyncio.CancelledError):
            self.close()
            return
        except Exception as exc:
            log.exception("HTTP %s %s failed", request.method, request.path)
            if reply.started:
                self.close()  # mid-stream: the client sees a truncated response
                return
            try:
                await reply.send_error(500, f"Internal Server Error: {type(exc).__name__}: {exc}")
            except Exception:
                self.close()
                return
        self._next_cycle()

    def _next_cycle(self) -> None:
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            self._busy, self._request, self._idle = False, None, True
            self._arm(self._limits.keepalive_timeout)
            self._pump()  # a pipelined request may be waiting
        else:
            self.close()


def _content_length(request: h11.Request) -> int | None:
    for name, value in request.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


class FrontDoor(asyncio.Protocol):
    """The first protocol of every accepted connection: its request head decides whether it is a
    WebSocket (handed to websockets) or plain HTTP (an ``HttpConnection``)."""

    def __init__(
        self,
        websocket: Callable[[], asyncio.Protocol],
        http: Callable[[], asyncio.Protocol],
        timeout: float,
    ) -> None:
        self._websocket = websocket
        self._http = http
        self._timeout = timeout
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A cast, not an isinstance check: uvloop's transports do not derive from asyncio's.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        # A socket that never sends a request head is dropped (as websockets drops a handshake).
        self._timer = asyncio.get_running_loop().call_later(self._timeout, transport.close)

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        self._buffer += data
        end = head_end(self._buffer)
        if end > MAX_HEAD or (end < 0 and len(self._buffer) > MAX_HEAD):
            transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\n\r\n")
            transport.close()
            return
        if end < 0:
            return
        if self._timer is not None:
            self._timer.cancel()
        protocol = self._websocket() if is_websocket_upgrade(self._buffer[:end]) else self._http()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        protocol.data_received(bytes(self._buffer))
        self._buffer = bytearray()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()


class HttpFront:
    """The HTTP connections of one worker's listening socket."""

    def __init__(self, handler: Handler, limits: HttpLimits) -> None:
        self.handler = handler
        self.limits = limits
        self.connections: set[HttpConnection] = set()

    def connection(self) -> HttpConnection:
        conn = HttpConnection(self.handler, self.limits, self.connections.discard)
        self.connections.add(conn)
        return conn

    def close(self) -> None:
        """Close every HTTP connection (streams end: their clients reconnect elsewhere)."""
        for conn in list(self.connections):
            conn.close()
