"""One ``Config`` object for the whole router, with explicit, documented defaults.

Every field can be set from the CLI (``--port``), or from the environment as
``RHIZOMORPH_<FIELD>`` (``RHIZOMORPH_PORT=9000``). The CLI wins over the environment.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
from dataclasses import dataclass, field
from typing import Any, Mapping

import shortuuid

ENV_PREFIX = "RHIZOMORPH_"


def _default_server_id() -> str:
    return shortuuid.uuid()[:10].lower()


@dataclass
class Config:
    #: Interface the WebSocket gateway listens on.
    host: str = "127.0.0.1"
    #: TCP port shared by all gateway workers of a node (SO_REUSEPORT).
    port: int = 9527
    #: Gateway worker actors per node; ``0`` means one per CPU core.
    workers: int = 0
    #: Address of an existing Ray cluster; empty starts an embedded local Ray on 127.0.0.1.
    ray_address: str = ""
    #: Names the manager peer ``manager-<server_id>``; random per start unless set.
    server_id: str = field(default_factory=_default_server_id)
    #: Secret for the router's JWTs (reconnection and access tokens); random per start unless set.
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    #: Lifetime of reconnection tokens, seconds (Hypha: 2 days).
    reconnection_token_lifetime: float = 172800.0
    #: URL clients are told to use for HTTP; derived from host/port when empty.
    public_base_url: str = ""
    #: Largest inbound WebSocket message, bytes (Hypha accepts 16 MiB; clients need >= 1 MiB).
    max_message_size: int = 16 * 1024 * 1024
    #: How long the manager waits for a client to answer (e.g. the provider in ``get_service``), s.
    manager_call_timeout: float = 30.0
    #: Seconds a client has to send its auth frame after the WebSocket opens.
    handshake_timeout: float = 10.0
    #: Services one client may register (Hypha's HYPHA_MAX_SERVICES_PER_CLIENT).
    max_services_per_client: int = 1000
    #: Enable WebSocket per-message deflate (off: it makes 2 MB messages ~20x slower).
    compression: bool = False
    #: Python logging level of the router processes.
    log_level: str = "INFO"

    @property
    def manager_id(self) -> str:
        return f"manager-{self.server_id}"

    @property
    def base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    def worker_count(self) -> int:
        return self.workers if self.workers > 0 else max(1, os.cpu_count() or 1)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Config":
        """Build a config from ``RHIZOMORPH_*`` variables, then apply explicit overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _coerce(f.type, raw, f.name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _coerce(type_name: Any, raw: str, name: str) -> Any:
    kind = type_name if isinstance(type_name, str) else getattr(type_name, "__name__", str(type_name))
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
    except ValueError:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
