"""Harness for hypha-rpc's own test suite, run against rhizomorph (``make compat``).

Installed as ``tests/conftest.py`` of the unpacked hypha-rpc sdist by ``compat/run.py``; the
sdist ships its tests without one. Our own code, not taken from hypha-rpc.

One rhizomorph server on 127.0.0.1:3828, started with the real command line
(``python -m rhizomorph serve``, embedded Ray) in its own process group. ``websocket_server``
(session) starts it once; ``restartable_server`` hands the tests the same server, and its
``restart()`` stops that process (SIGTERM, then SIGKILL of the group) and starts a new one, so
everything the router held is gone. A test that left it dead gets a new one.

Settings from ``compat/run.py`` through the environment:
``COMPAT_REPO`` (the rhizomorph checkout to serve), ``COMPAT_WORKERS`` (gateway workers),
``COMPAT_OUT`` (where server logs, start times and the collection record go),
``COMPAT_OUT_OF_SCOPE`` (TOML list of deselected tests with reasons), ``COMPAT_SERVER_ARGS``
(JSON list of more ``rhizomorph serve`` arguments).

WebRTC: hypha-rpc asks Google's public STUN server when no ICE server is configured. The tests
configure none, and this harness keeps all traffic on this machine, so peer connections here
are made without ICE servers (host candidates only); everything else of WebRTC is unchanged.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from . import JWT_SECRET, WS_PORT, WS_SERVER_URL

if "COMPAT_REPO" not in os.environ:
    raise RuntimeError("run hypha-rpc's tests through compat/run.py (make compat): COMPAT_REPO is not set")
REPO = Path(os.environ["COMPAT_REPO"])
WORKERS = int(os.environ.get("COMPAT_WORKERS") or 1)
OUT = Path(os.environ.get("COMPAT_OUT") or REPO / "build" / "compat")
OUT_OF_SCOPE = os.environ.get("COMPAT_OUT_OF_SCOPE") or ""
SERVER_ARGS: list[str] = json.loads(os.environ.get("COMPAT_SERVER_ARGS") or "[]")
READY_LINE = "rhizomorph: serving"
STOP_GRACE = 20.0  # seconds a SIGTERM'd server may take to stop its workers and Ray
#: Seconds a start may take unless the test says (one says 30): generous, as this 2-core machine
#: is shared; each start's time is recorded, and the summary reports them.
START_TIMEOUT = 120.0


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class ServerExited(RuntimeError):
    """The server process ended before it served."""


class RhizomorphServer:
    """One ``rhizomorph serve`` process on a fixed port; ``restart()`` replaces the process."""

    def __init__(self, port: int, workers: int, log_dir: Path) -> None:
        self.port = port
        self.workers = workers
        self.url = f"http://127.0.0.1:{port}"
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self._served = False  # the current process printed its ready line and listens
        self.starts: list[dict[str, Any]] = []

    @property
    def alive(self) -> bool:
        """Running and done starting: a start a test's timeout cut short (pytest-timeout raises
        inside the wait) leaves a process that may not listen yet, which is not alive."""
        return self.process is not None and self.process.poll() is None and self._served

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server; one more try if the process died before serving (embedded Ray's own
        start can time out when the machine is overloaded). Every try is recorded."""
        try:
            self._start_once(timeout)
        except ServerExited:
            self.stop()  # whatever of its process group is left
            self._start_once(timeout)

    def _start_once(self, timeout: float) -> None:
        if self.alive:
            return
        if self.process is not None:
            self.stop()  # a start cut short: begin again rather than guess how far it got
        if _port_open(self.port):
            raise RuntimeError(f"127.0.0.1:{self.port} is taken by another process: cannot start rhizomorph there")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"server-{len(self.starts) + 1:02d}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        env["RHIZOMORPH_JWT_SECRET"] = JWT_SECRET
        env["PYTHONUNBUFFERED"] = "1"
        command = [
            sys.executable,
            "-m",
            "rhizomorph",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            *SERVER_ARGS,
        ]
        started = time.monotonic()
        with open(log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() can end Ray's processes too
            )
        record: dict[str, Any] = {"log": log_path.name, "served": False, "load_avg_1min": round(os.getloadavg()[0], 1)}
        self.starts.append(record)
        try:
            while True:
                if self.process.poll() is not None:
                    record["failure"] = f"exited with {self.process.returncode}"
                    raise ServerExited(
                        f"rhizomorph exited with {self.process.returncode} before serving; see {log_path}"
                    )
                if READY_LINE in log_path.read_text(errors="replace") and _port_open(self.port):
                    break
                if time.monotonic() - started > timeout:
                    record["seconds"] = round(time.monotonic() - started, 2)
                    record["failure"] = f"not serving within {timeout:.0f} s"
                    self.stop()
                    raise RuntimeError(f"rhizomorph did not serve within {timeout:.0f} s; see {log_path}")
                time.sleep(0.1)
            record["served"] = True
            self._served = True
        finally:
            record.setdefault("seconds", round(time.monotonic() - started, 2))
            self._record_starts()

    def stop(self) -> None:
        self._served = False
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever of its group outlived it
        except ProcessLookupError:
            pass
        process.wait()
        deadline = time.monotonic() + 10
        while _port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.1)

    def restart(self, stop_delay: float = 1.0, start_timeout: float = START_TIMEOUT) -> None:
        """Stop the server, wait ``stop_delay`` seconds, start a new one (a new manager id)."""
        self.stop()
        time.sleep(stop_delay)
        self.start(timeout=start_timeout)

    def _record_starts(self) -> None:
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "server_starts.json").write_text(json.dumps(self.starts, indent=1))


