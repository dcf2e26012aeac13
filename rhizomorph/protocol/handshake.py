"""The connection handshake (sans-I/O): auth frame in, identity and ``connection_info`` out.

Order of precedence, as in Hypha: ``reconnection_token``, then ``token``, then anonymous.
Tokens are JWTs (HS256) signed with the router's secret, so every gateway worker can verify
them without a round trip.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import shortuuid

RECONNECTION = "reconnection"
ACCESS = "access"
PERMISSION_LEVELS = {"r": 1, "rw": 2, "a": 3}
MAX_AUTH_FRAME = 16 * 1024


class HandshakeError(Exception):
    """The handshake is refused; ``message`` is sent to the client in an error frame."""


@dataclass(slots=True)
class AuthRequest:
    client_id: str | None = None
    workspace: str | None = None
    token: str | None = None
    reconnection_token: str | None = None
    #: API version of the wire the client asks for: 4 opts in to batch frames (rhizomorph's v4).
    wire_protocol: int = 3


@dataclass(slots=True)
class Identity:
    """Who a connection is: the server stamps these on every frame it forwards."""

    workspace: str
    client_id: str
    user_id: str
    is_anonymous: bool
    roles: list[str] = field(default_factory=list)
    workspaces: dict[str, str] = field(default_factory=dict)
    email: str | None = None
    expires_at: float | None = None

    @property
    def address(self) -> str:
        return f"{self.workspace}/{self.client_id}"

    def permission(self, workspace: str) -> str | None:
        return self.workspaces.get(workspace) or self.workspaces.get("*")

    def can(self, workspace: str, level: str) -> bool:
        granted = self.permission(workspace)
        return granted is not None and PERMISSION_LEVELS[granted] >= PERMISSION_LEVELS[level]

    def user_info(self) -> dict[str, Any]:
        """The ``user`` dict stamped on frames (JSON-serialisable: the JS client deep-copies it)."""
        return hypha_user(
            self.user_id,
            roles=self.roles,
            is_anonymous=self.is_anonymous,
            workspace=self.workspace,
            workspaces=self.workspaces,
            client_id=self.client_id,
            email=self.email,
            expires_at=self.expires_at,
        )


def hypha_user(
    user_id: str,
    *,
    roles: list[str],
    is_anonymous: bool,
    workspace: str,
    workspaces: dict[str, str],
    client_id: str | None,
    email: str | None = None,
    expires_at: float | None = None,
) -> dict[str, Any]:
    """A user as Hypha describes one to clients (``context["user"]``, ``connection_info``)."""
    return {
        "id": user_id,
        "roles": list(roles),
        "is_anonymous": is_anonymous,
        "scope": {
            "current_workspace": workspace,
            "workspaces": dict(workspaces),
            "client_id": client_id,
            "extra_scopes": None,
        },
        "email": email,
        "parent": None,
        "expires_at": expires_at,
        "current_workspace": workspace,
    }


def parse_auth(text: str | bytes) -> AuthRequest:
    """Parse the first (text) frame. Raises ``HandshakeError`` on anything but a JSON object."""
    if isinstance(text, bytes):
        raise HandshakeError("the first frame must be a text frame with the JSON auth object")
    if len(text) > MAX_AUTH_FRAME:
        raise HandshakeError("auth frame too large")
    try:
        data = json.loads(text)
    except ValueError:
        raise HandshakeError("the first frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise HandshakeError("the auth frame must be a JSON object")
    values = {}
    for key in ("client_id", "workspace", "token", "reconnection_token"):
        value = data.get(key)
        if value is not None and not isinstance(value, str):
            raise HandshakeError(f"'{key}' must be a string")
        values[key] = value or None
    client_id = values["client_id"]
    if client_id is not None and not valid_name(client_id):
        raise HandshakeError("invalid client_id: it must not contain '/', ':', '*' or whitespace")
    workspace = values["workspace"]
    if workspace is not None and not valid_name(workspace):
        raise HandshakeError("invalid workspace name")
    wire = data.get("wire_protocol", 3)
    if not isinstance(wire, int) or isinstance(wire, bool):
        raise HandshakeError("'wire_protocol' must be an integer")
    return AuthRequest(**values, wire_protocol=wire)


def valid_name(name: str) -> bool:
    """A client id or workspace name: 1-256 characters, none of ``/ : * @`` or whitespace."""
    return 0 < len(name) <= 256 and not any(c in name for c in "/:*@ \t\r\n")


class TokenIssuer:
    """Signs and verifies the router's JWTs (reconnection and access tokens)."""

    def __init__(self, secret: str, issuer: str = "rhizomorph") -> None:
        self._secret = secret
        self._issuer = issuer

    def issue(
        self, identity: Identity, *, kind: str, lifetime: float, now: float | None = None, client_id: str | None = None
    ) -> str:
        now = time.time() if now is None else now
        claims = {
            "iss": self._issuer,
            "typ": kind,
            "sub": identity.user_id,
            "anon": identity.is_anonymous,
            "roles": identity.roles,
            "email": identity.email,
            "ws": identity.workspaces,
            "cws": identity.workspace,
            "iat": int(now),
            "exp": int(now + lifetime),
            "jti": secrets.token_hex(8),
        }
        if client_id is not None:
            claims["cid"] = client_id
        return jwt.encode(claims, self._secret, algorithm="HS256")

    def verify(self, token: str, *, kind: str) -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=["HS256"],
                issuer=self._issuer,
                options={"require": ["exp", "sub", "typ"]},
            )
        except jwt.ExpiredSignatureError:
            raise HandshakeError(f"the {kind} token has expired") from None
        except jwt.PyJWTError as exc:
            raise HandshakeError(f"invalid {kind} token: {exc}") from None
        if claims.get("typ") != kind:
            raise HandshakeError(f"invalid {kind} token: wrong token type")
        return claims


