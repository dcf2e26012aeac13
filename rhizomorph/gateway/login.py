"""The ``public/hypha-login`` service, served by the workspace manager of every gateway worker.

hypha-rpc's ``login()`` gets ``public/hypha-login`` and calls ``start``, then ``check``; the
login page (``/public/apps/hypha-login/?key=...``) or anything holding a token calls
``report``, over RPC or HTTP (``GET /public/services/hypha-login/report?key=...&token=...``).
The service is the manager's own (its functions are calls to ``*/manager-<server_id>``), so
it needs no client of its own, and it is listed and found in workspace ``public`` as Hypha's.

A session lives on the worker that started it (``rhizomorph/protocol/login.py``); a call for
it on another worker is handed to the owner over a Ray call (``Peers.login``). Who the user
is, the identity provider decides (``rhizomorph/gateway/login_providers.py``); the router
signs the token.
"""

from __future__ import annotations

import asyncio
import html
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from rhizomorph.config import Config
from rhizomorph.gateway.http_server import HttpRequest, Reply
from rhizomorph.gateway.login_providers import (
    PAGE_HEADERS,
    IdentityProvider,
    LoginUser,
    PageAnswer,
    PageRequest,
    load_provider,
    page,
)
from rhizomorph.protocol import login, rpc
from rhizomorph.protocol.handshake import ACCESS, AuthRequest, HandshakeError, Identity, TokenIssuer, authenticate
from rhizomorph.protocol.http_api import query_params
from rhizomorph.protocol.login import LoginError
from rhizomorph.protocol.service_table import RegistryError, ServiceRecord, list_filters, listed

log = logging.getLogger("rhizomorph.login")

