"""The workspace manager's API as data (sans-I/O): one table of its methods.

The table says which methods the manager serves and describes each for the caller: the
description goes out as ``_rdoc`` and the whole entry as ``_rschema``, which hypha-rpc exposes
as the function's ``__schema__`` (``{"name", "description", "parameters"}``, parameters as a
JSON schema object, the shape Hypha's ``schema_method`` produces). hypha-rpc reads it: with
``webrtc`` on, ``connect_to_server`` copies ``get_service.__schema__`` into its own wrapper.
The caller's identity is not a parameter: the router supplies it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

_NO_DEFAULT: Any = object()


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    #: The JSON schema of the value (``{"type": "string"}``), without description or default.
    schema: dict[str, Any]
    description: str
    required: bool = False
    default: Any = _NO_DEFAULT

    def property_schema(self) -> dict[str, Any]:
        schema = {**self.schema, "description": self.description}
        if self.default is not _NO_DEFAULT:
            schema["default"] = self.default
        return schema


@dataclass(frozen=True, slots=True)
class Method:
    description: str
    params: tuple[Param, ...] = ()

    def schema(self, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "description": self.description,
            "parameters": {
                "type": "object",
                "properties": {p.name: p.property_schema() for p in self.params},
                "required": [p.name for p in self.params if p.required],
            },
        }


STRING: dict[str, Any] = {"type": "string"}
OBJECT: dict[str, Any] = {"type": "object"}
SERVICE_ID = Param(
    "service_id",
    STRING,
    "`name`, `workspace/name`, `client:name` or `workspace/client:name` (an `@app` suffix is ignored); "
    "`~` is the manager itself",
    required=True,
)
SELECTION = {
    "mode": Param(
        "mode",
        STRING,
        "Which provider when several serve the name: `exact` (default; several is an error, except in "
        "workspace `public`, where `random` is), `random`, `first`, `last`, `native:random` (prefer "
        "providers on the caller's gateway worker), `min_load` (the lowest `get_load()`), or "
        "`select:<min|max|first_success>:<function>`",
    ),
    "select_timeout": Param(
        "select_timeout", {"type": "number"}, "Seconds each provider has to answer a probing mode", default=2.0
    ),
}
EVENT_TYPE = Param(
    "event_type",
    {"anyOf": [STRING, {"type": "array", "items": STRING}]},
    "An event type or a list of them",
    required=True,
)

#: Every method of the manager, in the order the manager's service lists them.
METHODS: dict[str, Method] = {
    "register_service": Method(
        "Register a service of the calling client.",
        (
            Param("service", OBJECT, "The service info: id, name, type, config and its functions", required=True),
            Param("config", OBJECT, "Registration options (e.g. overwrite)"),
        ),
    ),
    "unregister_service": Method(
        "Unregister a service of the calling client.",
        (Param("service_id", STRING, "The id of the service", required=True),),
    ),
    "get_service": Method(
        "Get a service by id, with its functions callable on the provider.",
        (
            SERVICE_ID,
            Param(
                "config",
                {
                    "type": "object",
                    "properties": {
                        **{name: p.property_schema() for name, p in SELECTION.items()},
                        "timeout": Param(
                            "timeout", {"type": "number"}, "Seconds the provider has to answer", default=30.0
                        ).property_schema(),
                        "case_conversion": Param(
                            "case_conversion",
                            {"enum": ["camel", "snake", "camel+snake", "snake+camel"]},
                            "Rename the service's keys to camelCase, snake_case or both",
                        ).property_schema(),
                    },
                },
                "Options for finding and fetching the service",
            ),
        ),
    ),
    "get_service_info": Method(
        "The registered info of a service (no call to its provider).",
        (
            SERVICE_ID,
            Param(
                "config",
                {"type": "object", "properties": {name: p.property_schema() for name, p in SELECTION.items()}},
                "Options for finding the service",
            ),
        ),
    ),
    "list_services": Method(
        "List services: of the caller's workspace, another workspace by name, a pattern over full ids, "
        "or a query dict (workspace, client_id, service_id, type, visibility).",
        (Param("query", {"anyOf": [STRING, OBJECT]}, "A workspace name, a pattern or a dict of filters"),),
    ),
    "list_clients": Method(
        "The clients connected to a workspace (default: the caller's).",
        (Param("workspace", STRING, "The workspace"),),
    ),
    "subscribe": Method("Receive broadcast events of these types sent in the caller's workspace.", (EVENT_TYPE,)),
    "unsubscribe": Method("Stop receiving events of these types.", (EVENT_TYPE,)),
    "echo": Method("Return the argument unchanged.", (Param("data", {}, "Any value", required=True),)),
    "ping": Method(
        "Ping a client through its built-in service: `pong`, or `Failed to ping client …` with the reason.",
        (
            Param("client_id", STRING, "`client` or `workspace/client`", required=True),
            Param("timeout", {"type": "number"}, "Seconds to wait for the answer", default=5),
        ),
    ),
    "log": Method("Write a message to the router's log.", (Param("msg", STRING, "The message", required=True),)),
    "generate_token": Method(
        "A signed token for the caller's user, scoped to one workspace.",
        (
            Param(
                "config",
                {
                    "type": "object",
                    "properties": {
                        "workspace": {"type": "string", "description": "Default: the caller's workspace"},
                        "permission": {
                            "enum": ["r", "rw", "a", "read", "read_write", "admin"],
                            "description": "Default: rw",
                        },
                        "expires_in": {"type": "number", "description": "Lifetime in seconds (default 3600)"},
                        "client_id": {"type": "string", "description": "Bind the token to one client id"},
                    },
                },
                "Token options",
            ),
        ),
    ),
    "get_router_stats": Method(
        "The router's own metrics: per worker, connections, frames in, refusals, disconnects, "
        "delivery totals since start (messages, flushes by reason, batch sizes) and per-target "
        "batching of the caller's workspaces (other targets are counted, not named)."
    ),
}

#: The manager's ``built-in`` service: what hypha-rpc's chunked sending calls.
BUILTIN_METHODS: dict[str, Method] = {
    "ping": Method("Answer `pong`.", (Param("msg", STRING, "Anything", required=True),)),
    "get_service": Method(
        "The manager's services: `default` (the manager) or `built-in` (this one).",
        (Param("service_id", STRING, "`default` or `built-in`", required=True),),
    ),
    "message_cache.create": Method(
        "Open a message that arrives in chunks.",
        (
            Param("key", STRING, "The message's key", required=True),
            Param("heartbeat", {"type": "boolean"}, "Ignored (the manager keeps no session timers)", default=False),
            Param("overwrite", {"type": "boolean"}, "Replace an open message of the same key", default=False),
        ),
    ),
    "message_cache.append": Method(
        "Add the next chunk.",
        (Param("key", STRING, "The message's key", required=True), Param("data", {}, "Bytes", required=True)),
    ),
    "message_cache.set": Method(
        "Set the chunk at an index.",
        (
            Param("key", STRING, "The message's key", required=True),
            Param("index", {"type": "integer"}, "The chunk's index, from 0", required=True),
            Param("data", {}, "Bytes", required=True),
        ),
    ),
    "message_cache.process": Method(
        "Join the chunks in index order and handle the message they make.",
        (Param("key", STRING, "The message's key", required=True),),
    ),
    "message_cache.remove": Method(
        "Drop an open message.", (Param("key", STRING, "The message's key", required=True),)
    ),
}


def schema(name: str, table: dict[str, Method] | None = None) -> dict[str, Any]:
    """The ``_rschema`` of a method (its name is the last part of a dotted path)."""
    method = (METHODS if table is None else table)[name]
    return method.schema(name.rsplit(".", 1)[-1])
