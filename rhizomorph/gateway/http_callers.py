"""Who calls a service when an HTTP request does: an in-process hypha-rpc client of the router.

An HTTP request to ``/{ws}/services/...`` or ``/{ws}/apps/...`` is carried out by a *caller*: a
hypha-rpc ``RPC`` in the worker's own process, connected to the ``Router`` like any client
(a ``ClientConnection`` whose socket is a ``LocalLink``), so its calls are stamped, routed and
answered exactly as a WebSocket client's are. It is silent: it registers no service with the
manager; it answers only the callbacks of its own calls (an ASGI app's ``receive`` and
``send``, ``message_cache`` chunks of a large result).

Callers are per credential: one for each bearer token (and workspace it acts in) and one for
anonymous requests, kept while in use and closed ``idle_ttl`` seconds after their last request
or when their token expires. See docs/protocol.md ("HTTP: who the caller is").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import shortuuid

from rhizomorph.background import spawn
from rhizomorph.gateway.connection import ClientConnection, ConnectionHost
from rhizomorph.protocol import handshake, limits
from rhizomorph.protocol.handshake import AuthRequest, Identity

if TYPE_CHECKING:
    from hypha_rpc.rpc import RPC

log = logging.getLogger("rhizomorph.http")

#: Address prefix of callers, so logs and a provider's ``context["from"]`` say what they are.
CALLER_PREFIX = "http-"


@contextlib.contextmanager
def _keep_exception_handler(loop: asyncio.AbstractEventLoop) -> Iterator[None]:
    """hypha-rpc's RPC installs (and on close clears) the loop's exception handler; the worker's
    loop is not its to change."""
    handler = loop.get_exception_handler()
    try:
        yield
    finally:
        loop.set_exception_handler(handler)


class LocalLink:
    """Both ends of an in-process client: the socket its ``ClientConnection`` writes to, and
    the connection its hypha-rpc ``RPC`` reads from and writes to."""

    def __init__(self, router: ConnectionHost, manager_id: str, workspace: str) -> None:
        self._router = router
        self.manager_id = manager_id
        self.workspace = workspace
        self.conn: ClientConnection | None = None
        self.close_code: int | None = None
        self._on_message: Callable[[bytes], None] | None = None
        self.on_closed: Callable[[], Any] | None = None

    # -- the router's side (what ClientConnection uses of a socket) -----------------------------
    async def send(self, data: bytes | str) -> None:
        if self.close_code is not None:
            raise ConnectionResetError("the caller is closed")
        if isinstance(data, str):  # the router's error text frames
            log.info("caller %s told: %s", self.conn.address if self.conn else "?", data[:300])
            return
        if self._on_message is not None:
            try:
                self._on_message(data)
            except Exception:  # one bad frame must not stop the caller's delivery queue
                log.exception("an HTTP caller could not read a frame")

    async def send_frames(self, frames: list[bytes]) -> None:
        for frame in frames:
            await self.send(frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is None:
            self.close_code = code
            if self.on_closed is not None:
                self.on_closed()

    async def ping(self) -> asyncio.Future[None]:
        pong: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pong.set_result(None)
        return pong

    # -- hypha-rpc's side (a connection of RPC) --------------------------------------------------
    def on_message(self, handler: Callable[[bytes], None]) -> None:
        self._on_message = handler

    def on_connected(self, handler: Any) -> None:
        pass  # connected from the start; never reconnects

    def on_disconnected(self, handler: Any) -> None:
        pass

    async def emit_message(self, data: bytes) -> None:
        if self.close_code is not None or self.conn is None:
            raise ConnectionResetError("the caller is closed")
        self._router.route(self.conn, data)

    async def disconnect(self, reason: str | None = None) -> None:
        await self.close()


class Caller:
    """One in-process client: its identity, its RPC and the manager as its RPC sees it."""

    def __init__(self, identity: Identity, link: LocalLink, rpc: RPC, manager: Any) -> None:
        self.identity = identity
        self.link = link
        self.rpc = rpc
        self.manager = manager
        self.last_used = time.monotonic()
        self.active = 0  # requests in progress

    @property
    def address(self) -> str:
        return self.identity.address

    @property
    def closed(self) -> bool:
        return self.link.close_code is not None

    def expired(self, now: float) -> bool:
        return self.identity.expires_at is not None and self.identity.expires_at <= now


def caller_identity(issuer: handshake.TokenIssuer, token: str | None, workspace: str | None) -> Identity:
    """Who a request is: the token's user in the token's workspace (in ``workspace`` instead if
    the token grants it), or an anonymous user with a workspace of its own. Raises
    ``HandshakeError`` for a bad token."""
    client_id = CALLER_PREFIX + shortuuid.uuid()[:16]
    if not token:
        return handshake.anonymous_identity(client_id)
    identity, _ = handshake.authenticate(AuthRequest(client_id=client_id, token=token), issuer)
    if workspace and workspace != identity.workspace and identity.can(workspace, "r"):
        identity.workspace = workspace
    return identity


class Callers:
    """The callers of one worker, per credential."""

    def __init__(
        self,
        router: Any,
        *,
        method_timeout: float,
        idle_ttl: float = 60.0,
        max_callers: int = 256,
    ) -> None:
        self._router = router
        self._method_timeout = method_timeout
        self._idle_ttl = idle_ttl
        self._max_callers = max_callers
        self._callers: OrderedDict[tuple[str | None, str | None], Caller] = OrderedDict()
        self._opening: dict[tuple[str | None, str | None], asyncio.Future[Caller]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self.opened = 0  # callers opened since start (for tests and stats)

    def __len__(self) -> int:
        return len(self._callers)

    @contextlib.asynccontextmanager
    async def use(self, token: str | None, workspace: str | None) -> Any:
        """The caller for ``token`` (``None``: anonymous) acting in ``workspace``, held for the
        duration of the block."""
        caller = await self._get(token, workspace)
        caller.active += 1
        try:
            yield caller
        finally:
            caller.active -= 1
            caller.last_used = time.monotonic()

    async def _get(self, token: str | None, workspace: str | None) -> Caller:
        key = (token, workspace if token else None)
        caller = self._callers.get(key)
        if caller is not None and not caller.closed and not caller.expired(time.time()):
            self._callers.move_to_end(key)
            return caller
        if caller is not None:
            self._drop(key, caller)
        opening = self._opening.get(key)
        if opening is not None:
            return await asyncio.shield(opening)
        future: asyncio.Future[Caller] = asyncio.get_running_loop().create_future()
        self._opening[key] = future
        try:
            caller = await self._open(token, workspace)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it, nobody else must
            raise
        finally:
            self._opening.pop(key, None)
        future.set_result(caller)
        self._callers[key] = caller
        self._trim()
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())
        return caller

    async def _open(self, token: str | None, workspace: str | None) -> Caller:
        router = self._router
        identity = caller_identity(router.issuer, token, workspace)
        link = LocalLink(router, router.config.manager_id, identity.workspace)
        conn = ClientConnection(
            link,  # type: ignore[arg-type]  # a socket in what ClientConnection uses of one
            identity,
            router.batch_policy,
            max_queue_bytes=router.config.max_queue_bytes,
            on_evicted=router.on_evicted,
        )
        link.conn = conn
        limits.check_capacity(router.connection_count(), router.config.max_connections_per_worker, reconnecting=False)
        await router.admit(conn, False)
        # hypha-rpc (with its WebRTC stack) is imported by the first caller, not with the
        # gateway: most workers never serve an HTTP service call, and every worker starts.
        from hypha_rpc.rpc import RPC

        loop = asyncio.get_running_loop()
        with _keep_exception_handler(loop):
            rpc = RPC(
                link,
                client_id=identity.client_id,
                workspace=identity.workspace,
                silent=True,
                method_timeout=self._method_timeout,
                server_base_url=router.config.base_url,
                loop=loop,
            )
        caller = Caller(identity, link, rpc, None)
        link.on_closed = lambda: spawn(self._release(caller))
        try:
            caller.manager = await rpc.get_manager_service({"timeout": self._method_timeout}, max_retries=1)
        except BaseException:
            await self._release(caller)
            raise
        self.opened += 1
        log.debug("HTTP caller %s opened", caller.address)
        return caller

    def _trim(self) -> None:
        """Past ``max_callers``, close the least recently used callers that no request holds."""
        excess = len(self._callers) - self._max_callers
        for key, caller in list(self._callers.items())[:-1]:  # never the one just opened
            if excess <= 0:
                break
            if caller.active == 0:
                self._drop(key, caller)
                excess -= 1

    def _drop(self, key: tuple[str | None, str | None], caller: Caller) -> None:
        if self._callers.get(key) is caller:
            del self._callers[key]
        if caller.link.close_code is None:
            caller.link.close_code = 1000  # closed from now on; the release follows
        spawn(self._release(caller))

    async def _release(self, caller: Caller) -> None:
        """Close a caller: its RPC, then its connection (the router answers what it still owed)."""
        link = caller.link
        if link.close_code is None:
            link.close_code = 1000
        loop = asyncio.get_running_loop()
        if getattr(caller.rpc, "_connection", None) is not None:
            with _keep_exception_handler(loop):
                try:
                    await caller.rpc.disconnect()
                except Exception as exc:
                    log.debug("closing HTTP caller %s: %s", caller.address, exc)
        if link.conn is not None:
            conn, link.conn = link.conn, None
            await self._router.disconnect(conn)

    async def _reap(self) -> None:
        """Close callers idle for ``idle_ttl`` or past their token's expiry (runs while any is open)."""
        while self._callers:
            await asyncio.sleep(min(self._idle_ttl, 5.0))
            now, wall = time.monotonic(), time.time()
            for key, caller in list(self._callers.items()):
                idle = caller.active == 0 and now - caller.last_used >= self._idle_ttl
                if idle or caller.closed or caller.expired(wall):
                    self._drop(key, caller)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        callers, self._callers = list(self._callers.values()), OrderedDict()
        await asyncio.gather(*(self._release(c) for c in callers), return_exceptions=True)
