"""The router on a multi-node Ray cluster: placement, cross-node routing, fan-out, lost workers and nodes;
its control plane: a killed launcher, the lost node of the controller and registry.

The multi-node tests run ``python -m tests.cluster_scenarios`` once, in a subprocess: it builds a
3-node cluster on 127.0.0.1 with ``ray.cluster_utils.Cluster`` (a Cluster and this session's
embedded Ray cannot live in one process), runs every scenario and prints JSON; each test here
asserts on one scenario. The watchdog's own logic is also exercised in-process, on the
session's embedded Ray.
"""

from __future__ import annotations

import signal
import time
from typing import Any

import psutil
import pytest

from rhizomorph import Config, Deployment
from rhizomorph.cli import _status_text
from rhizomorph.launcher import workers_for_node
from tests.helpers import eventually, run_for_results

MARKER = "CLUSTER_RESULTS "  # as printed by tests/cluster_scenarios.py (not imported: it sets up Ray auth)
SCENARIO_TIMEOUT = 600


# -- how many workers a node gets -------------------------------------------------------------
def test_workers_per_node_from_count_cpus_or_custom_resource():
    node = {"CPU": 8.0, "memory": 1e10, "gateway": 3.0}
    assert workers_for_node(Config(workers=2), node) == 2
    assert workers_for_node(Config(), node) == 8
    assert workers_for_node(Config(workers_per_cpu=0.5), node) == 4
    assert workers_for_node(Config(workers_per_cpu=0.5), {"CPU": 1.0}) == 1  # at least one per node
    assert workers_for_node(Config(), {"CPU": 0.0}) == 1  # a head started with --num-cpus 0
    assert workers_for_node(Config(), {"CPU": 2.0}) == 1  # a small node: one worker
    assert workers_for_node(Config(), {"CPU": 3.0}) == 3
    assert workers_for_node(Config(workers_per_cpu=1.0), {"CPU": 2.0}) == 2  # one per CPU when asked
    assert workers_for_node(Config(worker_resource="gateway"), node) == 3
    assert workers_for_node(Config(worker_resource="gateway", workers=2), node) == 2
    assert workers_for_node(Config(worker_resource="gateway"), {"CPU": 8.0}) == 0


def test_cluster_fields_come_from_the_environment():
    config = Config.from_env(
        {
            "RHIZOMORPH_WORKERS_PER_CPU": "0.5",
            "RHIZOMORPH_WORKER_RESOURCE": "gateway",
            "RHIZOMORPH_HEALTH_CHECK_INTERVAL": "2",
            "RHIZOMORPH_DISTINCT_NODE_PORTS": "yes",
        }
    )
    assert (config.workers_per_cpu, config.worker_resource) == (0.5, "gateway")
    assert (config.health_check_interval, config.distinct_node_ports) == (2.0, True)


# -- the watchdog, in-process on the embedded Ray ---------------------------------------------
async def test_health_check_releases_a_dead_worker_and_starts_a_replacement(ray_runtime, connect):
    import ray

    deployment = Deployment(Config(port=0, workers=2, health_check_interval=0)).start()
    try:
        assert sorted(deployment.workers) == ["n0w0", "n0w1"]
        for _ in range(4):
            await connect(deployment.url)
        ray.kill(deployment.workers["n0w1"], no_restart=True)
        await eventually(lambda: deployment.check() == ["n0w1"], timeout=10)
        assert sorted(deployment.workers) == ["n0w0", "n0w2"]  # a new id: never two actors under one
        summary = await deployment.registry.summary.remote()
        assert summary["workers"] == ["n0w0", "n0w2"]
        assert "n0w1" not in summary["clients_per_worker"]
        assert [e["event"] for e in deployment.events[-2:]] == ["worker_lost", "workers_started"]
        assert deployment.check() == []
    finally:
        deployment.stop()


# -- the multi-node scenarios -----------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    results = run_for_results("tests.cluster_scenarios", MARKER, SCENARIO_TIMEOUT)
    assert "error" not in results, results["error"]
    return results


def refused(error: str) -> bool:
    return "not connected" in error or "Client disconnected" in error


