"""Plain HTTP on the gateway port, sans-I/O: which requests are WebSocket upgrades, the framing
of hypha-rpc's HTTP transport, and the request and response shapes of Hypha's HTTP API.

The I/O lives in ``rhizomorph/gateway/http_server.py`` (the connection), ``http_rpc.py`` (the
transport at ``/rpc``), ``http_services.py`` and ``http_apps.py`` (services and apps); the
endpoints are described in docs/protocol.md ("HTTP").
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, unquote

import msgpack

#: Largest request head (request line and headers) read before the request is refused, bytes.
MAX_HEAD = 16 * 1024
MSGPACK = "application/msgpack"
JSON = "application/json"
#: Content type of the transport's downstream: 4-byte big-endian length, then one msgpack message.
STREAM_CONTENT_TYPE = "application/x-msgpack-stream"
SSE_CONTENT_TYPE = "text/event-stream"
#: Query and body keys that name the call itself, never an argument (as in Hypha).
RESERVED_KEYS = frozenset({"workspace", "service_id", "function_key", "_mode"})
#: Control messages a transport client POSTs instead of an RPC message.
CONTROL_TYPES = frozenset({"ping", "refresh_token"})
#: Cookie that binds a transport client's POSTs to its stream (one per client address).
STREAM_COOKIE_PREFIX = "rhizomorph-rpc-"
SSE_DONE = b"data: [DONE]\n\n"


class BadRequest(ValueError):
    """A request whose arguments cannot be read: answered with 400 and the message."""


def head_end(buffer: bytes | bytearray) -> int:
    """Where the request head in ``buffer`` ends (the index after its blank line), or -1."""
    end = buffer.find(b"\r\n\r\n")
    if end >= 0:
        return end + 4
    end = buffer.find(b"\n\n")  # bare line feeds: h11 reads them too
    return end + 2 if end >= 0 else -1


def is_websocket_upgrade(head: bytes | bytearray) -> bool:
    """Whether a request head asks for a WebSocket: a GET with ``Upgrade: websocket``."""
    lines = bytes(head).replace(b"\r\n", b"\n").split(b"\n")
    if not lines[0].startswith(b"GET "):
        return False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"upgrade":
            return b"websocket" in value.lower()
    return False


def frame(message: bytes) -> bytes:
    """One message of the transport's downstream (``STREAM_CONTENT_TYPE``)."""
    return len(message).to_bytes(4, "big") + message


def control_type(body: bytes) -> str | None:
    """The type of a transport control message (``{"type": "ping"}``, ``{"type":
    "refresh_token"}``), or ``None`` for anything else (an RPC message has a ``to``)."""
    if len(body) > 256:
        return None
    try:
        message = msgpack.Unpacker(raw=False, max_buffer_size=512)
        message.feed(body)
        value = message.unpack()
    except Exception:
        return None
    if isinstance(value, dict) and "to" not in value and value.get("type") in CONTROL_TYPES:
        return str(value["type"])
    return None


# -- credentials -------------------------------------------------------------------------------
def parse_cookies(header: str) -> dict[str, str]:
    cookies: dict[str, str] = {}
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            cookies[name.strip()] = value.strip()
    return cookies


def bearer_token(authorization: str, cookie_header: str = "") -> str | None:
    """The caller's token: ``Authorization: Bearer <token>``, else the ``access_token`` cookie
    (as in Hypha)."""
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return parse_cookies(cookie_header).get("access_token") or None


def stream_cookie_name(address: str) -> str:
    """The cookie name for a transport client: one per address, so clients of one browser page
    do not overwrite each other's cookie (client ids may hold characters a name may not)."""
    return STREAM_COOKIE_PREFIX + hashlib.sha256(address.encode()).hexdigest()[:16]


# -- Hypha's service and app URLs ----------------------------------------------------------------
class Endpoint(Enum):
    SERVICES_REDIRECT = "services-redirect"  # /{ws}/services -> /{ws}/services/
    SERVICES = "services"  # /{ws}/services/
    SERVICE_INFO = "service-info"  # /{ws}/services/{sid}
    CALL = "call"  # /{ws}/services/{sid}/{function}
    APP_REDIRECT = "app-redirect"  # /{ws}/apps/{sid} -> /{ws}/apps/{sid}/
    APP = "app"  # /{ws}/apps/{sid}/{path...}


@dataclass(frozen=True, slots=True)
class ApiRoute:
    endpoint: Endpoint
    workspace: str
    service_id: str = ""
    function: str = ""
    #: An app's sub-path: decoded, and as sent (ASGI's ``path`` and ``raw_path``).
    path: str = ""
    raw_path: str = ""


def api_route(path: str) -> ApiRoute | None:
    """The service or app endpoint a request path names, or ``None``."""
    segments = path.split("/")
    if len(segments) < 3 or segments[0] != "" or not segments[1]:
        return None
    workspace, kind, rest = unquote(segments[1]), segments[2], segments[3:]
    if kind == "services":
        if not rest:
            return ApiRoute(Endpoint.SERVICES_REDIRECT, workspace)
        if rest == [""]:
            return ApiRoute(Endpoint.SERVICES, workspace)
        service_id = unquote(rest[0])
        if not service_id or len(rest) > 2:
            return None
        if len(rest) == 1 or rest[1] == "":
            return ApiRoute(Endpoint.SERVICE_INFO, workspace, service_id)
        return ApiRoute(Endpoint.CALL, workspace, service_id, unquote(rest[1]))
    if kind == "apps" and rest and rest[0]:
        service_id = unquote(rest[0])
        if len(rest) == 1:
            return ApiRoute(Endpoint.APP_REDIRECT, workspace, service_id)
        raw = "/" + "/".join(rest[1:])
        return ApiRoute(Endpoint.APP, workspace, service_id, path=unquote(raw), raw_path=raw)
    return None


