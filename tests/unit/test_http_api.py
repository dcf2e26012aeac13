"""The pure side of plain HTTP on the gateway port (rhizomorph/protocol/http_api.py)."""

from __future__ import annotations

import gzip
import json

import msgpack
import pytest

from rhizomorph.protocol import http_api
from rhizomorph.protocol.http_api import ApiRoute, BadRequest, Endpoint


def test_websocket_upgrades_are_told_from_plain_requests() -> None:
    upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 13"
    assert http_api.is_websocket_upgrade(upgrade)
    assert http_api.is_websocket_upgrade(upgrade.replace(b"\r\n", b"\n"))
    assert not http_api.is_websocket_upgrade(b"GET /rpc HTTP/1.1\r\nHost: x\r\nAccept: */*")
    assert not http_api.is_websocket_upgrade(b"POST / HTTP/1.1\r\nUpgrade: websocket")  # upgrades are GETs
    assert not http_api.is_websocket_upgrade(b"GET / HTTP/1.1\r\nUpgrade: h2c")
    assert not http_api.is_websocket_upgrade(b"GET / HTTP/1.1\r\nX-Note: Upgrade: websocket")


def test_head_end_finds_the_blank_line() -> None:
    assert http_api.head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody") == len(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert http_api.head_end(b"GET / HTTP/1.1\nHost: x\n\n") == len(b"GET / HTTP/1.1\nHost: x\n\n")
    assert http_api.head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") == -1


def test_frames_are_length_prefixed() -> None:
    assert http_api.frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert http_api.frame(b"") == b"\x00\x00\x00\x00"


def test_control_messages_are_told_from_rpc_messages() -> None:
    assert http_api.control_type(msgpack.packb({"type": "refresh_token"})) == "refresh_token"
    assert http_api.control_type(msgpack.packb({"type": "ping"})) == "ping"
    assert http_api.control_type(msgpack.packb({"type": "ping", "to": "ws/x"})) is None  # a message
    assert http_api.control_type(msgpack.packb({"type": "method", "to": "x"}) + b"\x80") is None
    assert http_api.control_type(b"\xc1garbage") is None
    assert http_api.control_type(msgpack.packb({"type": "ping", "pad": "x" * 300})) is None


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/ws1/services", ApiRoute(Endpoint.SERVICES_REDIRECT, "ws1")),
        ("/ws1/services/", ApiRoute(Endpoint.SERVICES, "ws1")),
        ("/ws1/services/echo", ApiRoute(Endpoint.SERVICE_INFO, "ws1", "echo")),
        ("/ws1/services/echo/", ApiRoute(Endpoint.SERVICE_INFO, "ws1", "echo")),
        ("/ws1/services/c1:echo/run", ApiRoute(Endpoint.CALL, "ws1", "c1:echo", "run")),
        ("/ws1/services/c1%3Aecho/a.b", ApiRoute(Endpoint.CALL, "ws1", "c1:echo", "a.b")),
        ("/ws1/services/probes/readiness", ApiRoute(Endpoint.CALL, "ws1", "probes", "readiness")),
        ("/ws1/apps/app", ApiRoute(Endpoint.APP_REDIRECT, "ws1", "app")),
        ("/ws1/apps/app/", ApiRoute(Endpoint.APP, "ws1", "app", path="/", raw_path="/")),
        (
            "/ws1/apps/app/v1/a%20b",
            ApiRoute(Endpoint.APP, "ws1", "app", path="/v1/a b", raw_path="/v1/a%20b"),
        ),
    ],
)
def test_service_and_app_urls(path: str, route: ApiRoute) -> None:
    assert http_api.api_route(path) == route


@pytest.mark.parametrize("path", ["/", "/rpc", "/health", "/ws1", "/ws1/", "/ws1/other/x", "//services/", "/ws1/apps/"])
def test_other_paths_are_no_api(path: str) -> None:
    assert http_api.api_route(path) is None


def test_deeper_service_paths_are_no_call() -> None:
    assert http_api.api_route("/ws1/services/s/f/extra") is None


def test_query_arguments_read_numbers_and_objects_as_hypha_does() -> None:
    args = http_api.query_arguments("data=3345&x=1.5&name=abc&obj=%7B%22a%22%3A1%7D&_mode=random&workspace=w&e=")
    assert args == {"data": 3345, "x": 1.5, "name": "abc", "obj": {"a": 1}, "e": ""}
    assert http_api.query_arguments("x=nan&y=inf") == {"x": "nan", "y": "inf"}  # JSON has neither
    with pytest.raises(BadRequest):
        http_api.query_arguments("obj=%7Bnot-json")