def anonymous_identity(client_id: str) -> Identity:
    user_id = f"anonymouz-{shortuuid.uuid()[:12].lower()}"
    workspace = f"ws-user-{user_id}"
    return Identity(
        workspace=workspace,
        client_id=client_id,
        user_id=user_id,
        is_anonymous=True,
        roles=["anonymous"],
        workspaces={workspace: "a"},
        expires_at=None,
    )


def authenticate(request: AuthRequest, issuer: TokenIssuer) -> tuple[Identity, bool]:
    """Resolve who is connecting. Returns ``(identity, is_reconnect)``."""
    if request.reconnection_token:
        claims = issuer.verify(request.reconnection_token, kind=RECONNECTION)
        identity = _identity_from_claims(claims, claims.get("cid") or "")
        if request.client_id and request.client_id != identity.client_id:
            raise HandshakeError("the reconnection token belongs to another client id")
        if request.workspace and request.workspace != identity.workspace:
            raise HandshakeError("the reconnection token belongs to another workspace")
        return identity, True

    client_id = request.client_id or shortuuid.uuid()
    if request.token:
        claims = issuer.verify(request.token, kind=ACCESS)
        identity = _identity_from_claims(claims, client_id)
        if claims.get("cid") and claims["cid"] != client_id:
            raise HandshakeError("the token is bound to another client id")
    else:
        identity = anonymous_identity(client_id)

    if request.workspace and request.workspace != identity.workspace:
        if not identity.can(request.workspace, "r"):
            # Hypha's words (hypha/core/store.py); the router cannot tell the two cases apart.
            raise HandshakeError(f"Workspace {request.workspace} does not exist or is not accessible")
        identity.workspace = request.workspace
    return identity, False


def _identity_from_claims(claims: dict[str, Any], client_id: str) -> Identity:
    """An identity from verified claims. Even a token we signed is checked for shape: a bad one
    is a ``HandshakeError``, never a crash."""
    workspaces = claims.get("ws") or {}
    if not isinstance(workspaces, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v in PERMISSION_LEVELS for k, v in workspaces.items()
    ):
        raise HandshakeError("invalid token: bad workspace permissions")
    workspace, user_id, roles = claims.get("cws"), claims.get("sub"), claims.get("roles") or []
    if not isinstance(workspace, str) or not workspace or not client_id:
        raise HandshakeError("invalid token: no workspace or client id")
    if not isinstance(user_id, str) or not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise HandshakeError("invalid token: bad user or roles")
    email, expires = claims.get("email"), claims.get("exp")
    if (email is not None and not isinstance(email, str)) or not isinstance(expires, (int, float)):
        raise HandshakeError("invalid token: bad email or expiry")
    return Identity(
        workspace=workspace,
        client_id=client_id,
        user_id=user_id,
        is_anonymous=bool(claims.get("anon")),
        roles=list(roles),
        workspaces=dict(workspaces),
        email=email,
        expires_at=float(expires),
    )


def connection_info(
    identity: Identity,
    *,
    manager_id: str,
    public_base_url: str,
    server_version: str,
    reconnection_token: str,
    token_lifetime: float,
    worker_id: str,
    wire_protocol: int = 3,
) -> dict[str, Any]:
    """The ``connection_info`` text frame that completes the handshake (docs/wire-protocol.md, 2.3).

    ``wire_protocol`` is included only when the client opted in to v4 and the router agreed:
    released clients never see it.
    """
    info = {
        "type": "connection_info",
        "hypha_version": server_version,
        "public_base_url": public_base_url,
        "local_base_url": public_base_url,
        "manager_id": manager_id,
        "workspace": identity.workspace,
        "client_id": identity.client_id,
        "user": identity.user_info(),
        "reconnection_token": reconnection_token,
        "reconnection_token_life_time": token_lifetime,
        # Not part of Hypha's reply: which gateway worker holds this socket (for ops and tests).
        "rhizomorph_worker": worker_id,
    }
    if wire_protocol >= 4:
        info["wire_protocol"] = 4
    return info


def error_frame(message: str) -> str:
    """The text frame that tells a client the router refused something (hypha-rpc reports it)."""
    return json.dumps({"type": "error", "message": message})
