"""Identity providers of the ``hypha-login`` service: what proves who a user is.

A login (``rhizomorph/gateway/login.py``) ends with a rhizomorph token for a user. A provider
decides who that user is, in one or both of two ways:

- ``page``: the router serves the login page, ``/public/apps/hypha-login/...`` (``start``'s
  ``login_url``), by asking the provider: it answers each request, and an answer that proved who
  the user is names the session's key and the user (``PageAnswer.login``);
- ``verify``: a credential ``report(key, token)`` carries that is not a rhizomorph token (an
  identity provider's own token, posted by its page): the user it proves, or ``None``.

The router then signs the token itself, so a client connects with it as with any token of
``generate_token``: providers never see the WebSocket handshake.

Config's ``login_provider`` names one, uvicorn style: ``local`` (``LocalProvider``), ``none``
(no login service), or ``package.module:Attribute``, a class (or factory) called with the
``Config``. Security of each: docs/security.md ("Login").
"""

from __future__ import annotations

import getpass
import html
import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rhizomorph.protocol.handshake import valid_name
from rhizomorph.protocol.login import approval_code, approval_valid, local_refusal

if TYPE_CHECKING:
    from rhizomorph.config import Config

HTML = "text/html; charset=utf-8"
#: The login page is never shown inside another page (a foreign page could trick a click).
PAGE_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
    ),
    ("X-Frame-Options", "DENY"),
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
]


@dataclass(frozen=True, slots=True)
class LoginUser:
    """Who a provider says the user is; the router's token is for ``user_id`` (its workspace
    ``ws-user-<user_id>``)."""

    user_id: str
    email: str | None = None
    name: str | None = None
    roles: tuple[str, ...] = ()


@dataclass(slots=True)
class PageRequest:
    """An HTTP request to the login app, as a provider sees it."""

    method: str
    #: The path under ``/public/apps/hypha-login`` (``/``, ``/approve``, ...).
    path: str
    query: dict[str, str]
    #: A form body (``application/x-www-form-urlencoded``), else empty.
    form: dict[str, str]
    #: Header names lower-case.
    headers: dict[str, str]
    #: The address the request came from (the TCP peer).
    client_host: str | None
    #: The session key of the request (``key`` of the query or the form), if any.
    key: str | None
    #: What ``start`` asked for (``workspace``, ``expires_in``) if ``key`` names an open session,
    #: else ``None`` (expired, unknown or no key).
    session: dict[str, Any] | None
    #: The router's public URL (``http://127.0.0.1:9527``).
    base_url: str


@dataclass(slots=True)
class PageAnswer:
    status: int
    body: str
    content_type: str = HTML
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: The login this request proved: (session key, user). The router completes the session;
    #: if it cannot (the session ended meanwhile), it answers an error page instead of ``body``.
    login: tuple[str, LoginUser] | None = None


class IdentityProvider:
    """The interface; a subclass overrides ``page``, ``verify`` or both."""

    #: Short name for logs and the login page.
    name = "provider"

    def __init__(self, config: Config) -> None:
        self.config = config

    async def page(self, request: PageRequest) -> PageAnswer:
        return PageAnswer(404, page("Login", "<p>This server has no login page.</p>"), headers=list(PAGE_HEADERS))

    async def verify(self, credential: str) -> LoginUser | None:
        return None


def page(title: str, body_html: str) -> str:
    """A small self-contained HTML page (``body_html`` is already escaped)."""
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;max-width:36em;margin:4em auto;line-height:1.5}"
        "button{font-size:1.1em;padding:.4em 1.2em}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body_html}</body></html>"
    )


class LocalProvider(IdentityProvider):
    """Single-user logins on this machine: whoever opens the login page from this machine and
    presses *Approve* is logged in as ``login_local_user`` (default: the user running the router).

    It trusts every process and browser tab of this machine, and nothing else: approvals are
    taken only when the router listens on loopback, over loopback, with a ``Host`` naming this
    machine, through no proxy, from the page itself (a code only the page shows, which the
    browser keeps from foreign pages). See docs/security.md ("Login")."""

    name = "local"

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        user_id = config.login_local_user or getpass.getuser()
        if not valid_name(user_id):
            raise ValueError(f"login_local_user {user_id!r}: a user id may not contain '/', ':', '*', '@' or spaces")
        self.user = LoginUser(user_id)
        self._secret = config.jwt_secret

    async def page(self, request: PageRequest) -> PageAnswer:
        refusal = local_refusal(self.config.host, request.client_host, request.headers)
        if refusal is not None:
            return self._answer(403, "Login refused", f"<p>{html.escape(refusal)}.</p>")
        if request.path not in ("/", "/approve"):
            return self._answer(404, "Not found", "<p>No such page.</p>")
        if request.key is None or request.session is None:
            return self._answer(
                404, "Login expired", "<p>This login does not exist or has expired: start it again.</p>"
            )
        key, user = request.key, html.escape(self.user.user_id)
        if request.path == "/" and request.method in ("GET", "HEAD"):
            workspace = request.session.get("workspace")
            scope = f" (workspace <b>{html.escape(workspace)}</b>)" if workspace else ""
            form = (
                f"<p>A program asks to log in to this rhizomorph server as <b>{user}</b>{scope}.</p>"
                "<p>Approve only if you started that login yourself.</p>"
                "<form method='post' action='approve'>"
                f"<input type='hidden' name='key' value='{html.escape(key)}'>"
                f"<input type='hidden' name='code' value='{approval_code(self._secret, key)}'>"
                "<button type='submit'>Approve</button></form>"
            )
            return self._answer(200, "Log in to rhizomorph", form)
        if request.path == "/approve" and request.method == "POST":
            if not approval_valid(self._secret, key, request.form.get("code", "")):
                return self._answer(403, "Login refused", "<p>The approval did not come from the login page.</p>")
            answer = self._answer(200, "Logged in", f"<p>Logged in as <b>{user}</b>: you can close this page.</p>")
            answer.login = (key, self.user)
            return answer
        return self._answer(405, "Not allowed", "<p>Use the login page.</p>")

    def _answer(self, status: int, title: str, body_html: str) -> PageAnswer:
        return PageAnswer(status, page(title, body_html), headers=list(PAGE_HEADERS))


BUILT_IN: dict[str, type[IdentityProvider]] = {"local": LocalProvider}


def load_provider(spec: str, config: Config) -> IdentityProvider | None:
    """The provider ``spec`` names (``None`` for ``none``: no login service). Raises ``ValueError``
    with what is wrong, for a spec that names nothing usable."""
    spec = spec.strip()
    if spec in ("", "none"):
        return None
    if spec in BUILT_IN:
        return BUILT_IN[spec](config)
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"login_provider {spec!r}: use local, none or 'package.module:Attribute'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"login_provider {spec!r}: cannot import {module_name}: {exc}") from None
    for part in attribute.split("."):
        target = getattr(target, part, None)
        if target is None:
            raise ValueError(f"login_provider {spec!r}: {module_name} has no {attribute}")
    provider = target(config) if callable(target) else target
    if not callable(getattr(provider, "page", None)) or not callable(getattr(provider, "verify", None)):
        raise ValueError(f"login_provider {spec!r}: not an identity provider (it needs page and verify)")
    return provider