_server = RhizomorphServer(WS_PORT, WORKERS, OUT / "server-logs")


@pytest.fixture(scope="session")
def websocket_server() -> Any:
    """rhizomorph serving on ``WS_SERVER_URL`` for the session (started again if a test killed it)."""
    _server.start()
    yield _server
    _server.stop()


@pytest.fixture
def restartable_server(websocket_server: RhizomorphServer) -> RhizomorphServer:
    """The same server, for tests that restart it: ``.port``, ``.restart(stop_delay, start_timeout)``."""
    websocket_server.start()  # a no-op unless an earlier test left it stopped
    return websocket_server


@pytest.fixture(autouse=True)
def _server_alive_for_each_test(request: pytest.FixtureRequest) -> None:
    """A test after one that broke the server still finds one (the breaker fails on its own)."""
    if "websocket_server" in request.fixturenames and not _server.alive:
        _server.start()


def _in_thread(coroutine_function: Any) -> Any:
    """Run a coroutine on a loop of its own (fixtures here are sync; tests own their loops)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = asyncio.run(coroutine_function())
        except BaseException as exc:  # handed to the caller
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


@pytest.fixture
def test_user_token(websocket_server: RhizomorphServer) -> str:
    """A token issued by the running server (``generate_token``) for a fresh user's workspace."""
    from hypha_rpc import connect_to_server

    async def issue() -> str:
        server = await connect_to_server({"server_url": WS_SERVER_URL, "name": "compat token issuer"})
        try:
            return await server.generate_token({"expires_in": 3600})
        finally:
            await server.disconnect()

    return _in_thread(issue)


# -- WebRTC without ICE servers: no traffic off this machine ---------------------------------
def _local_only_webrtc() -> None:
    try:
        import aiortc
        from hypha_rpc import webrtc_client
    except ImportError:
        return

    def configuration(iceServers: Any = None, **kwargs: Any) -> Any:
        return aiortc.RTCConfiguration(iceServers=[], **kwargs)

    webrtc_client.RTCConfiguration = configuration


_local_only_webrtc()


# -- out-of-scope tests: deselected, recorded for the summary --------------------------------
def _out_of_scope() -> dict[str, str]:
    if not OUT_OF_SCOPE:
        return {}
    with open(OUT_OF_SCOPE, "rb") as f:
        return dict(tomllib.load(f).get("out_of_scope", {}))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    listed = _out_of_scope()
    keep, drop = [], []
    for item in items:
        (drop if item.nodeid in listed else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    OUT.mkdir(parents=True, exist_ok=True)
    import hypha_rpc

    record = {
        # The tests import the sdist's own copy of hypha_rpc (its root is first on sys.path).
        "hypha_rpc": {"version": hypha_rpc.__version__, "file": hypha_rpc.__file__},
        "collected": [item.nodeid for item in keep + drop],
        "deselected": {item.nodeid: listed[item.nodeid] for item in drop},
        "stale": sorted(set(listed) - {item.nodeid for item in drop}),
    }
    (OUT / "collection.json").write_text(json.dumps(record, indent=1))
