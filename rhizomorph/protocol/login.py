"""The ``public/hypha-login`` service (sans-I/O): login sessions, their keys and answers.

hypha-rpc's ``login()`` connects anonymously, calls ``start()`` (a session ``key`` and a
``login_url`` for the human), then ``check(key, timeout)``, which waits until something
``report(key, token)``\\ s the token the login produced. What proves who the user is lives in an
identity provider (``rhizomorph/gateway/login_providers.py``); the router serves the service
from its manager (``rhizomorph/gateway/login.py``).

A session lives on the gateway worker whose manager started it, and its key names that worker
(``<worker_id>-<random>``): a ``report`` or ``check`` that reaches another worker is handed to
the owner. Sessions end when checked, or ``LOGIN_TIME`` seconds after ``start``; how many may be
open at once is bounded per worker and per caller.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass, field
from typing import Any

from rhizomorph.protocol.manager_api import STRING, Method, Param

#: The service's workspace and name: ``public/hypha-login``, as on Hypha.
WORKSPACE = "public"
NAME = "hypha-login"
#: Seconds a session may wait for its report (Hypha's MAXIMUM_LOGIN_TIME).
LOGIN_TIME = 180.0
#: Open sessions one worker holds, and one caller may hold, at once.
MAX_SESSIONS = 10000
MAX_SESSIONS_PER_CALLER = 20
#: Lifetime of a token the router issues for a login when none is asked for (as ``generate_token``).
TOKEN_LIFETIME = 3600.0

#: The fields of a report, as Hypha's ``UserTokenInfo`` (``check(..., profile=True)`` returns them).
PROFILE_FIELDS = (
    "token",
    "workspace",
    "expires_in",
    "email",
    "email_verified",
    "name",
    "nickname",
    "user_id",
    "picture",
)


class LoginError(Exception):
    """A refused login call; the message reaches the caller (Hypha's words where it has some)."""


@dataclass(slots=True)
class Session:
    key: str
    caller: str
    expires_at: float
    #: What ``start`` asked for: a token scoped to this workspace, with this lifetime.
    workspace: str | None = None
    expires_in: float | None = None
    #: The report (``PROFILE_FIELDS``), once one came.
    profile: dict[str, Any] | None = field(default=None)


def key_owner(key: Any) -> str | None:
    """The worker id a session key names, or ``None`` for something that is no key of ours."""
    if not isinstance(key, str):
        return None
    owner, sep, rest = key.partition("-")
    return owner if sep and owner and rest else None


class LoginSessions:
    """One worker's open sessions. Times are passed in (seconds, any monotonic clock)."""

    def __init__(
        self,
        owner: str,
        *,
        lifetime: float = LOGIN_TIME,
        max_sessions: int = MAX_SESSIONS,
        max_per_caller: int = MAX_SESSIONS_PER_CALLER,
    ) -> None:
        self.owner = owner
        self.lifetime = lifetime
        self.max_sessions = max_sessions
        self.max_per_caller = max_per_caller
        self.sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self.sessions)

    def start(self, caller: str, now: float, workspace: Any = None, expires_in: Any = None) -> Session:
        self.expire(now)
        if workspace is not None and (not isinstance(workspace, str) or not workspace):
            raise LoginError("workspace must be a workspace name")
        lifetime = token_lifetime(expires_in)
        if len(self.sessions) >= self.max_sessions:
            raise LoginError("too many logins in progress on this server: try again later")
        if sum(1 for s in self.sessions.values() if s.caller == caller) >= self.max_per_caller:
            raise LoginError(f"too many logins in progress for {caller}: check or let some expire first")
        key = f"{self.owner}-{secrets.token_hex(16)}"
        session = Session(key, caller, now + self.lifetime, workspace or None, lifetime)
        self.sessions[key] = session
        return session

    def get(self, key: Any, now: float) -> Session:
        """The open session of ``key``; Hypha's words when there is none (or it expired)."""
        session = self.sessions.get(key) if isinstance(key, str) else None
        if session is None or session.expires_at <= now:
            if session is not None:
                del self.sessions[session.key]
            raise LoginError("Invalid key, key does not exist or expired")
        return session

    def report(self, key: Any, profile: dict[str, Any], now: float) -> Session:
        session = self.get(key, now)
        session.profile = profile
        return session

    def take(self, key: Any, now: float) -> dict[str, Any] | None:
        """The report of ``key`` if one came (the session ends), else ``None``."""
        session = self.get(key, now)
        if session.profile is None:
            return None
        del self.sessions[session.key]
        return session.profile

    def expire(self, now: float) -> None:
        for key in [k for k, s in self.sessions.items() if s.expires_at <= now]:
            del self.sessions[key]


def token_lifetime(expires_in: Any) -> float | None:
    """``expires_in`` of ``start``/``report``: ``None`` or a positive number of seconds."""
    if expires_in is None or expires_in == "":
        return None
    if isinstance(expires_in, bool) or not isinstance(expires_in, (int, float)) or not 0 < expires_in < 10**9:
        raise LoginError("expires_in must be a positive number of seconds")
    return float(expires_in)


