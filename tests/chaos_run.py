"""The chaos run: a crowd of clients calls and emits while the router's parts are killed in turn.

Run as ``python -m tests.chaos_run`` (tests/test_chaos.py does, in a subprocess: the test
session's embedded Ray and a Ray cluster of our own cannot share one process). It starts a
one-node Ray cluster (``ray.cluster_utils.Cluster``, token auth, a private temp dir), then the
router as a user does, ``rhizomorph serve --address <cluster>`` in a subprocess, with two gateway
workers linked by Ray calls (``peer_channel = "ray"``, as workers on two nodes are: the chunks of
large v4 messages between them go through the node's chunking actor). The crowd
(tests/chaos_clients.py's traffic in tests/crowd.py's processes, ``CHAOS_CLIENTS`` clients over
``CHAOS_PROCESSES`` processes) connects,
and then, one phase each:

- ``calm``: nothing is killed (what the counts look like without faults);
- ``launcher``: ``kill -9`` of the ``rhizomorph serve`` process; every later phase runs without it;
- ``chunking``: ``kill -9`` of the chunking actor's process while it relays (Ray starts it again);
- ``registry``: ``kill -9`` of the registry actor's process (Ray restarts it; it rebuilds);
- ``worker``: ``kill -9`` of the gateway worker holding the most connections.

After each kill the run waits (at most ``RECOVERY_BOUND``) until every client is connected again
and every service of a connected client is listed by the manager (``list_services`` of an
observer client); what is still missing then is lost. The crowd's call and event counts per
phase come at the end. One line ``CHAOS_RESULTS <json>`` is printed; the test asserts.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
import traceback
from typing import Any

from benchmarks.local_cluster import private_environment

_PRIVATE_DIR = private_environment("rzx-")  # before Ray is imported
os.environ.setdefault("HYPHA_LOGLEVEL", "ERROR")

import psutil  # noqa: E402
import ray  # noqa: E402
from hypha_rpc import connect_to_server  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from rhizomorph import Deployment  # noqa: E402
from rhizomorph.actors import naming  # noqa: E402
from rhizomorph.actors.chunking import relay_name  # noqa: E402
from tests import chaos_clients  # noqa: E402
from tests.cluster_support import rhizomorph, serving  # noqa: E402
from tests.crowd import Crowd  # noqa: E402

MARKER = "CHAOS_RESULTS "
SERVER_ID = "chaos"
CLIENTS = int(os.environ.get("CHAOS_CLIENTS", "200"))
PROCESSES = int(os.environ.get("CHAOS_PROCESSES", "4"))
#: Seconds of traffic per phase, counted from its kill.
PHASE_SECONDS = float(os.environ.get("CHAOS_PHASE_SECONDS", "15"))
#: Seconds a phase may take to recover: every client connected, every service listed.
RECOVERY_BOUND = 30.0
#: Where the crowd processes' stderr goes (kept only if set: else the private dir, removed).
LOG_DIR = os.environ.get("CHAOS_LOG_DIR") or _PRIVATE_DIR
#: The launcher goes first: every later kill happens with no launcher. The worker goes last:
#: its clients reconnect to the other worker, after which no two v4 clients sit on different
#: workers and chunks no longer need the chunking actor.
PHASES = ("calm", "launcher", "chunking", "registry", "worker")


class Run:
    def __init__(self) -> None:
        self.cluster: Cluster | None = None
        self.launcher: asyncio.subprocess.Process | None = None
        self.router: Deployment | None = None
        self.crowd: Crowd | None = None
        self.observer: Any = None
        self.results: dict[str, Any] = {"clients": CLIENTS, "processes": PROCESSES, "phases": {}}

    # -- setup ---------------------------------------------------------------------------------
    async def start(self) -> None:
        started = time.monotonic()
        node = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "include_dashboard": False}
        self.cluster = Cluster(initialize_head=True, head_node_args={**node, "object_store_memory": 200 * 2**20})
        ray.init(address=self.cluster.address, include_dashboard=False, logging_level="WARNING")
        env = dict(os.environ, RHIZOMORPH_PEER_CHANNEL="ray", RHIZOMORPH_HEALTH_CHECK_INTERVAL="0.5")
        args = ("--address", self.cluster.address, "--server-id", SERVER_ID, "--port", "0", "--workers", "2")
        self.launcher = await rhizomorph("serve", *args, "--log-level", "WARNING", env=env, merged=True)
        banner = await serving(self.launcher)
        url = banner.split("serving ", 1)[1].split(" ", 1)[0]
        self.router = Deployment.attach(SERVER_ID)
        self.results["router_start_s"] = round(time.monotonic() - started, 2)

        share = [CLIENTS // PROCESSES + (i < CLIENTS % PROCESSES) for i in range(PROCESSES)]
        crowd = self.crowd = Crowd(PROCESSES, stderr_dir=LOG_DIR)
        shares = [{"clients": n, "seed": seed} for seed, n in enumerate(share)]
        ready = await asyncio.wait_for(crowd.chaos("connect", shares, url=url), 180)
        members = [m for r in ready for m in r["members"]]
        self.results["crowd_connect_s"] = max(r["connect_s"] for r in ready)
        self.results["v4_clients"] = sum(m["v4"] for m in members)
        self.observer = await connect_to_server({"server_url": url, "method_timeout": 60})
        go = {"targets": [m["sid"] for m in members], "v4_targets": [m["sid"] for m in members if m["v4"]]}
        await crowd.chaos("go", **go)
        self.results["connections"] = self._connections()

    def _connections(self) -> dict[str, int]:
        assert self.router is not None
        return {w["worker_id"]: w["connections"] for w in self.router.status()["workers"]}

    # -- the phases ----------------------------------------------------------------------------
    async def phase(self, name: str) -> None:
        seen: dict[str, Any] = {}
        self.results["phases"][name] = seen
        # Calls are counted under the phase they started in: those of the last phase end first.
        assert self.crowd is not None
        switched = await asyncio.wait_for(self.crowd.chaos("phase", phase=name), 60)
        seen["waited_for_last_phase_s"] = max(switched)
        seen["relayed_before"] = await self._relay().stats.remote()  # since the chunking actor (re)started
        seen["relay_pids_before"] = _relay_processes()
        started = time.monotonic()
        killed, handled = await getattr(self, f"kill_{name}")()
        seen["killed"] = killed
        # The router has noticed and handled the kill (else "all listed" could be a look from
        # before anything changed); then every client connected and every service listed.
        seen["handled"], ended = await _within(handled, started + RECOVERY_BOUND)
        seen["handled_s"] = round(ended - started, 2)
        seen.update(await self.recovery(started))
        seen["relay_pids_after"] = _relay_processes()
        await asyncio.sleep(max(0.0, started + PHASE_SECONDS - time.monotonic()))

    async def kill_calm(self) -> tuple[str, Any]:
        return "nothing", _at_once()

    async def kill_launcher(self) -> tuple[dict[str, Any], Any]:
        assert self.launcher is not None
        pid = self.launcher.pid
        self.launcher.kill()
        return {"pid": pid, "exit": await self.launcher.wait()}, _at_once()

    async def kill_worker(self) -> tuple[dict[str, Any], Any]:
        assert self.router is not None
        router = self.router
        connections = self._connections()
        victim = max(connections, key=lambda w: connections[w])
        pid = router.worker_info[victim]["pid"]
        events = len(router.events)
        os.kill(pid, signal.SIGKILL)

        async def replaced() -> bool:  # the watchdog released the victim's clients, started another
            return any(e["event"] == "workers_started" for e in router.events[events:])

        return {"worker": victim, "pid": pid, "connections": connections}, replaced

    async def kill_registry(self) -> tuple[dict[str, Any], Any]:
        assert self.router is not None
        registry = self.router.registry
        pid = await registry.pid.remote()
        before = await registry.summary.remote()
        os.kill(pid, signal.SIGKILL)

        async def rebuilt() -> bool:
            summary = await registry.summary.remote()
            return summary["pid"] != pid and summary["state"] == "ready"

        killed = {"pid": pid, "clients": before["clients"], "services": before["services"], "epoch": before["epoch"]}
        return killed, rebuilt

    async def kill_chunking(self) -> tuple[dict[str, Any], Any]:
        """Kill the chunking actor's process while it carries chunks (found by its process
        title among this cluster's processes); Ray starts it again."""
        old = _relay_processes()
        assert len(old) == 1, old
        handle = self._relay()
        first = (await handle.stats.remote())["bytes"]
        moving = False
        for _ in range(100):  # kill it while a transfer runs through it, if one comes within 10 s
            await asyncio.sleep(0.1)
            if (await handle.stats.remote())["bytes"] > first:
                moving = True
                break
        psutil.Process(old[0]).kill()

        async def restarted() -> bool:
            return bool(set(_relay_processes()) - set(old)) and isinstance(await handle.stats.remote(), dict)

        return {"pid": old[0], "killed_while_relaying": moving}, restarted

    def _relay(self) -> Any:
        """The chunking actor of the router's (only) node."""
        assert self.router is not None
        node_id = next(iter(self.router.worker_info.values()))["node_id"]
        return naming.get(relay_name(SERVER_ID, node_id))

    async def recovery(self, started: float) -> dict[str, Any]:
        """Wait until every client is connected and every one's service is listed."""
        deadline = started + RECOVERY_BOUND
        first_missing: int | None = None
        while True:
            statuses = await asyncio.wait_for(self.crowd.chaos("status"), 30)
            connected = {sid for s in statuses for sid in s["connected"]}
            down = [sid for s in statuses for sid in s["down"]]
            reconnects = sum(s["reconnects"] for s in statuses)
            listed, error = await self._listed()
            if listed is not None:
                missing = sorted(connected - listed)
                if first_missing is None:
                    first_missing = len(missing)
                if not down and not missing:
                    break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        stale = sorted(s for s in (listed or set()) if s.endswith(f":{chaos_clients.SERVICE}") and s not in connected)
        return {
            "recovered_s": round(time.monotonic() - started, 2),
            "not_reconnected": len(down),
            "reconnects_so_far": reconnects,
            "services_lost": len(missing) if listed is not None else None,
            "lost_examples": missing[:5] if listed is not None else [],
            "missing_at_first_look": first_missing,
            "stale_services": len(stale),
            "list_error": error,
        }

    async def _listed(self) -> tuple[set[str] | None, str | None]:
        query = {"workspace": "*", "visibility": "public"}
        try:
            services = await asyncio.wait_for(self.observer.list_services(query), 20)
        except Exception as exc:
            return None, f"{type(exc).__name__}: {exc}"[:200]
        return {s["id"] for s in services}, None

    # -- the end -------------------------------------------------------------------------------
    async def finish(self) -> None:
        assert self.crowd is not None
        reports = await asyncio.wait_for(self.crowd.chaos("stop"), chaos_clients.BOUND + 30)
        self.results["counts"] = merge(reports)
        assert self.router is not None
        self.results["relay"] = await self._relay().stats.remote()
        self.results["events"] = [e["event"] for e in self.router.events]
        stats = self.router.stats()
        # v4 chunk streams the workers opened (since the replacement worker started, for it).
        self.results["streams_opened"] = sum(s.get("streams_opened", 0) for s in stats)
        self.results["refused"] = {s["worker_id"]: s["refused"] for s in stats}

    async def stop(self) -> None:
        if self.crowd is not None:
            await self.crowd.close()
        if self.observer is not None:
            try:
                await asyncio.wait_for(self.observer.disconnect(), 5)
            except BaseException:
                pass
        if self.launcher is not None and self.launcher.returncode is None:
            self.launcher.kill()
            await self.launcher.wait()
        if self.cluster is None:
            return
        # Every process of the run, for the test to check that none is left.
        self.results["pids"] = [p.pid for p in psutil.Process().children(recursive=True)]
        stop = await rhizomorph("stop", "--address", self.cluster.address, "--server-id", SERVER_ID, env=None)
        out, _ = await asyncio.wait_for(stop.communicate(), 60)
        self.results["stop"] = {"exit": stop.returncode, "out": out.decode().strip()}
        ray.shutdown()
        self.cluster.shutdown()


