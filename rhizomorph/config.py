"""One ``Config`` object for the whole router, with explicit, documented defaults.

``Config.load`` builds it from these sources, later ones winning:

1. a batching preset (``--preset`` / ``RHIZOMORPH_PRESET``): the three ``batch_*`` fields;
2. a TOML file of fields, at the top level or under ``[rhizomorph]`` (``--config FILE`` /
   ``RHIZOMORPH_CONFIG``);
3. ``RHIZOMORPH_<FIELD>`` environment variables (``RHIZOMORPH_PORT=9000``);
4. keyword overrides: what ``rhizomorph serve`` was given on its command line.

Every field can come from the TOML file or the environment. Only these have a command-line
flag (``rhizomorph/cli.py``): host, port, workers, ray_address (``--address``),
workers_per_cpu, worker_resource, server_id, loop, log_level, log_format, enable_message_batching
(``--batching`` / ``--no-batching``), batch_wait, batch_timeout_ms, batch_max_messages and
batch_max_size. Set the others in the file or the environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import shortuuid

from rhizomorph.protocol.batching import PRESETS, BatchPolicy

ENV_PREFIX = "RHIZOMORPH_"
#: ``Config.worker_allocator``'s choices.
ALLOCATORS = ("pymalloc", "malloc")


def url_host(host: str) -> str:
    """The host part of a URL that reaches a gateway listening on ``host``.

    A wildcard bind is reached through loopback of its own family: ``""`` and ``0.0.0.0`` ->
    ``127.0.0.1``, ``::`` -> ``[::1]`` (an IPv6 wildcard socket takes IPv4 only where the OS
    maps it, so ``::1`` is the address that always answers). IPv6 literals are bracketed, as a
    URL needs (``ws://[::1]:9527``, not ``ws://::1:9527``); names and IPv4 addresses pass as they are.
    """
    if host.startswith("["):
        return host  # already bracketed
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone (fe80::1%eth0) is no part of the test
    except ValueError:
        return host or "127.0.0.1"  # a host name; empty means every IPv4 interface
    if address.version == 4:
        return "127.0.0.1" if address.is_unspecified else host
    return "[::1]" if address.is_unspecified else f"[{host}]"


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
    #: Seconds a worker keeps the messages that are not calls (replies above all) for a client
    #: whose socket closed without the client closing it, waiting for hypha-rpc's reconnect
    #: (docs/protocol.md); calls to it are refused at once all the same. ``0``: nothing kept.
    reconnect_grace: float = 5.0
    #: URL clients are told to use for HTTP; derived from host/port when empty.
    public_base_url: str = ""
    #: Largest inbound WebSocket message, bytes (Hypha accepts 16 MiB; clients need >= 1 MiB).
    max_message_size: int = 16 * 1024 * 1024
    #: How long the manager waits for a client to answer (e.g. the provider in ``get_service``), s.
    manager_call_timeout: float = 30.0
    #: Longest an HTTP service call (``/{ws}/services/{sid}/{fn}``) or an app's first answer
    #: may take, seconds; then 504. hypha-rpc's heartbeats keep a slow call alive, not past this.
    http_call_timeout: float = 120.0
    #: Seconds a client has to send its auth frame after the WebSocket opens.
    handshake_timeout: float = 10.0
    #: Services one client may register (Hypha's HYPHA_MAX_SERVICES_PER_CLIENT).
    max_services_per_client: int = 1000
    #: Per-target batching of small messages (see rhizomorph/protocol/batching.py for the flush rules).
    enable_message_batching: bool = True
    #: What a busy target's batch waits for: ``socket`` (it leaves as soon as the socket is
    #: free) or ``timer`` (it waits for ``batch_max_messages`` / ``batch_max_size`` company, at
    #: most ``batch_timeout_ms``: the hypha-rpc batching report's rule).
    batch_wait: str = "socket"
    #: With ``batch_wait = "timer"``: how long a message may wait in a busy target's batch, ms.
    batch_timeout_ms: float = 10.0
    #: A busy target's batch is flushed when it holds this many messages.
    batch_max_messages: int = 10
    #: ... or this many bytes; a message this large or larger bypasses the batch.
    batch_max_size: int = 32768
    #: Accept API v4 clients (several messages per frame); v3 clients are unaffected.
    enable_v4: bool = True
    #: Bytes queued for one client before it is evicted as a slow consumer (close 4001); 0: no bound.
    max_queue_bytes: int = 64 * 1024 * 1024
    #: Seconds one write to a client may stay blocked before it is evicted (close 4001); 0: none.
    write_timeout: float = 30.0
    #: How messages travel between two gateway workers of the same node: ``socket`` (a direct
    #: Unix socket, found through Ray) or ``ray`` (actor calls). Other nodes always use Ray calls.
    peer_channel: str = "socket"
    #: The event loop of the router's actors: ``auto`` (uvloop, a dependency, whenever it is
    #: importable, else asyncio), ``uvloop`` (an error if it is not installed) or ``asyncio`` (the
    #: standard library's). On uvloop the router spent less CPU per call (benchmarks/targets.md, "uvloop").
    loop: str = "auto"
    #: Enable WebSocket per-message deflate. Off by default: deflating every message costs CPU on
    #: both ends, most on large ones (benchmarks/targets.md, "Numbers behind the code's comments").
    compression: bool = False
    #: Python logging level of the router processes.
    log_level: str = "INFO"
    #: ``text`` or ``json`` (one JSON object per line: time, level, logger, message, extra fields).
    log_format: str = "text"
    #: Clients one gateway worker holds; more are refused with close 1013 (try again later).
    #: ``0`` = unlimited. See docs/security.md.
    max_connections_per_worker: int = 10000
    #: Inbound frames per second per connection (token bucket refill); over it: close 1008.
    #: Generous on purpose (Hypha: 200/s) so benchmarks never hit it; ``0`` disables it.
    message_rate: float = 20000.0
    #: Token bucket capacity: frames a connection may send at once before the rate applies.
    message_burst: int = 40000
    #: Registry lookups per second one connection may cause by calling targets missing from the
    #: worker's directory replica (targets that do not exist, mostly); over it such calls are
    #: rejected without a lookup (docs/protocol.md). ``0`` disables the budget.
    unknown_target_lookup_rate: float = 50.0
    #: ... and how many such lookups it may cause at once before the rate applies.
    unknown_target_lookup_burst: int = 200
    #: Seconds a worker remembers that the registry found no owner for a target: calls to it
    #: are rejected meanwhile without asking again. ``0``: never remembered.
    unknown_target_cache_ttl: float = 1.0
    #: Targets remembered per client for telling it at once when one of them leaves for good
    #: (``peer_not_found``); past it the oldest is forgotten (a call to it then ends at its timeout).
    max_tracked_targets_per_client: int = 1000
    #: Seconds without any inbound data frame before the router closes the socket (1001), as
    #: Hypha; hypha-rpc clients send a text ping every 20-30 s. ``0`` disables it.
    idle_timeout: float = 600.0
    #: With ``workers = 0``: gateway workers per CPU of each node (Ray's ``CPU`` resource of the
    #: node), rounded down, at least one per node. ``0`` (the default): one per CPU, but a single
    #: worker on a node of 2 CPUs or fewer, where the clients and Ray's own processes need the
    #: other core (measured: benchmarks/targets.md). See docs/deploy.md.
    workers_per_cpu: float = 0.0
    #: If set, gateway workers run only on nodes advertising this Ray custom resource
    #: (``ray start --resources='{"gateway": 4}'``), one worker per unit (``workers`` caps it).
    worker_resource: str = ""
    #: If set, the router's controller and registry run only on nodes advertising this Ray
    #: custom resource, and move to another such node if theirs is lost; by default they run on
    #: the head node, whose loss ends the cluster anyway (docs/deploy.md).
    control_resource: str = ""
    #: Seconds between the watchdog's looks at Ray's nodes (a dead actor it learns at once, from
    #: the call each holds open); a lost or missing worker starts a health check: a dead worker's
    #: clients are released and announced, its peers told; missing workers are started on alive
    #: nodes, including nodes that joined later. ``0`` disables the watchdog.
    health_check_interval: float = 1.0
    #: Each node gets its own port (node ``i`` listens on ``port + i``; with ``port = 0`` each
    #: node picks a free one) instead of the same port everywhere. For several nodes simulated
    #: on one machine (tests, benchmarks).
    distinct_node_ports: bool = False
    #: The gateway workers' memory allocator for Python objects: ``pymalloc`` (Python's own, the
    #: default) or ``malloc`` (``PYTHONMALLOC=malloc`` for the worker processes only: every
    #: object from glibc's heap, which the worker trims after a wave of departures, so the memory
    #: of thousands of closed connections goes back to the system; pymalloc keeps most of it for
    #: reuse). ``malloc`` costs CPU per message (benchmarks/README.md, "After 5000 connections close").
    worker_allocator: str = "pymalloc"

    #: Who proves a user's identity to the ``public/hypha-login`` service (hypha-rpc's ``login()``):
    #: ``local`` (this machine's user, approved on a loopback page), ``none`` (no login service),
    #: or ``package.module:Attribute`` (rhizomorph/gateway/login_providers.py; docs/security.md).
    login_provider: str = "local"
    #: The user id the ``local`` provider logs in as; empty: the user running the router.
    login_local_user: str = ""

    @property
    def manager_id(self) -> str:
        return f"manager-{self.server_id}"

    @property
    def base_url(self) -> str:
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return f"http://{url_host(self.host)}:{self.port}"

    def worker_env_vars(self) -> dict[str, str]:
        """Environment variables the gateway worker processes start with (``worker_allocator``)."""
        if self.worker_allocator == "pymalloc":
            return {}
        if self.worker_allocator == "malloc":
            return {"PYTHONMALLOC": "malloc"}
        raise ValueError(f"unknown worker_allocator {self.worker_allocator!r}: choose one of {', '.join(ALLOCATORS)}")

    def batch_policy(self) -> BatchPolicy:
        return BatchPolicy(
            enabled=self.enable_message_batching,
            timeout_ms=self.batch_timeout_ms,
            max_messages=self.batch_max_messages,
            max_size=self.batch_max_size,
            wait=self.batch_wait,
        )

    def with_preset(self, name: str) -> Config:
        """Apply a batching preset: ``latency``, ``balanced`` (the defaults) or ``throughput``."""
        if name not in PRESETS:
            raise ValueError(f"unknown batching preset {name!r}: choose from {', '.join(PRESETS)}")
        preset = PRESETS[name]
        return self.replace(
            batch_timeout_ms=preset.timeout_ms, batch_max_messages=preset.max_messages, batch_max_size=preset.max_size
        )

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    @classmethod
    def load(
        cls,
        path: str | None = None,
        environ: Mapping[str, str] | None = None,
        preset: str | None = None,
        **overrides: Any,
    ) -> Config:
        """Build a config. Later sources win: a batching preset, a TOML file, ``RHIZOMORPH_*``
        variables, then explicit overrides (the CLI)."""
        environ = os.environ if environ is None else environ
        preset = preset or environ.get(ENV_PREFIX + "PRESET")
        values: dict[str, Any] = {}
        if preset:
            values.update(_batch_fields(PRESETS.get(preset) or _unknown_preset(preset)))
        path = path or environ.get(ENV_PREFIX + "CONFIG")
        if path:
            values.update(_read_file(path))
        names = {f.name: f for f in dataclasses.fields(cls)}
        for name, f in names.items():
            raw = environ.get(ENV_PREFIX + name.upper())
            if raw is not None:
                values[name] = _coerce(f.type, raw, name)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Config:
        """Build a config from ``RHIZOMORPH_*`` variables, then apply explicit overrides."""
        return cls.load(environ=environ, **overrides)


def _batch_fields(policy: BatchPolicy) -> dict[str, Any]:
    return {
        "batch_timeout_ms": policy.timeout_ms,
        "batch_max_messages": policy.max_messages,
        "batch_max_size": policy.max_size,
    }


def _unknown_preset(name: str) -> BatchPolicy:
    raise ValueError(f"unknown batching preset {name!r}: choose from {', '.join(PRESETS)}")


def _read_file(path: str) -> dict[str, Any]:
    """A TOML file of Config fields, at the top level or under ``[rhizomorph]``."""
    with open(path, "rb") as handle:
        data = tomllib.load(handle)
    data = data.get("rhizomorph", data)
    known = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown config field(s): {', '.join(unknown)}")
    return data


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
