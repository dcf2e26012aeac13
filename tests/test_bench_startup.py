"""benchmarks/startup.py and benchmarks/idle.py, once each: they start the real ``rhizomorph serve``
(its own embedded Ray), find its processes by role and stop it."""

from __future__ import annotations

import re

import pytest

from benchmarks import idle, startup


@pytest.mark.slow
def test_startup_benchmark_times_one_start_and_sees_the_routers_processes(capsys):
    assert startup.main(["--runs", "1", "--phases"]) == 0
    out = capsys.readouterr().out
    run = re.search(
        r"^1 \| after \| [\d.]+ \| (?P<listening>[\d.]+) \| (?P<serving>[\d.]+) \| (?P<cpu>[\d.]+) \|", out, re.M
    )
    assert run, out
    assert 0 < float(run["listening"]) <= float(run["serving"]) and float(run["cpu"]) > 0, out
    seen = re.search(r"first seen: (.*)$", out, re.M)
    assert seen, out
    for name in ("gcs_server", "raylet", "controller actor", "registry actor", "gateway worker actor"):
        assert name in seen[1], out


@pytest.mark.slow
def test_idle_benchmark_accounts_for_every_process_of_serve(capsys):
    assert idle.main(["--runs", "1", "--settle", "0", "--window", "2"]) == 0
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^(.+?) \| \((\d+)\) [\d.]+$", out, re.M))
    for name in ("gcs_server", "raylet", "controller actor", "registry actor", "gateway worker actor"):
        assert rows.get(name) == "1", out
    assert not any(name.startswith("other") for name in rows), out  # every process has a role
    assert "chunk relay actor" not in rows, out  # not made on one node