def _relay_processes() -> list[int]:
    """Pids of the chunking actors among this process's descendants (this cluster's processes)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "ChunkRelay" in " ".join(proc.cmdline()):
                found.append(proc.pid)
        except psutil.Error:
            pass
    return found


def _at_once() -> Any:
    async def done() -> bool:
        return True

    return done


async def _within(check: Any, deadline: float) -> tuple[bool, float]:
    """Poll ``check()`` until it is true or ``deadline`` passes (a call that fails counts as
    false); returns whether it came true, and when."""
    while time.monotonic() < deadline:
        try:
            if await check():
                return True, time.monotonic()
        except Exception:
            pass
        await asyncio.sleep(0.2)
    return False, time.monotonic()


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The crowd processes' counts added up, per phase and overall."""
    calls: dict[str, dict[str, dict[str, int]]] = {}
    errors: dict[str, dict[str, int]] = {}
    events: dict[str, dict[str, int]] = {}
    for report in reports:
        for phase, kinds in report["calls"].items():
            for kind, outcomes in kinds.items():
                _add(calls.setdefault(phase, {}).setdefault(kind, {}), outcomes)
                _add(calls.setdefault("all", {}).setdefault(kind, {}), outcomes)
        for phase, counted in report["errors"].items():
            _add(errors.setdefault(phase, {}), counted)
        for phase, counted in report["events"].items():
            _add(events.setdefault(phase, {}), counted)
            _add(events.setdefault("all", {}), counted)
    latency = {p: max((r["latency"][p]["p99"] for r in reports if p in r["latency"]), default=None) for p in PHASES}
    unanswered = {p: [u for r in reports for u in r["unanswered"].get(p, [])] for p in PHASES}
    return {"calls": calls, "errors": errors, "events": events, "worst_p99_s": latency, "unanswered": unanswered}


def _add(into: dict[str, int], counted: dict[str, int]) -> None:
    for key, value in counted.items():
        into[key] = into.get(key, 0) + value


async def main() -> dict[str, Any]:
    run = Run()
    try:
        await run.start()
        for name in PHASES:
            await run.phase(name)
        await run.finish()
    except BaseException:
        run.results["error"] = traceback.format_exc()
    finally:
        try:
            await run.stop()
        except BaseException:
            run.results.setdefault("error", traceback.format_exc())
    return run.results


if __name__ == "__main__":
    started = time.monotonic()
    try:
        results = asyncio.run(main())
    finally:
        shutil.rmtree(_PRIVATE_DIR, ignore_errors=True)
    results["total_s"] = round(time.monotonic() - started, 1)
    print(MARKER + json.dumps(results), flush=True)
