"""The JavaScript pieces tests need, made as ``make examples`` makes them when they are missing.

- ``clients/js/node_modules``: rhizomorph-client's npm dependencies (hypha-rpc, esbuild-wasm);
- ``clients/js/dist/rhizomorph-client.mjs``: its browser build (``npm run build``), rebuilt when
  a source is newer;
- ``examples/node_modules``: the released hypha-rpc client and the link to clients/js, which
  the gateway serves under ``/lib/``.

npm installs only with ``--no-package-lock``, as the Makefile does. A test is skipped, saying
why, only when node or npm is missing or an install fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLIENT_DIR = REPO / "clients" / "js"
EXAMPLES = REPO / "examples"
HYPHA_JS = EXAMPLES / "node_modules" / "hypha-rpc" / "dist" / "hypha-rpc-websocket.min.js"
BROWSER_BUILD = CLIENT_DIR / "dist" / "rhizomorph-client.mjs"
SERVED_BUILD = EXAMPLES / "node_modules" / "rhizomorph-client" / "dist" / "rhizomorph-client.mjs"
NPM_INSTALL = ["npm", "install", "--no-audit", "--no-fund", "--no-package-lock"]


def run(command: list[str], cwd: Path | None = None, timeout: float = 600) -> tuple[bool, str]:
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    return done.returncode == 0, (done.stdout + done.stderr)[-2000:]


def node() -> str:
    found = shutil.which("node")
    if not found or not shutil.which("npm"):
        pytest.skip("node/npm are missing: cannot run or build the JavaScript client")
    return found


def ensure_client_package() -> Path:
    """clients/js with its npm dependencies installed."""
    node()
    if (
        not (CLIENT_DIR / "node_modules" / "hypha-rpc" / "package.json").is_file()
        or not (CLIENT_DIR / "node_modules" / "esbuild-wasm" / "package.json").is_file()
    ):
        ok, output = run(NPM_INSTALL, cwd=CLIENT_DIR)
        if not ok:
            pytest.skip(f"npm install in clients/js failed: {output}")
    return CLIENT_DIR


def _stale(build: Path) -> bool:
    if not build.is_file():
        return True
    built = build.stat().st_mtime
    sources = [*(CLIENT_DIR / "src").glob("*.js"), CLIENT_DIR / "build.mjs"]
    return any(source.stat().st_mtime > built for source in sources)


def ensure_browser_build() -> Path:
    """The browser build, served by the gateway at /lib/rhizomorph-client.mjs."""
    ensure_client_package()
    if _stale(BROWSER_BUILD):
        ok, output = run(["npm", "run", "--silent", "build"], cwd=CLIENT_DIR)
        if not ok:
            pytest.fail(f"the rhizomorph-client browser build failed: {output}")
    if not HYPHA_JS.is_file() or not SERVED_BUILD.is_file():
        ok, output = run(NPM_INSTALL, cwd=EXAMPLES)
        if not ok or not HYPHA_JS.is_file():
            pytest.skip(f"npm install in examples/ failed: {output}")
    assert SERVED_BUILD.is_file(), "examples/node_modules/rhizomorph-client does not link clients/js"
    return SERVED_BUILD