def profile(token: str, workspace: str | None, expires_in: float | None, **fields: Any) -> dict[str, Any]:
    """A report as ``check(..., profile=True)`` returns it: every field of ``PROFILE_FIELDS``."""
    values = {name: fields.get(name) for name in PROFILE_FIELDS}
    values.update(token=token, workspace=workspace, expires_in=expires_in)
    for name in PROFILE_FIELDS[3:]:
        value = values[name]
        if value is not None and not isinstance(value, (str, bool)):
            raise LoginError(f"{name} must be a string")
    return values


def start_answer(base_url: str, key: str, workspace: str | None, expires_in: float | None) -> dict[str, Any]:
    """What ``start`` returns: the key, the page for the human, and the service's HTTP URLs."""
    service_url = f"{base_url}/{WORKSPACE}/services/{NAME}"
    query = f"?key={key}"
    if workspace:
        query += f"&workspace={workspace}"
    if expires_in:
        query += f"&expires_in={expires_in:g}"
    return {
        "login_url": f"{base_url}/{WORKSPACE}/apps/{NAME}/{query}",
        "key": key,
        "report_url": f"{service_url}/report",
        "check_url": f"{service_url}/check",
    }


def approval_code(secret: str, key: str) -> str:
    """A code only the login page shows for ``key``: an approval that carries it was made from
    the page, not by a foreign page that merely knows the key (the browser's same-origin rule
    keeps the page's content from other origins)."""
    return hmac.new(secret.encode(), b"login-approval:" + key.encode(), hashlib.sha256).hexdigest()


def approval_valid(secret: str, key: str, code: str) -> bool:
    return hmac.compare_digest(approval_code(secret, key), code)


# -- who may approve a login with the local provider -----------------------------------------
PROXY_HEADERS = ("forwarded", "x-forwarded-for", "x-forwarded-host", "x-real-ip")


def is_loopback_address(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def is_loopback_name(host: str) -> bool:
    """A host name or address (without a port) that only ever means this machine."""
    return host.lower() in ("localhost", "localhost.") or is_loopback_address(host)


def host_of(authority: str) -> str:
    """The host of a ``Host`` header or an origin's authority: ``[::1]:9527`` -> ``::1``."""
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def local_refusal(bound_host: str, client_host: str | None, headers: dict[str, str]) -> str | None:
    """Why a request may not approve a local login, or ``None`` when it may: the router listens on
    loopback only, the request came over loopback, names this machine in ``Host`` (no DNS
    rebinding: a foreign name resolved to 127.0.0.1), came through no proxy, and, from a browser,
    from a page of this machine (``Origin``)."""
    if not is_loopback_name(bound_host):
        return f"the local login provider approves logins only on a router bound to loopback, not {bound_host!r}"
    if not is_loopback_address(client_host):
        return "the local login provider approves logins only from this machine"
    if not is_loopback_name(host_of(headers.get("host", ""))):
        return "the Host header must name this machine (localhost, 127.0.0.1 or ::1)"
    if any(headers.get(name) for name in PROXY_HEADERS):
        return "the local login provider does not approve logins through a proxy"
    origin = headers.get("origin", "")
    if origin and origin != "null":
        scheme, _, authority = origin.partition("://")
        if scheme not in ("http", "https") or not is_loopback_name(host_of(authority)):
            return "the approval must come from a page of this machine"
    return None


#: The service's methods for the caller (``_rschema``: ``__schema__`` to a hypha-rpc client).
KEY = Param("key", STRING, "The key `start` returned", required=True)
METHODS: dict[str, Method] = {
    "start": Method(
        "Start a login: a `key` and the `login_url` to open in a browser (also `report_url`, `check_url`).",
        (
            Param("workspace", STRING, "Ask for a token scoped to this workspace"),
            Param("expires_in", {"type": "number"}, "Lifetime of that token, seconds"),
        ),
    ),
    "check": Method(
        "Wait for the login of `key` to finish: its token (or the whole profile). With `timeout` <= 0, "
        "answer at once (`None` while the login is in progress).",
        (
            KEY,
            Param("timeout", {"type": "number"}, "Seconds to wait", default=LOGIN_TIME),
            Param("profile", {"type": "boolean"}, "Return the profile (token, user_id, email, ...)", default=False),
        ),
    ),
    "report": Method(
        "Finish the login of `key` with a token (a rhizomorph token, or a credential the identity "
        "provider accepts); the profile fields are optional.",
        (
            KEY,
            Param("token", STRING, "The token", required=True),
            Param("workspace", STRING, "Scope the token to this workspace"),
            Param("expires_in", {"type": "number"}, "Lifetime of the scoped token, seconds"),
            *(Param(name, {}, "Profile field") for name in PROFILE_FIELDS[3:]),
        ),
    ),
}