#: ``forward(worker_id, op, kwargs)``: run ``op`` on the worker that owns a session; returns
#: ``{"value": ...}`` or ``{"error": message}``.
Forward = Callable[[str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


class LoginService:
    def __init__(
        self,
        worker_id: str,
        *,
        manager_id: str,
        issuer: TokenIssuer,
        base_url: str,
        provider: IdentityProvider,
        forward: Forward,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.worker_id = worker_id
        self.manager_id = manager_id
        self.full_id = f"{login.WORKSPACE}/{manager_id}:{login.NAME}"
        self.provider = provider
        self.sessions = login.LoginSessions(worker_id)
        self._issuer = issuer
        self.base_url = base_url
        self._forward = forward
        self._clock = clock
        #: Set when the session of a key is reported, for the checks waiting on it (and how many).
        self._reported: dict[str, asyncio.Event] = {}
        self._waiting: dict[str, int] = {}

    # -- what the manager serves --------------------------------------------------------------
    def names(self, service_id: Any, caller_workspace: str) -> bool:
        """Whether ``service_id`` names this service (``public/hypha-login``, ``public/*:hypha-login``,
        ``hypha-login`` from workspace ``public``, or the full id)."""
        if not isinstance(service_id, str):
            return False
        service_id = service_id.split("@", 1)[0]
        workspace, _, rest = service_id.rpartition("/") if "/" in service_id else (caller_workspace, "", service_id)
        client, _, name = rest.rpartition(":")
        return workspace == login.WORKSPACE and name == login.NAME and client in ("", "*", self.manager_id)

    def info(self) -> dict[str, Any]:
        """The service as ``list_services`` and ``get_service_info`` show it."""
        return {
            "id": self.full_id,
            "name": "Hypha Login",
            "type": "functions",
            "description": f"Log in to this server (identity provider: {self.provider.name})",
            "config": {"visibility": "public", "require_context": True, "workspace": login.WORKSPACE},
            "app_id": "*",
        }

    def listed(self, query: Any, caller: Identity) -> bool:
        """Whether ``list_services(query)`` lists this service to ``caller`` (the registry's rules)."""
        info = self.info()
        record = ServiceRecord(self.full_id, self.full_id.rsplit(":", 1)[0], info)
        try:
            filters = list_filters(query, caller.workspace)
        except RegistryError:
            return False
        return listed(record, filters, caller.workspace, set(caller.workspaces))

    def service_dict(self, manager_address: str) -> dict[str, Any]:
        service = self.info()
        service["config"] = {**service["config"], "url": f"{self.base_url}/{login.WORKSPACE}/services/{login.NAME}"}
        for name, spec in login.METHODS.items():
            service[name] = rpc.method_ref(
                manager_address, f"services.{login.NAME}.{name}", name, spec.description, spec.schema(name)
            )
        return service

    async def call(self, caller: Identity, function: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        """A call of the service by a client of this worker."""
        methods: dict[str, Callable[..., Awaitable[Any]]] = {
            "start": self.start,
            "check": self.check,
            "report": self.report,
        }
        method = methods.get(function)
        if method is None:
            raise LoginError(f"Method not found: {login.NAME}.{function}")
        try:
            return await method(caller, *args, **kwargs)
        except TypeError as exc:
            raise LoginError(f"bad arguments for {function}: {exc}") from None

    async def start(self, caller: Identity, workspace: Any = None, expires_in: Any = None, **_: Any) -> dict:
        session = self.sessions.start(caller.address, self._clock(), workspace, expires_in)
        return login.start_answer(self.base_url, session.key, session.workspace, session.expires_in)

    async def check(
        self, caller: Identity, key: Any, timeout: Any = login.LOGIN_TIME, profile: Any = False, **_: Any
    ) -> Any:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise LoginError("timeout must be a number of seconds")
        return await self._on_owner(key, "check", {"key": key, "timeout": float(timeout), "profile": bool(profile)})

    async def report(
        self,
        caller: Identity,
        key: Any,
        token: Any,
        workspace: Any = None,
        expires_in: Any = None,
        **fields: Any,
    ) -> None:
        session = await self._on_owner(key, "session", {"key": key})
        if not isinstance(token, str) or not token:
            raise LoginError("token must be a string")
        user = await self._user_of(token)
        profile = self._profile(token, user, workspace or session["workspace"], expires_in or session["expires_in"])
        # The page's profile fields fill in what the token does not say; the token's own win.
        reported = login.profile("", None, None, **fields)
        profile.update({k: v for k, v in reported.items() if v is not None and profile.get(k) is None})
        await self._on_owner(key, "report", {"key": key, "profile": profile})

    # -- making the token ---------------------------------------------------------------------
    async def _user_of(self, token: str) -> Identity | LoginUser:
        """A rhizomorph token's identity, else the user the provider says the credential proves."""
        try:
            bound = self._issuer.verify(token, kind=ACCESS).get("cid")
            identity, _ = authenticate(AuthRequest(client_id=bound or "login", token=token), self._issuer)
            identity.client_id = bound or ""  # a token bound to one client id stays bound when scoped
            return identity
        except HandshakeError as exc:
            problem = str(exc)
        user = await self.provider.verify(token)
        if user is None:
            raise LoginError(f"the reported token is not accepted: {problem}")
        return user

    def _profile(self, token: str, user: Identity | LoginUser, workspace: Any, expires_in: Any) -> dict[str, Any]:
        """The report: the token as given if it is ours and nothing asks for a scope, else a token
        the router signs for the user (scoped to ``workspace`` when asked)."""
        lifetime = login.token_lifetime(expires_in)
        if workspace is not None and not isinstance(workspace, str):
            raise LoginError("workspace must be a workspace name")
        if isinstance(user, LoginUser):
            identity = user_identity(user)
            email, name = user.email, user.name
        else:
            identity, email, name = user, user.email, None
        if isinstance(user, LoginUser) or workspace:
            workspace = workspace or identity.workspace
            permission = identity.permission(workspace)
            if permission is None:
                raise LoginError(f"Invalid permission for the workspace {workspace}")  # Hypha's words
            scoped = Identity(
                workspace=workspace,
                client_id="",
                user_id=identity.user_id,
                is_anonymous=identity.is_anonymous,
                roles=identity.roles,
                workspaces={workspace: permission},
                email=identity.email,
            )
            lifetime = lifetime or login.TOKEN_LIFETIME
            if identity.expires_at is not None:  # a scoped token never outlives the one it came from
                lifetime = min(lifetime, identity.expires_at - time.time())
            token = self._issuer.issue(scoped, kind=ACCESS, lifetime=lifetime, client_id=identity.client_id or None)
        return login.profile(token, workspace or None, lifetime, user_id=identity.user_id, email=email, name=name)

    # -- sessions on their owner --------------------------------------------------------------
    async def _on_owner(self, key: Any, op: str, kwargs: dict[str, Any]) -> Any:
        owner = login.key_owner(key)
        if owner is None:
            raise LoginError("Invalid key, key does not exist or expired")
        if owner == self.worker_id:
            return await self.serve(op, kwargs)
        answer = await self._forward(owner, op, kwargs)
        if "error" in answer:
            raise LoginError(answer["error"])
        return answer.get("value")

    async def serve(self, op: str, kwargs: dict[str, Any]) -> Any:
        """``op`` on a session of this worker (its own call, or one another worker handed over)."""
        now, key = self._clock(), kwargs.get("key")
        if op == "session":
            session = self.sessions.get(key, now)
            return {"workspace": session.workspace, "expires_in": session.expires_in}
        if op == "report":
            session = self.sessions.report(key, dict(kwargs["profile"]), now)
            event = self._reported.pop(session.key, None)
            if event is not None:
                event.set()
            return None
        if op == "check":
            return await self._wait(key, float(kwargs["timeout"]), bool(kwargs["profile"]))
        raise LoginError(f"unknown login operation {op!r}")

    async def _wait(self, key: Any, timeout: float, profile: bool) -> Any:
        """The report of ``key`` once it comes, within ``timeout`` seconds (``<= 0``: at once)."""
        deadline = self._clock() + max(timeout, 0.0)
        self._waiting[key] = self._waiting.get(key, 0) + 1
        try:
            while True:
                now = self._clock()
                reported = self.sessions.take(key, now)
                if reported is not None:
                    return reported if profile else reported["token"]
                if now >= deadline:
                    if timeout <= 0:
                        return None
                    raise LoginError(f"Login timeout, waited for {timeout:g} seconds")  # Hypha's words
                session = self.sessions.get(key, now)
                event = self._reported.setdefault(session.key, asyncio.Event())
                try:
                    await asyncio.wait_for(event.wait(), min(deadline, session.expires_at) - now)
                except TimeoutError:
                    pass
        finally:
            self._waiting[key] -= 1
            if not self._waiting[key]:  # the last check of the key gave up or got its answer
                del self._waiting[key]
                self._reported.pop(key, None)

    # -- the login page -----------------------------------------------------------------------
    async def handle_http(self, request: HttpRequest, reply: Reply, path: str) -> None:
        """A request to ``/public/apps/hypha-login/<path>``: the provider answers it."""
        form: dict[str, str] = {}
        if request.method == "POST" and request.header("content-type").startswith("application/x-www-form-urlencoded"):
            form = dict(parse_qsl(request.body.decode("utf-8", "replace"), keep_blank_values=True))
        key = form.get("key") or query_params(request.query).get("key") or None
        session = None
        if key is not None:
            try:
                session = await self._on_owner(key, "session", {"key": key})
            except LoginError:
                session = None
        answer = await self.provider.page(
            PageRequest(
                method=request.method,
                path=path or "/",
                query=query_params(request.query),
                form=form,
                headers=dict(request.headers),
                client_host=request.client[0] if request.client else None,
                key=key,
                session=session,
                base_url=self.base_url,
            )
        )
        if answer.login is not None:
            answer = await self._complete(answer)
        body = answer.body.encode()
        await reply.send(answer.status, [("Content-Type", answer.content_type), *answer.headers], body)

    async def _complete(self, answer: PageAnswer) -> PageAnswer:
        """The page proved who the user is: the session gets the router's token for that user."""
        assert answer.login is not None
        key, user = answer.login
        try:
            session = await self._on_owner(key, "session", {"key": key})
            profile = self._profile("", user, session["workspace"], session["expires_in"])
            await self._on_owner(key, "report", {"key": key, "profile": profile})
        except LoginError as exc:
            log.info("a login approved by the page could not be completed: %s", exc)
            return PageAnswer(409, page("Login failed", f"<p>{html.escape(str(exc))}.</p>"), headers=list(PAGE_HEADERS))
        log.info("login of %s approved (%s provider)", user.user_id, self.provider.name)
        return answer


def login_service(config: Config, worker_id: str, issuer: TokenIssuer, forward: Forward) -> LoginService | None:
    """The login service of a worker, with the provider ``config.login_provider`` names
    (``None`` for ``none``)."""
    provider = load_provider(config.login_provider, config)
    if provider is None:
        return None
    return LoginService(
        worker_id,
        manager_id=config.manager_id,
        issuer=issuer,
        base_url=config.base_url,
        provider=provider,
        forward=forward,
    )


def user_identity(user: LoginUser) -> Identity:
    """The identity a provider's user has: admin of its own workspace, ``ws-user-<user_id>``."""
    workspace = f"ws-user-{user.user_id}"
    return Identity(
        workspace=workspace,
        client_id="",
        user_id=user.user_id,
        is_anonymous=False,
        roles=list(user.roles),
        workspaces={workspace: "a"},
        email=user.email,
    )
