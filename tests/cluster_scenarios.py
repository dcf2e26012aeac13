"""Multi-node scenarios on a Ray cluster simulated on this machine (``ray.cluster_utils.Cluster``).

Run as ``python -m tests.cluster_scenarios`` (tests/test_cluster.py does, in a subprocess: the
test session's own embedded Ray and a Cluster cannot share one process). It builds a 3-node
cluster on 127.0.0.1 with Ray token authentication on, deploys the router with one gateway
worker per node, each node on its own port (``distinct_node_ports``) so a client picks its
node by port, runs the scenarios and prints one line ``CLUSTER_RESULTS <json>``.

Every scenario records what it saw (or the traceback that stopped it); the test asserts.
Every process of the cluster is stopped before exit; their pids are in the results so the
test can check that none is left.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.local_cluster import private_environment

os.environ.setdefault("HYPHA_LOGLEVEL", "ERROR")
_PRIVATE_DIR = private_environment("rzc-")  # before Ray is imported: loopback, a private temp dir, a token

import psutil  # noqa: E402
import ray  # noqa: E402
from hypha_rpc import connect_to_server as connect_v3  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from rhizomorph import Config, Deployment  # noqa: E402
from rhizomorph.client import connect_to_server as connect_v4  # noqa: E402
from tests import cluster_control  # noqa: E402
from tests.cluster_support import FailoverProxy, emit, eventually, rhizomorph, serving  # noqa: E402
from tests.helpers import address  # noqa: E402

NODES = 3
MARKER = "CLUSTER_RESULTS "


class Run:
    """The cluster, the router on it, the clients of the scenarios and what they saw."""

    def __init__(self) -> None:
        self.cluster: Cluster | None = None
        self.nodes: list[Any] = []  # ray._private.node.Node, head first
        self.deployment: Deployment | None = None
        self.clients: list[Any] = []
        self.results: dict[str, Any] = {}
        self.node_args = {
            "num_cpus": 1,
            "node_ip_address": "127.0.0.1",
            "include_dashboard": False,
            "object_store_memory": 80 * 1024 * 1024,
        }

    # -- setup ---------------------------------------------------------------------------------
    def start(self) -> None:
        started = time.monotonic()
        self.cluster = Cluster(initialize_head=True, head_node_args=dict(self.node_args))
        self.nodes = [self.cluster.head_node]
        for _ in range(NODES - 1):
            self.nodes.append(self.cluster.add_node(**self.node_args))
        self.cluster.wait_for_nodes()
        ray.init(address=self.cluster.address, include_dashboard=False, logging_level="WARNING")
        self.results["cluster_start_s"] = round(time.monotonic() - started, 2)
        config = Config(port=0, workers=1, distinct_node_ports=True, health_check_interval=0.5, log_level="WARNING")
        self.deployment = Deployment(config).start()
        self.results["deploy_s"] = round(time.monotonic() - started - self.results["cluster_start_s"], 2)

    def node_url(self, index: int) -> str:
        assert self.deployment is not None
        return self.deployment.node_urls[index]

    def node_id(self, index: int) -> str:
        """The Ray node id of the deployment's node ``index`` (the ``n<index>`` of worker ids)."""
        assert self.deployment is not None
        return next(node_id for node_id, i in self.deployment.nodes.items() if i == index)

    def cluster_node(self, index: int) -> Any:
        """The Cluster's node object for the deployment's node ``index``."""
        return next(node for node in self.nodes if node.node_id == self.node_id(index))

    async def connect(self, url: str, v4: bool = False, **options: Any) -> Any:
        connect = connect_v4 if v4 else connect_v3
        server = await connect({"server_url": url, "method_timeout": 30, **options})
        self.clients.append(server)
        return server

    async def scenario(self, name: str, body: Callable[[dict[str, Any]], Awaitable[None]], timeout: float = 90) -> None:
        seen: dict[str, Any] = {}
        self.results[name] = seen
        started = time.monotonic()
        try:
            await asyncio.wait_for(body(seen), timeout)
        except BaseException:
            seen["error"] = traceback.format_exc()
        seen["duration_s"] = round(time.monotonic() - started, 2)

    def peer_calls(self) -> tuple[int, int]:
        """Ray calls and frames between workers so far, summed over every worker."""
        assert self.deployment is not None
        stats = self.deployment.stats()
        return (sum(sum(s["peer_calls"].values()) for s in stats), sum(sum(s["peer_frames"].values()) for s in stats))

    # -- scenarios -----------------------------------------------------------------------------
    async def placement(self, seen: dict[str, Any]) -> None:
        deployment = self.deployment
        assert deployment is not None
        seen["workers"] = {w: {"node_id": i["node_id"], "port": i["port"]} for w, i in deployment.worker_info.items()}
        seen["node_index"] = dict(deployment.nodes)
        seen["cluster_node_ids"] = [node.node_id for node in self.nodes]
        seen["node_urls"] = deployment.node_urls
        seen["connected_to"] = []
        for index in range(NODES):
            server = await self.connect(self.node_url(index))
            seen["connected_to"].append(server.config.rhizomorph_worker)
            await server.disconnect()
        seen["registry"] = await deployment.registry.summary.remote()

    async def cli_join(self, seen: dict[str, Any]) -> None:
        """``rhizomorph serve --address <cluster> --server-id joined``: a second router joins the
        running cluster (inheriting RAY_AUTH_MODE and the token path), serves, and leaves on Ctrl-C."""
        assert self.cluster is not None
        env = dict(os.environ, RHIZOMORPH_DISTINCT_NODE_PORTS="1", RHIZOMORPH_WORKERS="1")
        proc = await rhizomorph(
            "serve",
            "--address",
            self.cluster.address,
            "--server-id",
            "joined",  # else it attaches to the router already running (the only one)
            "--port",
            "0",
            "--log-level",
            "WARNING",
            env=env,
            merged=True,
        )
        try:
            line = seen["banner"] = await serving(proc, 60)
            url = line.split("serving ", 1)[1].split(" ", 1)[0]
            server = await connect_v3({"server_url": url, "method_timeout": 30})
            seen["worker"] = server.config.rhizomorph_worker
            seen["echo"] = await server.echo("joined")
            await server.disconnect()
            proc.send_signal(signal.SIGINT)
            seen["exit_code"] = await asyncio.wait_for(proc.wait(), 60)
            port = int(url.rsplit(":", 1)[1])

            async def port_closed() -> bool:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    return False
                except OSError:
                    return True

            await eventually(port_closed, timeout=15)
            seen["port_closed"] = True
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async def cross_node_calls(self, seen: dict[str, Any]) -> None:
        pairs = [("v3", 1, "v4", 2), ("v4", 2, "v3", 0), ("v3", 0, "v3", 2), ("v4", 1, "v4", 0)]
        seen["pairs"] = []
        for provider_wire, provider_node, consumer_wire, consumer_node in pairs:
            provider = await self.connect(self.node_url(provider_node), v4=provider_wire == "v4")
            consumer = await self.connect(self.node_url(consumer_node), v4=consumer_wire == "v4")
            await provider.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
            echo = await consumer.get_service(f"{address(provider)}:echo")
            big = os.urandom(300_000)
            ok = (
                await echo.echo("hello") == "hello"
                and await echo.echo(big) == big
                and await asyncio.gather(*(echo.echo(i) for i in range(30))) == list(range(30))
            )
            seen["pairs"].append(
                {
                    "provider": f"{provider_wire}@{provider.config.rhizomorph_worker}",
                    "consumer": f"{consumer_wire}@{consumer.config.rhizomorph_worker}",
                    "ok": ok,
                }
            )

    async def broadcast(self, seen: dict[str, Any]) -> None:
        owner = await self.connect(self.node_url(0))
        workspace = owner.config.workspace
        subscribers: list[tuple[Any, list[Any]]] = []
        bystanders: list[list[Any]] = []
        per_node = 6
        for index in range(NODES):
            for k in range(per_node + 1):
                server = await self.connect(
                    self.node_url(index), v4=k % 2 == 1, workspace=workspace, token=await owner.generate_token()
                )
                got: list[Any] = []
                server.on("tick", lambda message, got=got: got.append(message["data"]))
                if k < per_node:
                    await server.subscribe("tick")
                    subscribers.append((server, got))
                else:
                    bystanders.append(got)  # listens, never subscribes: must get nothing
        seen["subscribers"] = len(subscribers)
        seen["subscriber_workers"] = sorted({s.config.rhizomorph_worker for s, _ in subscribers})
        seen["sender_worker"] = owner.config.rhizomorph_worker
        seen["peer_workers"] = len(self.deployment.workers) - 1

        await asyncio.sleep(0.5)  # let subscription traffic settle
        calls0, frames0 = self.peer_calls()
        paced = 10
        for i in range(paced):
            await emit(owner, {"type": "tick", "to": "*", "data": i})
            await eventually(lambda i=i: all(i in got for _, got in subscribers), timeout=10, interval=0.02)
        calls1, frames1 = self.peer_calls()
        seen["paced"] = {"broadcasts": paced, "ray_calls": calls1 - calls0, "items": frames1 - frames0}

        burst = 200
        await asyncio.gather(*(emit(owner, {"type": "tick", "to": "*", "data": paced + i}) for i in range(burst)))
        total = paced + burst
        await eventually(lambda: all(len(got) >= total for _, got in subscribers), timeout=30)
        await asyncio.sleep(0.3)  # a duplicate would show up now
        calls2, frames2 = self.peer_calls()
        seen["burst"] = {"broadcasts": burst, "ray_calls": calls2 - calls1, "items": frames2 - frames1}
        seen["exactly_once_in_order"] = all(got == list(range(total)) for _, got in subscribers)
        seen["bystanders_received"] = sum(len(got) for got in bystanders)

    async def worker_restart(self, seen: dict[str, Any]) -> None:
        """The worker of node 1 crashes: Ray kills it; the watchdog releases its clients and
        starts a replacement on the same node and port; the clients reconnect and re-register."""
        deployment = self.deployment
        assert deployment is not None
        provider = await self.connect(self.node_url(1))
        watcher = await self.connect(
            self.node_url(0), workspace=provider.config.workspace, token=await provider.generate_token()
        )
        consumer = await self.connect(self.node_url(2))
        calls = {"n": 0}

        def count() -> int:
            calls["n"] += 1
            return calls["n"]

        await provider.register_service({"id": "counter", "config": {"visibility": "public"}, "count": count})
        service_id = f"{address(provider)}:counter"
        counter = await consumer.get_service(service_id)
        assert await counter.count() == 1
        gone: list[str] = []
        watcher.on("client_disconnected", lambda message: gone.append(message["data"]["id"]))
        await watcher.subscribe("client_disconnected")

        victim = provider.config.rhizomorph_worker
        seen["victim"] = victim
        started = time.monotonic()
        ray.kill(deployment.workers[victim], no_restart=True)
        seen["lost_after_s"] = round(
            await eventually(
                lambda: any(e["event"] == "worker_lost" and victim in e["workers"] for e in deployment.events)
            ),
            2,
        )
        await eventually(lambda: deployment.workers_on(self.node_id(1)), timeout=30)
        seen["replaced_after_s"] = round(time.monotonic() - started, 2)
        seen["replacements"] = deployment.workers_on(self.node_id(1))
        seen["same_port"] = deployment.worker_info[seen["replacements"][0]]["port"] == int(
            self.node_url(1).rsplit(":", 1)[1]
        )
        await eventually(lambda: provider.config.client_id in gone, timeout=10)
        seen["client_disconnected_seen"] = True

        async def works_again() -> bool:
            try:
                again = await consumer.get_service(service_id)
                return await again.count() > 1
            except Exception:
                return False

        await eventually(works_again, timeout=30, interval=0.3)
        seen["recovered_after_s"] = round(time.monotonic() - started, 2)
        summary = await deployment.registry.summary.remote()
        seen["registry_workers"] = summary["workers"]
        owners = {s["worker_id"]: s["clients"] for s in deployment.stats()}
        seen["provider_now_on"] = [w for w, clients in owners.items() if address(provider) in clients]
        seen["same_client_id"] = address(provider) == f"{provider.config.workspace}/{provider.config.client_id}"

    async def node_loss(self, seen: dict[str, Any]) -> None:
        """Node 2 goes away: its clients behind the load balancer reconnect to node 0 and work;
        the services of a client that cannot reconnect are gone and calls to it are rejected."""
        deployment = self.deployment
        assert deployment is not None
        ports = {i: int(self.node_url(i).rsplit(":", 1)[1]) for i in range(NODES)}
        proxy = await FailoverProxy([ports[2], ports[0]]).start()
        try:
            await self._node_loss(seen, proxy)
        finally:
            seen["proxy_choices"] = [next(i for i, p in ports.items() if p == port) for port in proxy.choices]
            await proxy.close()

    async def _node_loss(self, seen: dict[str, Any], proxy: FailoverProxy) -> None:
        deployment = self.deployment
        assert deployment is not None
        balanced = {"v3": await self.connect(proxy.url), "v4": await self.connect(proxy.url, v4=True)}
        stranded = await self.connect(self.node_url(2))  # straight to node 2: nowhere to reconnect
        consumer = await self.connect(self.node_url(0))
        colleague = await self.connect(
            self.node_url(0), workspace=stranded.config.workspace, token=await stranded.generate_token()
        )
        seen["before"] = {name: s.config.rhizomorph_worker for name, s in {**balanced, "stranded": stranded}.items()}
        for name, server in balanced.items():
            await server.register_service({"id": f"lb-{name}", "config": {"visibility": "public"}, "echo": lambda x: x})

        async def hang() -> str:
            await asyncio.sleep(120)
            return "late"

        await stranded.register_service(
            {"id": "doomed", "config": {"visibility": "public"}, "echo": lambda x: x, "hang": hang}
        )
        doomed_id = f"{address(stranded)}:doomed"
        doomed = await consumer.get_service(doomed_id)
        assert await doomed.echo(1) == 1
        doomed_in_ws = await colleague.get_service(doomed_id)
        gone: list[str] = []
        colleague.on("client_disconnected", lambda message: gone.append(message["data"]["id"]))
        await colleague.subscribe("client_disconnected")
        lb_ids = {name: f"{address(s)}:lb-{name}" for name, s in balanced.items()}
        for service_id in lb_ids.values():
            assert await (await consumer.get_service(service_id)).echo("x") == "x"
        in_flight = asyncio.ensure_future(doomed_in_ws.hang())
        await asyncio.sleep(0.3)

        started = time.monotonic()
        self.cluster.remove_node(self.cluster_node(2))
        seen["remove_node_s"] = round(time.monotonic() - started, 2)

        # A call right away: rejected (the peer call fails, or the directory no longer has it).
        t = time.monotonic()
        try:
            await doomed.echo(2)
            seen["call_after_loss"] = "answered"
        except Exception as exc:
            seen["call_after_loss"] = str(exc)[:200]
        seen["call_after_loss_s"] = round(time.monotonic() - t, 2)

        seen["lost_after_s"] = round(
            await eventually(
                lambda: any(e["event"] == "worker_lost" and "n2w0" in e["workers"] for e in deployment.events)
            ),
            2,
        )
        try:
            await asyncio.wait_for(in_flight, 10)
            seen["in_flight_call"] = "answered"
        except Exception as exc:
            seen["in_flight_call"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        seen["in_flight_failed_after_s"] = round(time.monotonic() - started, 2)
        await eventually(lambda: stranded.config.client_id in gone, timeout=10)
        seen["client_disconnected_seen"] = True

        t = time.monotonic()
        try:
            await doomed.echo(3)
            seen["call_after_cleanup"] = "answered"
        except Exception as exc:
            seen["call_after_cleanup"] = str(exc)[:200]
        seen["call_after_cleanup_s"] = round(time.monotonic() - t, 2)
        try:
            await consumer.get_service(doomed_id)
            seen["get_service_after"] = "found"
        except Exception as exc:
            seen["get_service_after"] = str(exc)[:200]
        listed = await consumer.list_services(stranded.config.workspace)
        seen["listed_after"] = [s["id"] for s in listed]

        async def recovered(service_id: str) -> bool:
            try:
                return await (await consumer.get_service(service_id)).echo("y") == "y"
            except Exception:
                return False

        for name, service_id in lb_ids.items():
            await eventually(lambda sid=service_id: recovered(sid), timeout=30, interval=0.3)
            seen[f"recovered_{name}_after_s"] = round(time.monotonic() - started, 2)
        owners = {s["worker_id"]: s["clients"] for s in deployment.stats()}
        seen["after"] = {
            name: [w for w, clients in owners.items() if address(s) in clients] for name, s in balanced.items()
        }
        seen["workers_after"] = sorted(deployment.workers)
        seen["registry_after"] = await deployment.registry.summary.remote()
        seen["watchdog"] = [e for e in deployment.events if e["event"] == "worker_lost"]

    # -- teardown ------------------------------------------------------------------------------
    async def close_clients(self) -> None:
        async def close(server: Any) -> None:
            try:
                await asyncio.wait_for(server.disconnect(), 5)
            except BaseException:
                pass

        await asyncio.gather(*(close(s) for s in self.clients))

    def stop(self) -> None:
        self.results["pids"] = [p.pid for p in psutil.Process().children(recursive=True)]
        if self.deployment is not None:
            self.deployment.stop()
        ray.shutdown()
        if self.cluster is not None:
            self.cluster.shutdown()


async def main() -> dict[str, Any]:
    run = Run()
    try:
        run.start()
        await run.scenario("placement", run.placement)
        await run.scenario("cli_join", run.cli_join)
        await run.scenario("cross_node_calls", run.cross_node_calls)
        await run.scenario("broadcast", run.broadcast)
        await run.scenario("worker_restart", run.worker_restart)
        await run.scenario("node_loss", run.node_loss)
        await run.scenario("launcher_killed", lambda seen: cluster_control.launcher_killed(run, seen), 180)
        await run.scenario("control_plane_loss", lambda seen: cluster_control.control_plane_loss(run, seen), 180)
    except BaseException:
        run.results["error"] = traceback.format_exc()
    finally:
        await run.close_clients()
        run.stop()
    return run.results


if __name__ == "__main__":
    try:
        results = asyncio.run(main())
    finally:
        shutil.rmtree(_PRIVATE_DIR, ignore_errors=True)
    print(MARKER + json.dumps(results), flush=True)
    sys.exit(0)
