"""The workspace manager: the router's own RPC peer at ``*/manager-<server_id>``.

Each gateway worker runs one, serving the clients whose sockets it holds; they share state
through the registry actor. Only frames addressed to the manager are decoded. Calls the
manager makes to clients (``get_service`` asks the provider) carry session ids prefixed with
the worker id, so replies that arrive at another worker are forwarded back here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import shortuuid

from rhizomorph.gateway.login import LoginService
from rhizomorph.gateway.manager_builtin import BuiltinService
from rhizomorph.gateway.manager_services import ManagerError, ServiceMethods
from rhizomorph.protocol import envelope, login, manager_api, rpc
from rhizomorph.protocol.handshake import ACCESS, PERMISSION_LEVELS, Identity, TokenIssuer, hypha_user
from rhizomorph.protocol.login import LoginError
from rhizomorph.protocol.message_cache import CacheError, needs_chunks

__all__ = ["SERVER_VERSION", "ManagerError", "ManagerHost", "WorkspaceManager", "server_user"]

log = logging.getLogger("rhizomorph.manager")

SERVER_VERSION = "0.21.135"  # the Hypha server version whose wire behaviour we match
PERMISSION_ALIASES = {"read": "r", "read_write": "rw", "admin": "a"}


class ManagerHost(Protocol):
    """What the manager needs from the gateway worker that hosts it."""

    worker_id: str
    #: The registry actor's methods as coroutines (``rhizomorph.actors.registry.RegistryCalls``).
    registry: Any

    def send(self, target: str, frame: bytes) -> None: ...

    def identity(self, address: str) -> Identity | None: ...

    def subscriptions(self, address: str) -> set[str] | None: ...

    async def subscriptions_changed(self, address: str) -> None: ...

    def broadcast_event(self, workspace: str, event_type: str, data: Any) -> None: ...

    async def cluster_stats(self) -> list[dict[str, Any]]: ...


def server_user(server_id: str) -> dict[str, Any]:
    """The ``user`` stamped on frames the router itself sends."""
    return hypha_user(
        f"rhizomorph-{server_id}",
        roles=["admin"],
        is_anonymous=False,
        workspace="*",
        workspaces={"*": "a"},
        client_id=None,
    )


class WorkspaceManager(ServiceMethods):
    def __init__(
        self,
        host: ManagerHost,
        *,
        manager_id: str,
        server_id: str,
        base_url: str,
        issuer: TokenIssuer,
        call_timeout: float,
        max_cache_bytes: int = 16 * 1024 * 1024,
        login_service: LoginService | None = None,
    ) -> None:
        self._host = host
        self.manager_id = manager_id
        self.address = f"*/{manager_id}"
        self._base_url = base_url
        self._issuer = issuer
        self._call_timeout = call_timeout
        self._server_id = server_id
        self.user = server_user(server_id)
        self._pending: dict[str, asyncio.Future] = {}
        #: The sessions of ``_pending`` by the client called: failed at once if it is lost.
        self._calling: dict[str, set[str]] = {}
        self._tasks: set[asyncio.Task] = set()
        #: One method per entry of the API table (rhizomorph/protocol/manager_api.py).
        self._methods: dict[str, Callable[..., Awaitable[Any]]] = {
            name: getattr(self, name) for name in manager_api.METHODS
        }
        #: Chunked messages from callers, bounded per caller by the largest frame the router accepts.
        self.builtin = BuiltinService(self, max_bytes_per_caller=max_cache_bytes)
        #: ``public/hypha-login`` (rhizomorph/gateway/login.py), unless no login provider is set.
        self.login = login_service

    # -- entry point -----------------------------------------------------------------------------
    def owns_session(self, method: str) -> str | None:
        """The worker id a callback ``method`` belongs to, if it is a manager session."""
        if method.startswith("services."):
            return None
        prefix, sep, _ = method.partition("-")
        return prefix if sep else None

    def handle(self, frame: bytes) -> None:
        """A frame addressed to the manager (already stamped by the gateway)."""
        try:
            message = envelope.decode(frame)
        except envelope.EnvelopeError as exc:
            log.info("undecodable message to the manager: %s", exc)
            return
        method = message.get("method")
        if not isinstance(method, str):
            return
        if method.startswith("services."):
            task = asyncio.get_running_loop().create_task(self._serve(message, method))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._on_callback(method, message)

    def send(self, target: str, frame: bytes) -> None:
        self._host.send(target, frame)

    def set_base_url(self, base_url: str) -> None:
        self._base_url = base_url
        if self.login is not None:
            self.login.base_url = base_url

    def cache_stats(self) -> dict[str, int]:
        """Chunked messages waiting for ``process``: callers holding some, and bytes held."""
        return {"callers": self.builtin.cache.callers, "bytes": self.builtin.cache.total}

    def client_left(self, address: str) -> None:
        """A caller disconnected: what it left in the message cache goes."""
        self.builtin.forget(address)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ManagerError("the router is shutting down"))

    # -- serving calls -------------------------------------------------------------------------
    async def _serve(self, message: dict[str, Any], method: str) -> None:
        caller, workspace = message.get("from"), message.get("ws")
        if not isinstance(caller, str) or not isinstance(workspace, str):
            return  # not stamped by the router (it stamps both on every client message)
        identity = self._host.identity(caller)
        if identity is None:
            return  # the caller is gone; nobody to answer
        replies = rpc.reply_methods(message)
        args, kwargs = rpc.call_arguments(message)
        # Answer as the address called: hypha-rpc takes a session's answers only from the peer it
        # called, which after a restart may be the manager id of an earlier start.
        called = message.get("to")
        me = called if isinstance(called, str) and envelope.is_manager(called) else self.address
        work = asyncio.ensure_future(self._dispatch(identity, message, method, args, kwargs))
        session = message.get("session")
        interval = message.get("t")
        if message.get("promise") == "*" and isinstance(session, str) and isinstance(interval, (int, float)):
            # Keep a slow call (get_service waits on the provider) alive in the caller's eyes.
            while not work.done():
                done, _ = await asyncio.wait({work}, timeout=max(float(interval), 0.5))
                if not done:
                    self._host.send(
                        caller,
                        rpc.heartbeat_frame(
                            sender=me, target=caller, session=session, workspace=workspace, user=self.user
                        ),
                    )
        try:
            value, method_id = await work, replies[0] if replies else None
        except (ManagerError, CacheError, LoginError) as exc:
            value, method_id = rpc.error_value(str(exc)), replies[1] if replies else None
        except Exception as exc:  # a bug must still answer the caller, not leave it to time out
            log.exception("manager method %s failed", method)
            value, method_id = rpc.error_value(f"{type(exc).__name__}: {exc}"), replies[1] if replies else None
        if method_id is None:
            return
        parent = session if isinstance(session, str) else None

        def reply(value: Any, method_id: str) -> bytes:
            return rpc.callback_frame(
                sender=me,
                target=caller,
                method=method_id,
                value=value,
                workspace=workspace,
                user=self.user,
                parent=parent,
            )

        frame = reply(value, method_id)
        if not needs_chunks(len(frame)):
            self._host.send(caller, frame)
            return
        try:
            await self.builtin.send_in_chunks(caller, frame, self._call_timeout)
        except Exception as exc:  # tell the caller rather than leave it to time out
            log.info("a %d-byte reply to %s could not be sent in chunks: %s", len(frame), caller, exc)
            if replies and method_id == replies[0]:
                self._host.send(caller, reply(rpc.error_value(f"the reply could not be delivered: {exc}"), replies[1]))

    async def _dispatch(
        self, identity: Identity, message: dict[str, Any], method: str, args: list[Any], kwargs: dict[str, Any]
    ) -> Any:
        path = method.split(".")
        if path[1:3] == ["built-in", "get_service"]:
            name = (args or [kwargs.get("service_id", "default")])[0]
            if name == "built-in":
                return self.builtin.service_dict(self._server_config())
            if name != "default":
                raise ManagerError(f"the manager has no service {name!r}")
            return self.service_dict()
        if path[1:3] == ["built-in", "ping"]:
            return "pong"
        if path[1:3] == ["built-in", "message_cache"]:
            return self.builtin.call(message, identity.address, ".".join(path[2:]), args, kwargs)
        if len(path) == 3 and path[1] == login.NAME and self.login is not None:
            return await self.login.call(identity, path[2], args, kwargs)
        if len(path) == 3 and path[1] == "default" and path[2] in self._methods:
            try:
                return await self._methods[path[2]](identity, *args, **kwargs)
            except TypeError as exc:
                raise ManagerError(f"bad arguments for {path[2]}: {exc}") from None
        raise ManagerError(f"Method not found: {method}")

    def _server_config(self) -> dict[str, Any]:
        return {
            "require_context": True,
            "visibility": "public",
            "workspace": "*",
            "server_id": self._server_id,
            "hypha_version": SERVER_VERSION,
            "public_base_url": self._base_url,
            "local_base_url": self._base_url,
        }

    def service_dict(self) -> dict[str, Any]:
        """What ``get_service("default")`` returns: the manager as a hypha-rpc service, each
        function with its ``_rschema`` (``__schema__`` to the client) from the API table."""
        service: dict[str, Any] = {
            "id": "default",
            "name": "Workspace manager (rhizomorph)",
            "description": "Register, find and list services; subscribe to events.",
            "type": "functions",
            "config": self._server_config(),
        }
        for name, spec in manager_api.METHODS.items():
            service[name] = rpc.method_ref(
                self.address, f"services.default.{name}", name, spec.description, spec.schema(name)
            )
        return service

    # -- calls the manager makes to clients ----------------------------------------------------
    def _on_callback(self, method: str, message: dict[str, Any]) -> None:
        session, _, kind = method.rpartition(".")
        future = self._pending.get(session)
        if future is None or future.done():
            return
        value = (message.get("args") or [None])[0]
        if kind == "resolve":
            future.set_result(value)
        elif kind == "reject":
            future.set_exception(ManagerError(rpc.remote_error_message(value)))

    async def call_client(self, target: str, method: str, args: list[Any], timeout: float | None = None) -> Any:
        session = f"{self._host.worker_id}-{shortuuid.uuid()}"
        future = asyncio.get_running_loop().create_future()
        self._pending[session] = future
        self._calling.setdefault(target, set()).add(session)
        frame = rpc.call_frame(
            sender=self.address,
            target=target,
            method=method,
            args=args,
            session=session,
            reply_target=self.manager_id,
            workspace=target.split("/", 1)[0],
            user=self.user,
        )
        try:
            self._host.send(target, frame)
            return await asyncio.wait_for(future, timeout or self._call_timeout)
        except TimeoutError:
            raise ManagerError(f"{target} did not answer {method} in time") from None
        finally:
            self._pending.pop(session, None)
            sessions = self._calling.get(target)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del self._calling[target]

    def target_lost(self, target: str, reason: str) -> None:
        """``target`` left, or calls in flight to it were lost with its gateway worker: the
        manager's own calls to it fail now, not at their timeout (while their callers wait)."""
        for session in self._calling.pop(target, ()):
            future = self._pending.get(session)
            if future is not None and not future.done():
                future.set_exception(ManagerError(reason))

    # -- the manager's methods (each gets the caller's identity first; the service ones are in
    # -- manager_services.py) ------------------------------------------------------------------
    async def list_clients(self, caller: Identity, workspace: str | None = None, **_: Any) -> list:
        """The clients connected to a workspace (default: the caller's)."""
        workspace = workspace or caller.workspace
        if not caller.can(workspace, "r"):
            raise ManagerError(f"Permission denied for workspace {workspace}")
        return [{"id": address} for address in await self._host.registry.list_clients(workspace)]

    async def subscribe(self, caller: Identity, event_type: Any, **_: Any) -> bool:
        """Receive broadcast events of these types sent in the caller's workspace."""
        subscriptions = self._host.subscriptions(caller.address)
        if subscriptions is None:
            raise ManagerError(f"Connection not found for client {caller.address}")  # Hypha's words
        subscriptions.update(_event_types(event_type))
        await self._host.subscriptions_changed(caller.address)
        return True

    async def unsubscribe(self, caller: Identity, event_type: Any, **_: Any) -> bool:
        """Stop receiving events of these types."""
        subscriptions = self._host.subscriptions(caller.address)
        if subscriptions is not None:
            subscriptions.difference_update(_event_types(event_type))
        await self._host.subscriptions_changed(caller.address)
        return True

    async def echo(self, caller: Identity, data: Any = None, **_: Any) -> Any:
        """Return the argument unchanged."""
        return data

    async def ping(self, caller: Identity, client_id: str, timeout: float = 5, **_: Any) -> str:
        """Ping a client of the caller's workspace through its built-in service."""
        target = client_id if "/" in client_id else f"{caller.workspace}/{client_id}"
        workspace = target.split("/", 1)[0]
        # As Hypha's ping_client, a failure is the answer, not an error.
        if not caller.can(workspace, "r"):
            return f"Failed to ping client {target}: Permission denied for workspace {workspace}"
        try:
            return await self.call_client(target, "services.built-in.ping", ["ping"], timeout=float(timeout))
        except ManagerError as exc:
            return f"Failed to ping client {target}: {exc}"

    async def log(self, caller: Identity, msg: Any = None, **_: Any) -> None:
        """Write a message to the router's log."""
        if not caller.can(caller.workspace, "rw"):
            raise ManagerError("Permission denied: log needs read-write access")
        log.info("client %s: %s", caller.address, str(msg)[:2000])
        return None

    async def generate_token(self, caller: Identity, config: Any = None, **kwargs: Any) -> str:
        """A signed token for the caller's user, scoped to one workspace (config: workspace,
        permission r/rw/a, expires_in seconds, client_id)."""
        config = dict(config or {}) if isinstance(config, dict) else {}
        config.update(kwargs)
        workspace = config.get("workspace") or caller.workspace
        permission = config.get("permission", "rw")
        if (
            not isinstance(workspace, str)
            or not isinstance(permission, str)
            or not isinstance(config.get("client_id"), (str, type(None)))
        ):
            raise ManagerError("generate_token: workspace, permission and client_id must be strings")
        permission = PERMISSION_ALIASES.get(permission, permission)
        if permission not in PERMISSION_LEVELS:
            raise ManagerError(f"invalid permission {permission!r}: use r, rw or a")
        if not caller.can(workspace, "a"):
            raise ManagerError(f"Permission denied: generating a token for {workspace} needs admin access")
        try:
            lifetime = float(config.get("expires_in") or 3600)
        except (TypeError, ValueError):
            lifetime = -1.0
        if not 0 < lifetime < float("inf"):
            raise ManagerError("generate_token: expires_in must be a positive number of seconds")
        token_identity = Identity(
            workspace=workspace,
            client_id=caller.client_id,
            user_id=caller.user_id,
            is_anonymous=caller.is_anonymous,
            roles=caller.roles,
            workspaces={workspace: permission},
            email=caller.email,
        )
        return self._issuer.issue(token_identity, kind=ACCESS, lifetime=lifetime, client_id=config.get("client_id"))

    async def get_router_stats(self, caller: Identity, **_: Any) -> dict:
        """The router's own metrics: per worker, connections, frames in, refusals, disconnects,
        delivery totals since start (messages, flushes by reason, batch sizes) and per-target
        batching of the caller's workspaces (other targets are counted, not named)."""
        workers = await self._host.cluster_stats()
        visible = set(caller.workspaces)
        for worker in workers:
            worker.pop("clients", None)
            worker["targets"] = {a: m for a, m in worker.get("targets", {}).items() if a.split("/", 1)[0] in visible}
        return {"server_id": self._server_id, "workers": workers}


def _event_types(event_type: Any) -> list[str]:
    types = [event_type] if isinstance(event_type, str) else list(event_type or [])
    if not all(isinstance(t, str) for t in types):
        raise ManagerError("event types must be strings")
    return types
