"""A registry killed with ``kill -9`` comes back with every client and service of the workers.

Ray restarts the registry actor (``max_restarts=-1``); the new one rebuilds its directory and
service table from the workers' shares before it answers (rhizomorph/actors/registry.py). The
clients are the released hypha-rpc ones; none of them reconnects meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from rhizomorph import Config, Deployment
from tests.helpers import eventually, on_two_workers


def public(name: str) -> dict:
    return {"id": name, "config": {"visibility": "public"}, "echo": lambda x: x}


def full_id(server, name: str) -> str:
    return f"{server.config.workspace}/{server.config.client_id}:{name}"


@pytest.fixture
async def deployment(ray_runtime):
    deployment = Deployment(Config(port=0, workers=2, health_check_interval=0.5, log_level="WARNING")).start()
    yield deployment
    deployment.stop()


@pytest.fixture
def clients(deployment, connect):
    """Released hypha-rpc clients of ``deployment`` (closed after the test by ``connect``)."""

    async def to_deployment(**options):
        return await connect(deployment.url, method_timeout=60, **options)

    return to_deployment


async def test_kill_9_of_the_registry_keeps_every_service_of_connected_clients(ray_runtime, deployment, clients):
    first, second = await on_two_workers(clients)
    assert first.config.rhizomorph_worker != second.config.rhizomorph_worker
    for server, name in ((first, "one"), (second, "two")):
        await server.register_service(public(name))
    colleague = await clients(workspace=first.config.workspace, token=await first.generate_token())
    await colleague.register_service(public("three"))
    consumer = await clients()
    # A client that leaves while the registry is down: its departure is announced once, its service gone.
    leaver = await clients(workspace=first.config.workspace, token=await first.generate_token())
    await leaver.register_service(public("leaving"))
    departed: list[str] = []
    first.on("client_disconnected", lambda message: departed.append(message["data"]["id"]))
    await first.subscribe("client_disconnected")
    ids = {name: full_id(s, name) for s, name in ((first, "one"), (second, "two"), (colleague, "three"))}
    everything = {"workspace": "*", "visibility": "public"}
    listed_public = await consumer.list_services("public")
    before = await deployment.registry.summary.remote()

    registry = deployment.registry
    pid = await registry.pid.remote()
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    leaving = asyncio.ensure_future(leaver.disconnect())

    # Right away, while Ray restarts the registry and it rebuilds: the lookups wait, then find.
    service = await consumer.get_service(ids["one"])
    assert await service.echo("after") == "after"
    looked_up_after = time.monotonic() - killed
    await leaving
    listed = {s["id"] for s in await consumer.list_services(everything)}
    assert set(ids.values()) <= listed
    assert await consumer.list_services("public") == listed_public
    in_workspace = {s["id"].rsplit(":", 1)[1] for s in await colleague.list_services()}
    assert {"one", "three"} <= in_workspace
    for service_id in ids.values():
        assert await (await consumer.get_service(service_id)).echo(service_id) == service_id

    summary = await registry.summary.remote()
    assert summary["pid"] != pid and summary["state"] == "ready"
    assert summary["epoch"] > before["epoch"]
    assert summary["last_rebuild"]["workers"] == sorted(deployment.workers)
    assert summary["workers"] == before["workers"]
    assert summary["clients"] == before["clients"] - 1  # all but the leaver
    await eventually(lambda: leaver.config.client_id in departed, timeout=20)
    await asyncio.sleep(0.5)
    assert departed.count(leaver.config.client_id) == 1
    assert not any(s.endswith(":leaving") for s in listed)
    with pytest.raises(Exception, match="not found"):
        await consumer.get_service(full_id(leaver, "leaving"))

    # New registrations and connections work, and so do the directory pushes of the new registry.
    newcomer = await clients()
    await newcomer.register_service(public("fresh"))
    assert await (await consumer.get_service(full_id(newcomer, "fresh"))).echo(1) == 1
    assert await (await newcomer.get_service(ids["two"])).echo(2) == 2
    await second.unregister_service("two")
    with pytest.raises(Exception, match="not found"):
        await consumer.get_service(ids["two"])
    print(f"get_service answered {looked_up_after:.2f} s after the kill; rebuild {summary['last_rebuild']}")


@pytest.mark.slow
async def test_a_registry_killed_for_good_is_replaced_and_rebuilt(ray_runtime, deployment, clients):
    import ray

    provider = await clients()
    await provider.register_service(public("kept"))
    consumer = await clients()
    old = deployment.registry
    ray.kill(old, no_restart=True)  # Ray will not restart it: the controller's health check makes a new one
    await eventually(lambda: any(e["event"] == "registry_replaced" for e in deployment.events), timeout=30)
    assert await (await consumer.get_service(full_id(provider, "kept"))).echo("back") == "back"
    summary = await deployment.registry.summary.remote()
    assert summary["last_rebuild"]["workers"] == sorted(deployment.workers) and summary["clients"] == 2
    newcomer = await clients()  # claims and directory pushes of the new registry reach every worker
    await newcomer.register_service(public("fresh"))
    assert await (await provider.get_service(full_id(newcomer, "fresh"))).echo(1) == 1
