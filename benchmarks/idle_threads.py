"""Idle CPU of two ``rhizomorph serve`` side by side, by process role and by thread (issue 12 item 4).

    python -m benchmarks.idle_threads --env NAME=VALUE [--env ...] [--base-env NAME=VALUE ...]
                                      [--window 30] [--settle 10] [--runs 1] [--workers 1]
                                      [--tree DIR] [--base-tree DIR]

Starts this tree's router twice (embedded Ray each): "base" with ``--base-env`` and "test" with
``--base-env`` plus ``--env`` (e.g. one of ``launcher.EMBEDDED_RAY_ENV`` back at Ray's default,
or a Ray setting to try). Both serve at once, so the machine's load is the same for both over
the one window in which each thread's CPU is read from ``/proc/<pid>/task``: finer than
``benchmarks.idle``'s runs taken in turn, and a thread's name says what of a process costs
(an actor's main thread, ``[main]``, runs Ray's 10 ms signal check and nothing else). With
``--base-tree`` the base router runs another tree (e.g. a worktree of main): code against code.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from pathlib import Path

from benchmarks.router_processes import role, tree
from benchmarks.startup import REPO, Serve

_TICK = os.sysconf("SC_CLK_TCK")

#: (role, thread name) -> CPU seconds.
Threads = dict[tuple[str, str], float]


def thread_cpu(root: int) -> dict[tuple[str, int, int], tuple[str, float]]:
    """(role, pid, tid) -> (thread name, CPU seconds) of every thread of ``root``'s process tree."""
    found = {}
    for process in tree(root):
        name = role(process)
        try:
            tids = os.listdir(f"/proc/{process.pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{process.pid}/task/{tid}/stat") as handle:
                    stat = handle.read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            seconds = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
            found[(name, process.pid, int(tid))] = (comm + ("[main]" if int(tid) == process.pid else ""), seconds)
    return found


def window_cpu(roots: list[int], window: float) -> list[Threads]:
    """Each root's threads' CPU over the same ``window`` seconds, as % of one core."""
    before = [thread_cpu(root) for root in roots]
    started = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - started
    results = []
    for root, first in zip(roots, before, strict=True):
        shares: Counter[tuple[str, str]] = Counter()
        for key, (comm, seconds) in thread_cpu(root).items():
            shares[(key[0], comm)] += 100.0 * (seconds - first.get(key, (comm, 0.0))[1]) / elapsed
        results.append(dict(shares))
    return results


def print_table(base: Threads, test: Threads) -> None:
    roles = sorted({r for r, _ in base} | {r for r, _ in test})
    by_role = [{r: sum(v for (rr, _), v in t.items() if rr == r) for r in roles} for t in (base, test)]
    print("role / thread | base % of a core | test % | test - base")
    for name in sorted(roles, key=lambda r: -by_role[0][r]):
        a, b = by_role[0][name], by_role[1][name]
        print(f"{name} | {a:.2f} | {b:.2f} | {b - a:+.2f}")
        threads = {c for r, c in base if r == name} | {c for r, c in test if r == name}
        for comm in sorted(threads, key=lambda c: -base.get((name, c), 0.0)):
            a, b = base.get((name, comm), 0.0), test.get((name, comm), 0.0)
            if a or b:
                print(f"    {comm} | {a:.2f} | {b:.2f} | {b - a:+.2f}")
    total_a, total_b = sum(base.values()), sum(test.values())
    print(f"total | {total_a:.2f} | {total_b:.2f} | {total_b - total_a:+.2f}")


def pairs(items: list[str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the test router only")
    parser.add_argument("--base-env", action="append", default=[], help="NAME=VALUE for both routers")
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after both serve")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--tree", type=Path, default=REPO)
    parser.add_argument("--base-tree", type=Path, help="the base router's tree (default: --tree), e.g. main's")
    args = parser.parse_args(argv)
    base_env = pairs(args.base_env)
    for run in range(args.runs):
        # one at a time: two Ray starts at once time out on a loaded machine
        with Serve(args.base_tree or args.tree, args.workers, base_env) as base:
            base.wait_serving(120.0)
            with Serve(args.tree, args.workers, {**base_env, **pairs(args.env)}) as test:
                test.wait_serving(120.0)
                time.sleep(args.settle)
                load = os.getloadavg()[0]
                shares = window_cpu([base.process.pid, test.process.pid], args.window)
        print(f"run {run + 1}, {args.window:.0f} s, load {load:.1f}; test: {' '.join(args.env)}")
        print_table(*shares)
    return 0


if __name__ == "__main__":
    sys.exit(main())