def test_body_arguments_in_json_and_msgpack() -> None:
    assert http_api.body_arguments(b'{"a": 1, "_mode": "x"}', "application/json") == ([], {"a": 1})
    assert http_api.body_arguments(b"[1, 2]", "application/json; charset=utf-8") == ([1, 2], {})
    assert http_api.body_arguments(b'"hello"', "") == (["hello"], {})  # no type: JSON
    assert http_api.body_arguments(msgpack.packb({"data": b"\x00\x01"}), "application/msgpack") == (
        [],
        {"data": b"\x00\x01"},
    )
    assert http_api.body_arguments(b"", "application/json") == ([], {})
    for body, kind in [(b"{", "application/json"), (b"\xc1", "application/msgpack"), (b"x", "text/csv")]:
        with pytest.raises(BadRequest):
            http_api.body_arguments(body, kind)


def test_compressed_bodies_are_bounded() -> None:
    data = json.dumps({"data": "x" * 1000}).encode()
    assert http_api.decoded_body(gzip.compress(data), "gzip", 10_000) == data
    assert http_api.decoded_body(data, "", 10) == data  # no encoding: the body limit is the connection's
    with pytest.raises(BadRequest, match="larger than"):
        http_api.decoded_body(gzip.compress(b"\x00" * 1_000_000), "gzip", 10_000)  # a zip bomb stops early
    with pytest.raises(BadRequest):
        http_api.decoded_body(b"not gzip", "gzip", 10_000)
    with pytest.raises(BadRequest):
        http_api.decoded_body(data, "br", 10_000)


def test_msgpack_answers_follow_the_request() -> None:
    assert http_api.wants_msgpack("application/msgpack")
    assert http_api.wants_msgpack("", "application/msgpack")
    assert not http_api.wants_msgpack("application/json", "application/msgpack, application/json")
    assert not http_api.wants_msgpack("", "*/*")


@pytest.mark.parametrize(
    ("message", "status"),
    [
        ("Method call timed out: echo, context: ...", 504),
        ("*/manager-x did not answer services.built-in.get_service in time", 504),
        ("Target peer ws/c is not connected", 502),
        ("ConnectionError: Client disconnected: ws/c", 502),
        ("RemoteError:Service not found: ws/nope", 404),
        ("KeyError: 'x'", 404),
        ("Permission denied for workspace ws", 403),
        ("Traceback ...\nTypeError: add() missing 1 required positional argument", 400),
        ("ValueError: bad", 400),
        ("RuntimeError: boom", 500),
    ],
)
def test_error_statuses(message: str, status: int) -> None:
    assert http_api.status_for_error(message) == status


def test_error_details_drop_remote_tracebacks() -> None:
    message = 'Traceback (most recent call last):\n  File "/srv/app.py", line 3, in f\n    x()\nValueError: bad input'
    assert http_api.safe_detail(message) == "ValueError: bad input"
    assert http_api.safe_detail("plain") == "plain"
    assert json.loads(http_api.error_body("no")) == {"success": False, "detail": "no"}


def test_credentials_from_header_or_cookie() -> None:
    assert http_api.bearer_token("Bearer abc") == "abc"
    assert http_api.bearer_token("bearer  abc ") == "abc"
    assert http_api.bearer_token("Basic abc") is None
    assert http_api.bearer_token("", "a=1; access_token=tok") == "tok"
    assert http_api.bearer_token("Bearer h", "access_token=tok") == "h"
    assert http_api.parse_cookies("a=1; b = 2;bad; c=x=y") == {"a": "1", "b": "2", "c": "x=y"}


def test_stream_cookie_names_are_per_client_and_safe() -> None:
    one, two = http_api.stream_cookie_name("ws/a b;c"), http_api.stream_cookie_name("ws/other")
    assert one != two and one.startswith(http_api.STREAM_COOKIE_PREFIX)
    assert all(c.isalnum() or c == "-" for c in one)


def test_json_answers_are_strict() -> None:
    assert http_api.json_bytes({"a": "é"}) == '{"a":"é"}'.encode()
    for value in (float("nan"), b"bytes"):
        with pytest.raises((ValueError, TypeError)):
            http_api.json_bytes(value)
    assert http_api.sse_event({"i": 1}) == b'data: {"i":1}\n\n'


def test_cors_reflects_the_origin_with_credentials() -> None:
    headers = dict(http_api.cors_headers("http://localhost:3000"))
    assert headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    assert headers["Access-Control-Allow-Credentials"] == "true"
    assert dict(http_api.cors_headers(None))["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in dict(http_api.cors_headers(None))
