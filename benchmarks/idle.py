"""What ``rhizomorph serve`` costs with no traffic: idle CPU of every process it runs (issue 12 item 4).

Starts the real command line (``python -m rhizomorph serve``, embedded Ray) on a free port of
127.0.0.1, waits until it serves, lets it settle, then reads the CPU time of every descendant of
the ``serve`` process (the driver itself, Ray's GCS, raylet, agents and monitors, the router's
actors, idle workers) over a window, and prints each process's share of one core by role.

With ``--baseline REV`` the same is measured for the tree of commit ``REV`` (exported with
``git archive`` to a temporary directory, the shared interpreter unchanged), runs of the two
interleaved, and each role's figure is printed side by side with the ratio after / before.

    python -m benchmarks.idle [--runs 3] [--workers 1] [--settle 10] [--window 20] [--baseline REV]
                              [--env NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.router_processes import RAY_ROLES, Roles, cpu_seconds, role, tree
from benchmarks.startup import Serve, add_options, env_of, exported, trees


def idle_cpu(serve: Serve, window: float) -> Roles:
    """Each role's processes and CPU over ``window`` seconds."""
    processes = tree(serve.process.pid)
    before = {p.pid: cpu_seconds(p) for p in processes}
    started = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    roles: Roles = {}
    for process in processes:
        first, last = before[process.pid], cpu_seconds(process)
        if first is None or last is None:
            continue
        count, share = roles.get(role(process), (0, 0.0))
        roles[role(process)] = (count + 1, share + 100.0 * (last - first) / elapsed)
    return roles


def measure(tree: Path, workers: int, settle: float, window: float, env: dict[str, str]) -> Roles:
    with Serve(tree, workers, env) as serve:
        serve.wait_serving(120.0)
        time.sleep(settle)
        return idle_cpu(serve, window)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle", description=__doc__.splitlines()[0])
    add_options(parser)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after serving before the window")
    parser.add_argument("--window", type=float, default=20.0, help="seconds of idle CPU measured")
    args = parser.parse_args(argv)
    with exported(args.baseline) as baseline:
        runs: dict[str, list[Roles]] = {label: [] for label in trees(baseline)}
        for run in range(args.runs):
            for label, tree in trees(baseline).items():
                load = os.getloadavg()[0]
                runs[label].append(measure(tree, args.workers, args.settle, args.window, env_of(label, args)))
                total = sum(share for _, share in runs[label][-1].values())
                print(f"run {run + 1} {label}: load {load:.1f}, total {total:.1f} % of a core", flush=True)
    print_table(runs, args)
    return 0


def subtotal(result: Roles, roles: set[str] | None) -> tuple[int, float]:
    """(processes, % of a core) of the roles in ``roles`` (all with ``None``)."""
    chosen = [v for name, v in result.items() if roles is None or name in roles]
    return sum(c for c, _ in chosen), sum(s for _, s in chosen)


def print_table(runs: dict[str, list[Roles]], args: argparse.Namespace) -> None:
    labels = list(runs)
    roles = sorted({r for results in runs.values() for result in results for r in result})
    print(
        f"\nidle CPU, % of one core, median of {args.runs} run(s) of {args.window:g} s "
        f"({args.settle:g} s after serving), rhizomorph serve --workers {args.workers}"
    )
    header = "role | " + " | ".join(f"{label}: (processes) %" for label in labels)
    print(header + (" | after / before" if len(labels) == 2 else ""))
    rhizomorph_roles = set(roles) - RAY_ROLES
    rows: list[tuple[str, Any]] = [(name, {name}) for name in roles]
    rows += [("Ray's processes", RAY_ROLES), ("rhizomorph's processes", rhizomorph_roles), ("total", None)]
    for name, chosen in rows:
        cells = []
        for label in labels:
            values = [subtotal(result, chosen) for result in runs[label]]
            cells.append((max(c for c, _ in values), statistics.median(s for _, s in values)))
        line = f"{name} | " + " | ".join(f"({count}) {share:.2f}" for count, share in cells)
        if len(labels) == 2:
            before, after = cells[0][1], cells[1][1]
            line += f" | {after / before:.2f}" if before > 0 else " | -"
        print(line)


if __name__ == "__main__":
    sys.exit(main())
