"""Multi-node scenarios of the control plane: a killed launcher, a lost control-plane node.

Run by tests/cluster_scenarios.py on its simulated cluster (``run`` is its ``Run``); each
scenario records what it saw in ``seen`` and tests/test_cluster.py asserts.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import ray

from rhizomorph import Config, Deployment
from rhizomorph.actors import naming
from tests.cluster_support import eventually, rhizomorph, serving
from tests.helpers import address

LAUNCHER_ID = "clikill"
CONTROL_LOSS_ID = "ctlloss"


async def port_open(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 90) -> tuple[int, str, str]:
    """Run ``python -m rhizomorph <args>`` to the end: (exit code, stdout, stderr)."""
    proc = await rhizomorph(*args, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return proc.returncode or 0, out.decode(), err.decode()


def json_line(out: str) -> dict[str, Any]:
    return json.loads(next(line for line in out.splitlines() if line.startswith("{")))


async def launcher_killed(run: Any, seen: dict[str, Any]) -> None:
    """``rhizomorph serve --address`` dies of SIGKILL: the router it started keeps serving (its
    controller is a detached actor) and keeps watching its workers; ``status`` shows it,
    ``start`` attaches to it, ``stop`` ends it."""
    cluster_address = run.cluster.address
    env = dict(
        os.environ,
        RHIZOMORPH_DISTINCT_NODE_PORTS="1",
        RHIZOMORPH_WORKERS="1",
        RHIZOMORPH_HEALTH_CHECK_INTERVAL="0.5",
    )
    common = ("--address", cluster_address, "--server-id", LAUNCHER_ID)
    proc = await rhizomorph("serve", *common, "--port", "0", "--log-level", "WARNING", env=env, merged=True)
    try:
        seen["banner"] = await serving(proc)
        url = seen["banner"].split("serving ", 1)[1].split(" ", 1)[0]
        provider = await run.connect(url)
        await provider.register_service({"id": "kept", "config": {"visibility": "public"}, "echo": lambda x: x})
        consumer = await run.connect(url)
        kept = await consumer.get_service(f"{address(provider)}:kept")
        assert await kept.echo("before") == "before"

        proc.kill()
        seen["launcher_exit"] = await proc.wait()
        await asyncio.sleep(2.0)  # four health-check periods with no launcher
        seen["echo_after_kill"] = await kept.echo("after")
        newcomer = await run.connect(url)
        seen["newcomer_echo"] = await (await newcomer.get_service(f"{address(provider)}:kept")).echo("new")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    code, out, err = await cli("status", "--json", *common, env=env)
    assert code == 0, err[-2000:]
    seen["status"] = json_line(out)

    # The watchdog outlived the launcher: a worker killed now is released and replaced.
    victim = naming.worker_name(LAUNCHER_ID, "n1w0")
    ray.kill(naming.get(victim), no_restart=True)
    router = Deployment.attach(LAUNCHER_ID)
    seen["replaced_after_s"] = round(
        await eventually(
            lambda: any(e["event"] == "workers_started" and "n1w1" in e["workers"] for e in router.events),
            timeout=60,
        ),
        2,
    )
    seen["events"] = [e["event"] for e in router.events]

    code, _, err = await cli("start", "--address", cluster_address, env=env)  # two routers run: which?
    seen["ambiguous_start"] = {"exit": code, "err": err.strip().splitlines()[-1] if err.strip() else ""}
    code, out, err = await cli("start", *common, env=env)
    seen["attach"] = {"exit": code, "banner": out.strip().splitlines()[-1] if out.strip() else err[-500:]}

    ports = [int(u.rsplit(":", 1)[1]) for u in seen["status"]["urls"]]
    seen["ports_open_before_stop"] = [await port_open(p) for p in ports]
    code, out, err = await cli("stop", *common, env=env)
    seen["stop"] = {"exit": code, "out": out.strip(), "err": err[-500:] if code else ""}
    seen["ports_closed_after_s"] = round(await eventually(lambda: _all_closed(ports), timeout=30), 2)
    seen["actors_left"] = naming.named_actors(naming.router_prefix(LAUNCHER_ID))
    code, out, _ = await cli("status", *common, env=env)
    seen["status_after_stop"] = {"exit": code, "out": out.strip()}


async def _all_closed(ports: list[int]) -> bool:
    return not any([await port_open(p) for p in ports])


async def control_plane_loss(run: Any, seen: dict[str, Any]) -> None:
    """The node holding a router's controller and registry is lost: Ray starts both on another
    node; the registry rebuilds from the workers and the controller takes them back. Lookups
    made meanwhile wait and then find every service of the clients on the surviving nodes."""
    # The control plane may run on nodes with the resource "control": first only the doomed
    # node has it, then a second node joins that has it too.
    node = run.cluster.add_node(**run.node_args, resources={"control": 1})
    run.nodes.append(node)
    run.cluster.wait_for_nodes()
    config = Config(
        port=0,
        workers=1,
        distinct_node_ports=True,
        health_check_interval=0.5,
        log_level="WARNING",
        server_id=CONTROL_LOSS_ID,
        control_resource="control",
    )
    router = Deployment(config).start()
    try:
        run.nodes.append(run.cluster.add_node(**run.node_args, resources={"control": 1}))
        run.cluster.wait_for_nodes()
        await eventually(lambda: len(router.workers) == 4, timeout=60)  # the new node's worker
        await _control_plane_loss(run, seen, router, node)
    finally:
        router.stop()


async def _control_plane_loss(run: Any, seen: dict[str, Any], router: Deployment, node: Any) -> None:
    before = await router.registry.summary.remote()
    state = router._refresh()
    seen["control_on_doomed_node"] = before["node_id"] == state["controller_node"] == node.node_id
    seen["workers_before"] = sorted(router.workers)
    urls = router.node_urls[:3]  # n0 is the controller's (doomed) node; n3 the second "control" node
    doomed_client = await run.connect(urls[0])
    await doomed_client.register_service({"id": "doomed", "config": {"visibility": "public"}, "echo": lambda x: x})
    providers = [await run.connect(url) for url in urls[1:]]
    for index, provider in enumerate(providers):
        await provider.register_service({"id": f"p{index}", "config": {"visibility": "public"}, "echo": lambda x: x})
    consumer = await run.connect(urls[1])
    ids = [f"{address(p)}:p{i}" for i, p in enumerate(providers)]
    everything = {"workspace": "*", "visibility": "public"}

    started = time.monotonic()
    run.cluster.remove_node(node)
    service = await consumer.get_service(ids[0])  # waits for the new registry, then finds
    seen["lookup_answered_after_s"] = round(time.monotonic() - started, 2)
    seen["echo"] = await service.echo("survived")
    seen["listed"] = sorted(s["id"] for s in await consumer.list_services(everything))
    seen["ids"] = ids
    seen["found_all"] = [await (await consumer.get_service(i)).echo(i) == i for i in ids]
    newcomer = await run.connect(urls[2])
    await newcomer.register_service({"id": "fresh", "config": {"visibility": "public"}, "echo": lambda x: x})
    seen["fresh"] = await (await consumer.get_service(f"{address(newcomer)}:fresh")).echo("fresh")
    try:
        await consumer.get_service(f"{address(doomed_client)}:doomed")
        seen["doomed_lookup"] = "found"
    except Exception as exc:
        seen["doomed_lookup"] = str(exc)[:200]

    after = await router.registry.summary.remote()
    seen["registry"] = {
        "moved": after["node_id"] != node.node_id,
        "state": after["state"],
        "epoch_before": before["epoch"],
        "epoch_after": after["epoch"],
        "last_rebuild": after["last_rebuild"],
    }

    async def controller_back() -> bool:
        state = router._refresh()
        return state["restarted"] and "n0w0" not in state["workers"]

    await eventually(controller_back, timeout=60, interval=0.5)
    state = router._refresh()
    seen["controller"] = {
        "moved": state["controller_node"] != node.node_id,
        "workers": sorted(state["workers"]),
        "events": [e["event"] for e in state["events"]],
        "back_after_s": round(time.monotonic() - started, 2),
    }
