"""``bench_claims --trees`` end to end at the smoke suite's counts: two source trees, one of them a
copy whose gateway announces a different server version, so that a client seeing that version
proves the router's Ray workers ran the copy's code (not the driver's, not this checkout's)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from benchmarks import bench_claims
from benchmarks.bench_claims import DEFAULT, NO_BATCHING
from benchmarks.trees import REPO
from rhizomorph.gateway.manager import SERVER_VERSION

MARKER = "0.0.0+tree-marker"


def marked_tree(where: Path) -> Path:
    """A copy of this checkout's rhizomorph whose gateway announces ``MARKER`` as its version."""
    shutil.copytree(REPO / "rhizomorph", where / "rhizomorph", ignore=shutil.ignore_patterns("__pycache__"))
    manager = where / "rhizomorph" / "gateway" / "manager.py"
    text = manager.read_text()
    assert f'SERVER_VERSION = "{SERVER_VERSION}"' in text
    manager.write_text(text.replace(f'SERVER_VERSION = "{SERVER_VERSION}"', f'SERVER_VERSION = "{MARKER}"'))
    return where


@pytest.mark.timeout(600)  # two Ray runtimes to start, eight pairs to open: minutes on a loaded machine
def test_each_tree_runs_its_own_code_in_router_workers_caller_and_provider(tmp_path, capsys):
    marked = marked_tree(tmp_path / "marked")
    out = tmp_path / "results"
    argv = ["--suite", "smoke", "--repeats", "1", "--cases", "small", "mixed/burst", "--no-hypha", "--out", str(out)]
    assert bench_claims.main([*argv, "--trees", str(REPO), str(marked)]) == 0
    printed = capsys.readouterr().out
    (path,) = out.glob("*.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    meta = records[0]
    assert [t["label"] for t in meta["trees"]] == [REPO.name, "marked"]

    assert [r for r in records if r["kind"] in ("claim-error", "claim-skip")] == []
    notes = [r["text"] for r in records if r["kind"] == "note"]
    assert all("Ray did not start (attempt" in n for n in notes), notes  # a loaded machine: Ray started again
    claims = [r for r in records if r["kind"] == "claim"]
    names = {f"{c}@{t}" for c in (DEFAULT, NO_BATCHING) for t in (REPO.name, "marked")}
    cases = {"small/concurrent", "small/burst", "mixed/burst"}
    assert {(r["case"], r["contender"], r["client"]) for r in claims} == {
        (case, name, client) for case in cases for name in names for client in ("hypha-rpc", "v4")
    }
    for r in claims:
        assert r["delivered"] == r["messages"] > 0 and not r["timed_out"], r
        assert r["server_cpu_s"] >= 0 and r["provider_cpu_s"] >= 0, r
        wire = 4 if r["client"] == "v4" else 3
        assert r["wire_protocol"] == {"caller": wire, "provider": wire}, r

    # Which code each process of a tree ran: the agent (caller), the provider, the routers' host,
    # and the gateway workers (Ray's worker processes), by the version they sent to the caller.
    sources = {REPO.name: REPO, "marked": marked}
    rigs = [r for r in records if r["kind"] == "claims-tree-rig"]
    assert {(r["contender"], r["client"], r["case"]) for r in rigs} == {
        (name, client, case) for case in cases for name in names for client in ("hypha-rpc", "v4")
    }
    for r in rigs:
        package = sources[r["tree"]] / "rhizomorph"
        for key in ("caller_rhizomorph", "provider_rhizomorph", "router_rhizomorph"):
            assert Path(r[key]).resolve().parent == package.resolve(), (key, r)
        assert r["server_version"] == (MARKER if r["tree"] == "marked" else SERVER_VERSION), r
    agents = {r["tree"]: r for r in records if r["kind"] == "claims-tree"}
    for label, source in sources.items():
        assert Path(agents[label]["agent_rhizomorph"]).resolve().parent == (source / "rhizomorph").resolve()
        assert Path(agents[label]["agent_benchmarks"]).resolve().parent == (REPO / "benchmarks").resolve()
    idle = [r for r in records if r["kind"] == "claims-idle"]
    assert len(idle) == 2 and len({tuple(r["pids"]) for r in idle}) == 2  # a Ray runtime per tree

    # The report: the usual table (the last tree's) and each tree against the first.
    assert "## The batching report's table" in printed and "## Before and after" in printed
    row = next(line for line in printed.splitlines() if line.startswith(f"| `marked`: {DEFAULT} [v4] |"))
    assert row.count("**") == 2 * len(cases), row
    assert "**Regressions**" in printed and "not judged" in printed  # one repeat: no spread to judge by


def test_a_tree_whose_routers_do_not_start_stops_the_run_with_an_error(tmp_path, capsys):
    broken = tmp_path / "broken"
    (broken / "rhizomorph").mkdir(parents=True)
    (broken / "rhizomorph" / "__init__.py").write_text("")  # no ensure_ray: its host exits at once
    out = tmp_path / "results"
    argv = ["--suite", "smoke", "--cases", "small/burst", "--no-hypha", "--out", str(out)]
    assert bench_claims.main([*argv, "--trees", str(broken), str(REPO)]) == 1
    assert "error: tree broken did not start" in capsys.readouterr().err
    (path,) = out.glob("*.jsonl")
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert not [r for r in records if r["kind"] in ("claim", "claims-idle", "claims-tree")]
    notes = [r["text"] for r in records if r["kind"] == "note"]
    assert notes[-1] == bench_claims.NO_TREES_NOTE and notes[0].startswith("tree broken did not start")
