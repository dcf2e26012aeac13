"""Static files (rhizomorph/gateway/http.py) without a router: what is served, what is refused
(paths outside the root, hidden files, links, unknown types). tests/test_examples_browser.py asks
a running router."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from websockets.datastructures import Headers
from websockets.http11 import Request

from rhizomorph.gateway import http as gateway_http


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "site"
    (root / "console").mkdir(parents=True)
    (root / "console" / "index.html").write_text("<p>console</p>")
    (root / "demo").mkdir()
    (root / "demo" / "index.html").write_text("<p>demo</p>")
    (root / "demo" / "app.js").write_text("1;")
    (root / "demo" / "producer.py").write_text("secret = 1")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.html").write_text("hidden")
    dist = root / "node_modules" / "hypha-rpc" / "dist"
    dist.mkdir(parents=True)
    (dist / "hypha-rpc-websocket.min.js").write_text("var hyphaWebsocketClient;")
    (dist.parent / "package.json").write_text('{"secret": 1}')
    # npm links rhizomorph-client (file:../clients/js): a symlink to a folder outside the root.
    linked = tmp_path / "clients-js"
    (linked / "dist").mkdir(parents=True)
    (linked / "dist" / "rhizomorph-client.mjs").write_text('import "./hypha-rpc-websocket.mjs";')
    (linked / "package.json").write_text('{"secret": 2}')
    (root / "node_modules" / "rhizomorph-client").symlink_to(linked)
    (tmp_path / "outside.html").write_text("outside")
    (root / "demo" / "link.html").symlink_to(tmp_path / "outside.html")
    return root


def _get(root: Path, path: str) -> Any:
    return gateway_http.respond(Request(path, Headers()), root)


def test_static_serves_pages_console_and_js_client(site: Path) -> None:
    assert _get(site, "/").body == b"<p>console</p>"
    page = _get(site, "/demo/?x=1")
    assert (page.status_code, page.body) == (200, b"<p>demo</p>")
    assert page.headers["Content-Type"].startswith("text/html")
    script = _get(site, "/demo/app.js")
    assert script.headers["Content-Type"].startswith("text/javascript")
    client = _get(site, "/lib/hypha-rpc-websocket.min.js")
    assert (client.status_code, client.body) == (200, b"var hyphaWebsocketClient;")
    v4_client = _get(site, "/lib/rhizomorph-client.mjs")
    assert (v4_client.status_code, v4_client.body) == (200, b'import "./hypha-rpc-websocket.mjs";')
    assert v4_client.headers["Content-Type"].startswith("text/javascript")
    moved = _get(site, "/demo")
    assert (moved.status_code, moved.headers["Location"]) == (301, "/demo/")
    # "//demo" must not redirect to a host named demo.
    assert _get(site, "//demo").headers["Location"] == "/demo/"


@pytest.mark.parametrize(
    "path",
    [
        "/../outside.html",
        "/demo/../../outside.html",
        "/%2e%2e/outside.html",
        "/demo/%2e%2e/%2e%2e/outside.html",
        "/..%2foutside.html",
        "/demo/..%5c..%5coutside.html",
        "/demo\\..\\..\\outside.html",
        "/%00",
        "/.hidden/x.html",
        "/demo/link.html",
        "/demo/producer.py",
        "/lib/../../../console/index.html",
        "/lib/%2e%2e/%2e%2e/%2e%2e/console/index.html",
        "/lib/../package.json",
        "/lib/%2e%2e/package.json",
        "/lib/package.json",
        "/missing.html",
        "/etc/passwd",
        "//etc/passwd",
    ],
)
def test_static_refuses_paths_outside_the_root_and_unknown_types(site: Path, path: str) -> None:
    response = _get(site, path)
    assert response.status_code == 404, path
    assert b"outside" not in response.body and b"secret" not in response.body


def test_static_without_examples_folder_says_what_the_port_is(tmp_path: Path) -> None:
    response = _get(tmp_path / "absent", "/")
    assert response.status_code == 200 and b"hypha-rpc client" in response.body