def scenario(results: dict[str, Any], name: str) -> dict[str, Any]:
    seen = results[name]
    assert "error" not in seen, f"{name} failed:\n{seen['error']}"
    return seen


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT + 60)
def test_one_gateway_worker_per_node_each_serving_its_node_port(cluster):
    seen = scenario(cluster, "placement")
    assert sorted(seen["workers"]) == ["n0w0", "n1w0", "n2w0"]
    assert sorted(seen["node_index"]) == sorted(seen["cluster_node_ids"])
    assert seen["node_index"][seen["cluster_node_ids"][0]] == 0  # n0 is the launcher's (head) node
    for i in range(3):  # pinned by NodeAffinity: n<i>w0 runs on node <i>
        assert seen["node_index"][seen["workers"][f"n{i}w0"]["node_id"]] == i
    assert len({w["port"] for w in seen["workers"].values()}) == 3
    assert seen["connected_to"] == ["n0w0", "n1w0", "n2w0"]  # a client picks its node by port
    assert seen["registry"]["workers"] == ["n0w0", "n1w0", "n2w0"]


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT + 60)
def test_rhizomorph_serve_address_joins_the_cluster_and_ctrl_c_stops_it(cluster):
    seen = scenario(cluster, "cli_join")
    assert "with 3 gateway worker(s) on 3 nodes" in seen["banner"]
    assert seen["worker"] == "n0w0" and seen["echo"] == "joined"
    assert seen["exit_code"] == 0 and seen["port_closed"]


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT + 60)
def test_v3_and_v4_clients_on_different_nodes_call_each_other(cluster):
    pairs = scenario(cluster, "cross_node_calls")["pairs"]
    assert len(pairs) == 4 and all(p["ok"] for p in pairs), pairs
    for pair in pairs:
        assert pair["provider"].split("@")[1][:2] != pair["consumer"].split("@")[1][:2]  # other node
    assert {p["provider"].split("@")[0] + ">" + p["consumer"].split("@")[0] for p in pairs} == {
        "v3>v4",
        "v4>v3",
        "v3>v3",
        "v4>v4",
    }


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT + 60)
def test_broadcast_reaches_every_node_once_with_one_ray_call_per_peer_worker(cluster):
    seen = scenario(cluster, "broadcast")
    assert seen["subscriber_workers"] == ["n0w0", "n1w0", "n2w0"]
    assert seen["exactly_once_in_order"]
    assert seen["bystanders_received"] == 0
    peers, subscribers = seen["peer_workers"], seen["subscribers"]
    assert subscribers > peers
    paced = seen["paced"]
    # One item and at most one Ray call per peer worker per broadcast, whatever the subscriber count.
    assert paced["items"] == paced["broadcasts"] * peers
    assert paced["ray_calls"] <= paced["broadcasts"] * peers
    burst = seen["burst"]
    assert burst["items"] == burst["broadcasts"] * peers
    assert burst["ray_calls"] <= burst["broadcasts"] * peers / 4  # a burst rides in batches


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT + 60)
def test_a_lost_worker_is_replaced_and_its_clients_reconnect_and_reregister(cluster):
    seen = scenario(cluster, "worker_restart")
    assert seen["victim"] == "n1w0"
    assert seen["lost_after_s"] < 5
    assert seen["replacements"] == ["n1w1"] and seen["same_port"]
    assert seen["client_disconnected_seen"]
    assert seen["provider_now_on"] == ["n1w1"] and seen["same_client_id"]
    assert seen["registry_workers"] == ["n0w0", "n1w1", "n2w0"]
    assert seen["recovered_after_s"] < 20


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT + 60)
def test_node_loss_clients_reconnect_through_another_node_and_dead_services_are_gone(cluster):
    seen = scenario(cluster, "node_loss")
    assert seen["before"] == {"v3": "n2w0", "v4": "n2w0", "stranded": "n2w0"}
    # Calls to a client of the lost node are rejected at once, before and after the cleanup.
    # The router's reject ("… is not connected"), or the client's own refusal once the router's
    # peer_not_found for the lost client reached it first ("Client disconnected: …").
    assert refused(seen["call_after_loss"]) and seen["call_after_loss_s"] < 2
    assert refused(seen["call_after_cleanup"]) and seen["call_after_cleanup_s"] < 2
    # A call that was already with it fails when its client_disconnected arrives: no hang.
    assert "disconnected" in seen["in_flight_call"] and seen["in_flight_failed_after_s"] < 10
    assert seen["client_disconnected_seen"]
    assert "not found" in seen["get_service_after"].lower()
    assert not any(sid.endswith(":doomed") for sid in seen["listed_after"])
    assert seen["lost_after_s"] < 5
    # The balanced clients came back through the load balancer on node 0, same ids, services re-registered.
    assert seen["after"] == {"v3": ["n0w0"], "v4": ["n0w0"]}
    assert seen["proxy_choices"][:2] == [2, 2] and 0 in seen["proxy_choices"][2:]
    assert seen["workers_after"] == ["n0w0", "n1w1"]
    assert seen["registry_after"]["workers"] == ["n0w0", "n1w1"]
    assert "n2w0" not in seen["registry_after"]["clients_per_worker"]


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT + 60)
def test_a_killed_launcher_leaves_the_router_serving_and_status_start_stop_reach_it(cluster):
    seen = scenario(cluster, "launcher_killed")
    # Node 2 was removed by the node-loss scenario: two nodes remain.
    assert "with 2 gateway worker(s) on 2 nodes" in seen["banner"] and "keeps serving" in seen["banner"]
    assert seen["launcher_exit"] == -signal.SIGKILL
    assert seen["echo_after_kill"] == "after" and seen["newcomer_echo"] == "new"
    status = seen["status"]
    assert status["server_id"] == "clikill" and len(status["urls"]) == 2
    # Every client came in through the banner's URL, node 0.
    assert [(w["worker_id"], w["connections"]) for w in status["workers"]] == [("n0w0", 3), ("n1w0", 0)]
    assert status["connections"] == 3
    assert status["registry"]["state"] == "ready" and status["registry"]["clients"] == 3
    assert status["registry"]["services"] == 3 + 1  # a built-in per client, and "kept"
    text = _status_text(status)
    assert "router clikill: 2 gateway worker(s), 3 connection(s)" in text and "n1w0" in text
    # The watchdog lives in the controller: it replaced a worker killed after the launcher died.
    assert seen["replaced_after_s"] < 30
    assert seen["events"][-2:] == ["worker_lost", "workers_started"]
    assert seen["ambiguous_start"]["exit"] == 2 and "choose one with --server-id" in seen["ambiguous_start"]["err"]
    assert seen["attach"]["exit"] == 0
    assert "attached to the running router clikill" in seen["attach"]["banner"]
    assert "left running" in seen["attach"]["banner"]
    assert seen["ports_open_before_stop"] == [True, True]
    assert seen["stop"] == {"exit": 0, "out": "rhizomorph: stopped router clikill", "err": ""}
    assert seen["ports_closed_after_s"] < 30
    assert seen["actors_left"] == []
    assert seen["status_after_stop"]["exit"] == 1 and "no router clikill" in seen["status_after_stop"]["out"]
    print(f"launcher killed: a worker killed afterwards was replaced in {seen['replaced_after_s']} s")


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT + 60)
def test_losing_the_control_plane_node_loses_no_service_of_the_surviving_nodes(cluster):
    seen = scenario(cluster, "control_plane_loss")
    assert seen["control_on_doomed_node"]
    assert seen["workers_before"] == ["n0w0", "n1w0", "n2w0", "n3w0"]  # n0: the controller's node
    # A lookup made right after the loss waited for the new registry and found the service.
    assert seen["echo"] == "survived" and seen["lookup_answered_after_s"] < 60
    assert seen["found_all"] == [True, True] and set(seen["ids"]) <= set(seen["listed"])
    assert seen["fresh"] == "fresh"
    # The client of the lost node is gone with it: not resurrected by the rebuild.
    assert "not found" in seen["doomed_lookup"].lower()
    assert not any(sid.endswith(":doomed") for sid in seen["listed"])
    registry = seen["registry"]
    assert registry["moved"] and registry["state"] == "ready"
    assert registry["epoch_after"] > registry["epoch_before"]
    assert registry["last_rebuild"]["workers"] == ["n1w0", "n2w0", "n3w0"]
    controller = seen["controller"]
    assert controller["moved"] and controller["workers"] == ["n1w0", "n2w0", "n3w0"]
    assert "controller_recovered" in controller["events"]
    print(
        f"control plane node lost: get_service answered after {seen['lookup_answered_after_s']} s, "
        f"rebuild took {registry['last_rebuild']['took_s']} s, controller back after {controller['back_after_s']} s"
    )


@pytest.mark.slow
@pytest.mark.timeout(SCENARIO_TIMEOUT + 60)
def test_every_cluster_process_is_gone(cluster):
    deadline = time.monotonic() + 15
    while True:
        alive = []
        for pid in cluster["pids"]:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert cluster["pids"], "the scenario should have listed the cluster's processes"
    assert alive == [], f"left behind: {alive}"
