"""Shared fixtures: one embedded Ray runtime per test session, and routers on it.

Ray is started once (3-5 s, ~600 MB); each router is a registry actor plus gateway
workers on a free port of 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Property tests check behaviour, not timing: no per-example deadline on a shared 2-core machine.
settings.register_profile("rhizomorph", deadline=None)
settings.load_profile("rhizomorph")

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # embedded Ray on 127.0.0.1 only

from benchmarks.wire import RawPeer  # noqa: E402
from rhizomorph import Config, Deployment, ensure_ray  # noqa: E402


@pytest.fixture(scope="session")
def ray_runtime():
    import ray

    started = ensure_ray(num_cpus=2)
    yield ray
    if started:
        ray.shutdown()


def _deploy(**config: Any) -> Deployment:
    return Deployment(Config(port=0, **config)).start()


@pytest.fixture(scope="session")
def router(ray_runtime):
    """A router with one gateway worker."""
    deployment = _deploy(workers=1)
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session")
def router2(ray_runtime):
    """A router with two gateway workers sharing one port."""
    deployment = _deploy(workers=2)
    yield deployment
    deployment.stop()


@pytest.fixture(scope="session")
def router2_ray(ray_runtime):
    """Two gateway workers linked by Ray calls, as workers on two nodes are: chunks of large
    v4 messages between them go through the node's chunking actor."""
    deployment = _deploy(workers=2, peer_channel="ray")
    yield deployment
    deployment.stop()


@pytest.fixture
async def connect(router):
    """Connect real hypha-rpc clients (``v4=True``: rhizomorph's v4 client) to ``router`` (or
    another URL); all are closed after the test."""
    clients = []

    async def _connect(url: str | None = None, *, v4: bool = False, **options: Any):
        if v4:
            from rhizomorph.client import connect_to_server
        else:
            from hypha_rpc import connect_to_server
        server = await connect_to_server({"server_url": url or router.url, "method_timeout": 20, **options})
        clients.append(server)
        return server

    yield _connect
    for server in clients:
        try:
            await asyncio.wait_for(server.disconnect(), 5)
        except Exception:
            pass


@pytest.fixture
async def raw_peers():
    """Connect raw protocol clients (``benchmarks.wire.RawPeer``) to any URL, with
    ``RawPeer.connect``'s options; all are closed after the test, however it ends."""
    clients: list[RawPeer] = []

    async def _connect(url: str, **options: Any) -> RawPeer:
        client = await RawPeer.connect(url, **options)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        await client.close()


@pytest.fixture
async def raw(router, raw_peers):
    """Connect raw protocol clients (``benchmarks.wire.RawPeer``) to ``router``, at ``path``, with
    the auth fields given (``token``, ``workspace``, ``reconnection_token``, ``wire_protocol``);
    all are closed after the test."""

    async def _connect(path: str = "/", **auth: Any) -> RawPeer:
        return await raw_peers(router.url + path, timeout=10, **auth)

    return _connect


REPO_UNIT = Path(__file__).resolve().parent / "unit"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Pure unit tests first: they fail fast, and they run before the session's Ray runtime
    starts its threads and processes (the README's order)."""
    items.sort(key=lambda item: REPO_UNIT not in item.path.parents)
