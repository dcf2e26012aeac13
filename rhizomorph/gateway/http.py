"""Plain HTTP on the gateway port: the example pages and the hypha-rpc browser client.

The gateway's HTTP dispatch (``rhizomorph/gateway/server.py``) hands every GET that no other
endpoint takes to ``respond``. It serves files read-only from one folder, the examples (``RHIZOMORPH_EXAMPLES_DIR``,
default: the ``examples/`` folder of this checkout), so ``make serve`` shows the router console
at ``/`` and the other examples beside it on the same port as the WebSocket endpoint:

    /                       -> <examples>/console/index.html (the router console)
    /<name>/...             -> <examples>/<name>/...
    /lib/<file>             -> <examples>/node_modules/rhizomorph-client/dist/<file> (the v4 client's
                               browser build, ``make examples``), else .../hypha-rpc/dist/<file> (``npm install``)

Only GET of known file types is answered; paths are resolved inside their root, so no
``..``, dot-file, absolute path or symlink reaches a file outside it.
"""

from __future__ import annotations

import email.utils
import os
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

EXAMPLES_ENV = "RHIZOMORPH_EXAMPLES_DIR"
DEFAULT_EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"
CLIENT_PREFIX = "/lib/"
#: The folders ``/lib/`` serves, the first that has the file wins: the rhizomorph-client browser
#: build (examples/package.json links ../clients/js) and the released hypha-rpc client it imports.
CLIENT_SUBDIRS = (Path("node_modules") / "rhizomorph-client" / "dist", Path("node_modules") / "hypha-rpc" / "dist")
INDEX_PAGE = Path("console") / "index.html"

# A whitelist: anything else in the folder (Python sources, lock files) is not served.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}

FALLBACK_TEXT = "rhizomorph: a Hypha-compatible RPC router. Connect a hypha-rpc client to ws://<this host>/\n"


def examples_dir() -> Path:
    return Path(os.environ.get(EXAMPLES_ENV) or DEFAULT_EXAMPLES_DIR)


def resolve(root: Path, url_path: str) -> Path | None:
    """The file under ``root`` that ``url_path`` names, or ``None`` if it names none safely.

    Rejected: percent-encoded tricks that decode to ``..``, backslashes or NUL, any segment
    starting with a dot (``..``, ``.git``), and anything whose real path (symlinks followed)
    lies outside ``root``. A path ending in ``/`` means that folder's ``index.html``.
    """
    decoded = unquote(url_path)
    if "\\" in decoded or "\x00" in decoded or not decoded.startswith("/"):
        return None
    parts = [p for p in decoded.split("/") if p]
    if any(p.startswith(".") for p in parts):
        return None
    try:
        real_root = root.resolve(strict=True)
        candidate = real_root.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if candidate.is_dir() and decoded.endswith("/"):
        candidate = candidate / "index.html"  # without the slash: redirected by respond()
    if not candidate.is_relative_to(real_root) or not candidate.is_file():
        return None
    if candidate.suffix.lower() not in CONTENT_TYPES:
        return None
    return candidate


def locate(url_path: str, root: Path | None = None) -> Path | None:
    """Map a request path to a file: the console at ``/``, the JS client under ``/lib/``."""
    root = root or examples_dir()
    if url_path == "/":
        return resolve(root, "/" + INDEX_PAGE.as_posix())
    if url_path.startswith(CLIENT_PREFIX):
        name = "/" + url_path[len(CLIENT_PREFIX) :]
        for subdir in CLIENT_SUBDIRS:
            found = resolve(root / subdir, name)
            if found is not None:
                return found
        return None
    return resolve(root, url_path)


def response(status: HTTPStatus, body: bytes, content_type: str, extra: tuple[tuple[str, str], ...] = ()) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            # Pages change while someone edits them; the browser should ask each time.
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            *extra,
        ]
    )
    return Response(status.value, status.phrase, headers, body)


def respond(request: Request, root: Path | None = None) -> Response:
    """Answer one GET for a static file."""
    path = request.path.split("?", 1)[0].split("#", 1)[0]
    root = root or examples_dir()
    target = locate(path, root)
    if target is None and not path.endswith("/") and locate(path + "/", root) is not None:
        # A folder without its slash: redirect, so the page's relative links resolve inside it.
        # The location is rebuilt from the segments: "//host" must not become a redirect off-site.
        location = "/" + "/".join(p for p in path.split("/") if p) + "/"
        return response(HTTPStatus.MOVED_PERMANENTLY, b"", "text/plain; charset=utf-8", (("Location", location),))
    if target is None:
        if path == "/":  # no examples folder (e.g. an installed wheel): say what this port is
            return response(HTTPStatus.OK, FALLBACK_TEXT.encode(), "text/plain; charset=utf-8")
        return response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
    try:
        body = target.read_bytes()
    except OSError:
        return response(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
    return response(HTTPStatus.OK, body, CONTENT_TYPES[target.suffix.lower()])