# -- arguments -----------------------------------------------------------------------------------
def _normalize(value: str) -> Any:
    """A query value as Hypha reads it: digits are an int, a number a float, ``{...}`` JSON."""
    if value.isnumeric():
        return int(value)
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None and math.isfinite(number):
        return number
    if value.startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            raise BadRequest(f"Invalid JSON in query parameter: {value[:100]}") from None
    return value


def query_params(query: str) -> dict[str, str]:
    return dict(parse_qsl(query, keep_blank_values=True))


def query_arguments(query: str) -> dict[str, Any]:
    """Keyword arguments of a GET call: every query parameter but the reserved ones."""
    return {k: _normalize(v) for k, v in parse_qsl(query, keep_blank_values=True) if k not in RESERVED_KEYS}


def decoded_body(body: bytes, content_encoding: str, limit: int) -> bytes:
    """The request body after ``Content-Encoding: gzip`` (or ``deflate``), at most ``limit`` bytes."""
    encoding = content_encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding: {encoding}")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"the body is not valid {encoding}: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise BadRequest(f"the decompressed body is larger than {limit} bytes")
    return data


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def body_arguments(body: bytes, content_type: str) -> tuple[list[Any], dict[str, Any]]:
    """Positional and keyword arguments of a POST call. An object is keyword arguments (the
    reserved keys dropped), an array positional arguments, any other value the one argument."""
    if not body:
        return [], {}
    kind = media_type(content_type) or JSON
    try:
        if kind == MSGPACK:
            value = msgpack.unpackb(body, raw=False, strict_map_key=False)
        elif kind == JSON:
            value = json.loads(body)
        else:
            raise BadRequest("Invalid content-type (supported types: application/msgpack, application/json)")
    except BadRequest:
        raise
    except Exception as exc:
        raise BadRequest(f"Invalid request body: {exc}") from None
    if isinstance(value, dict):
        return [], {str(k): v for k, v in value.items() if k not in RESERVED_KEYS}
    if isinstance(value, list):
        return value, {}
    if value is None or isinstance(value, (str, int, float, bool, bytes)):
        return [value], {}
    raise BadRequest(f"Invalid body for a service call: {type(value).__name__}")


def wants_msgpack(content_type: str, accept: str = "") -> bool:
    """Whether the answer is msgpack: the request body's type says so (as in Hypha), or Accept."""
    return media_type(content_type) == MSGPACK or (MSGPACK in accept.lower() and JSON not in accept.lower())


# -- answers -------------------------------------------------------------------------------------
def json_bytes(value: Any) -> bytes:
    """JSON as Starlette's JSONResponse writes it; raises ``ValueError``/``TypeError`` if it cannot."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


def sse_event(value: Any) -> bytes:
    return b"data: " + json_bytes(value) + b"\n\n"


def error_body(detail: str) -> bytes:
    return json_bytes({"success": False, "detail": detail})


def safe_detail(message: str) -> str:
    """An error message without the remote traceback it may carry: its last meaningful line."""
    if "Traceback" not in message and 'File "' not in message:
        return message
    for line in reversed(message.strip().splitlines()):
        line = line.strip()
        if line and not line.startswith(("File ", "^", "~")):
            return line
    return "An internal error occurred"


def error_detail(exc: BaseException) -> str:
    """An exception as the ``detail`` of an HTTP error body."""
    return safe_detail(f"{type(exc).__name__}: {exc}")


def status_for_error(message: str) -> int:
    """The HTTP status of a failed call, from its error message (Hypha's mapping, plus 504 for a
    call that ran out of time and 502 for a provider that is gone)."""
    lower = message.lower()
    if lower.startswith("method call timed out") or "did not answer" in lower or "timed out after" in lower:
        return 504
    if "is not connected" in lower or "client disconnected:" in lower:
        return 502
    if "keyerror:" in lower or "not found" in lower:
        return 404
    if "permissionerror:" in lower or "permission denied" in lower:
        return 403
    if any(kind in message for kind in ("TypeError:", "ValueError:", "AssertionError:")):
        return 400
    return 500


def cors_headers(origin: str | None, requested_headers: str = "") -> list[tuple[str, str]]:
    """What Hypha's service and app endpoints answer a browser: any origin, with credentials."""
    headers = [
        ("Access-Control-Allow-Origin", origin or "*"),
        ("Access-Control-Allow-Methods", "GET,POST,PUT,DELETE,OPTIONS"),
        ("Access-Control-Allow-Headers", requested_headers or "Authorization,Content-Type"),
        ("Access-Control-Expose-Headers", "Content-Disposition"),
    ]
    if origin:
        headers += [("Access-Control-Allow-Credentials", "true"), ("Vary", "Origin")]
    return headers
