"""The hypha-rpc batching report's table, measured with real clients: the headline of PERFORMANCE.md.

    python -m benchmarks.bench_claims [--suite quick|full|smoke] [--repeats 5] [--hypha-python PATH]
                                      [--trees BEFORE AFTER ...]

``make bench`` runs it first (``benchmarks/run.py``, same results file). The report claims
batching gains +48 % small (2000 x 256 B), +26 % medium (500 x 20 KB), +5 % large (20 x 2 MB)
and +34 % mixed (250 dashboard messages, ``scenarios.mixed_messages``). Here those four
scenarios are echo calls between two real clients — a caller in the load process and a
provider in a process of its own (``benchmarks/echo_provider.py``) — in two modes, 32 calls in
flight and an unbounded burst (every call of a pass over the scenario in flight at once), on:

- ``rhizomorph``: the router with its defaults (``Config()``: default batching, default worker
  count), and ``rhizomorph-no-batching``: the same with ``enable_message_batching=False``
  (``rhizomorph serve --no-batching``); each driven by the released hypha-rpc client (v3) and
  by rhizomorph's v4 client, whose own send-side batching follows the router's (off with
  ``--no-batching``);
- ``hypha``: the real Hypha server with hypha-rpc clients, when it is installed (for this
  interpreter, or for the one ``--hypha-python`` names).

Repeats are interleaved across the pairs, as in the suite. Each run records the MiB/s and
calls/s, and the CPU of the caller (the load process), the provider (its process) and the
router: for rhizomorph every process of the Ray runtime (GCS, raylet, agents, actors, idle
workers) except the other routers' own actors (workers, registry, controller); for Hypha its process tree.
``benchmarks/report.py`` turns the records into the table of ratios, the report's claims
beside them and the issue's targets reached or not.

``--trees`` measures several versions of the code in one run (the house rule's "before and
after"): every rhizomorph contender runs from each tree — a directory or a git revision
(``benchmarks/trees.py``) — its routers on a Ray of the tree's own (``benchmarks/tree_host.py``),
its caller and provider in the tree's agent (``benchmarks/tree_agent.py``), interleaved pass by
pass with the other pairs; the report adds each tree's ratio to the first, cell by cell.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.clients import (
    EchoRig,
    EventRig,
    HyphaRpcClients,
    ProviderProcess,
    SplitEchoRig,
    V4Clients,
    _same,
    split_echo_rig,
)
from benchmarks.contenders import (
    HYPHA_RPC,
    V4,
    Contender,
    ProcessProbe,
    RayProcesses,
    Rhizomorph,
    Started,
    hypha_contender,
)
from benchmarks.loadgen import CLIENT_LOOP_ENV, LoadProcess
from benchmarks.measure import run_calls
from benchmarks.report import COPY_MARK, tree_of
from benchmarks.run import (
    RESULTS_DIR,
    Harness,
    Pair,
    Record,
    quiet_client_logs,
    record_sink,
    run_suite,
    start_contenders,
)
from benchmarks.scenarios import CLAIM_SUITES, Case, Suite
from benchmarks.tree_agent import Agents, RemoteRig
from benchmarks.tree_host import Hosted, TreeRouters
from benchmarks.trees import Tree, TreeError, prepare_trees, remove_trees
from rhizomorph import Config
from rhizomorph.actors.event_loop import LOOPS
from rhizomorph.client import wire_protocol
from rhizomorph.config import ALLOCATORS
from rhizomorph.protocol.batching import WAITS

CLIENTS = (HYPHA_RPC, V4)
DEFAULT, NO_BATCHING = "rhizomorph", "rhizomorph-no-batching"
IDLE_SECONDS = 3.0
#: The note of a ``--trees`` run that measured nothing because a tree's routers did not start.
NO_TREES_NOTE = "No runs: every tree must start for a before / after (see the note above)."
#: Seconds a tree's agent may take to open a pair's clients (beyond the pass's own limit).
RIG_TIMEOUT = 60.0
#: How old the router probe's set of Ray processes may get before a pass looks for new ones.
PROBE_REFRESH_S = 5.0
#: Routers per rhizomorph setting (``--copies``): two identical routers in one run differ by up to
#: ~8 % in a cell, most often against the first started (benchmarks/claims.md); two copies in the
#: order on, off, off, on give each setting an early and a late router and measure that noise.
DEFAULT_COPIES = 2


def claim_contenders(
    batch_waits: list[str] | None = None,
    loops: list[str] | None = None,
    workers: list[int] | None = None,
    allocators: list[str] | None = None,
) -> list[Contender]:
    """The router with its defaults, and with batching off (``--no-batching``); plus the defaults
    with each other ``batch_wait`` rule asked for (``rhizomorph-wait-timer``: the report's rule),
    on each event loop asked for (``rhizomorph-loop-uvloop``, ``rhizomorph-loop-asyncio``),
    with each gateway worker count asked for (``rhizomorph-1w``; the default is one per CPU) and
    with each worker allocator asked for, batching on and off (``rhizomorph-alloc-pymalloc``,
    ``rhizomorph-no-batching-alloc-pymalloc``)."""
    contenders: list[Contender] = [
        Rhizomorph(0, name=DEFAULT),
        Rhizomorph(0, name=NO_BATCHING, enable_message_batching=False),
    ]
    for wait in batch_waits or []:
        if wait != Config.batch_wait:
            contenders.append(Rhizomorph(0, name=f"{DEFAULT}-wait-{wait}", batch_wait=wait))
    for loop in loops or []:
        contenders.append(Rhizomorph(0, name=f"{DEFAULT}-loop-{loop}", loop=loop))
    for count in workers or []:
        contenders.append(Rhizomorph(count, name=f"{DEFAULT}-{count}w"))
    for allocator in allocators or []:
        contenders.append(Rhizomorph(0, name=f"{DEFAULT}-alloc-{allocator}", worker_allocator=allocator))
        contenders.append(
            Rhizomorph(
                0,
                name=f"{NO_BATCHING}-alloc-{allocator}",
                enable_message_batching=False,
                worker_allocator=allocator,
            )
        )
    return contenders


def with_copies(contenders: list[Contender], copies: int) -> list[Contender]:
    """Every rhizomorph contender ``copies`` times, in a balanced start order: the settings in their
    order for copy 1, 3, ..., reversed for copy 2, 4, ... (``rhizomorph``, ``rhizomorph-no-batching``,
    ``rhizomorph-no-batching#2``, ``rhizomorph#2``: each setting has an early and a late router);
    copy 1 keeps the name, copy k is ``<name>#k``; the other contenders (Hypha) after them."""
    routers = [c for c in contenders if isinstance(c, Rhizomorph)]
    others = [c for c in contenders if not isinstance(c, Rhizomorph)]
    started: list[Contender] = []
    for number in range(1, max(copies, 1) + 1):
        for c in routers if number % 2 else routers[::-1]:
            started.append(c if number == 1 else Rhizomorph(c.workers, name=f"{c.name}{COPY_MARK}{number}", **c.config))
    return started + others


def claim_pairs(contenders: list[Contender], clients: tuple[str, ...] | list[str] = CLIENTS) -> list[Pair]:
    """Each contender with each client it speaks; the v4 client batches as its router does."""
    pairs = []
    for contender in contenders:
        for client in clients:
            if client in contender.clients and client in CLIENTS:
                kind = (
                    V4Clients(batching=contender.batching, wait=contender.batch_wait)
                    if client == V4
                    else HyphaRpcClients()
                )
                pairs.append(Pair(contender, kind))
    return pairs


class CaseRig(EchoRig):
    """A pair's rig as one case sees it: that case's payloads on the pair's kept clients."""

    def __init__(self, pool: ClientPool, pair: Pair, rig: SplitEchoRig, payloads: list[Any]) -> None:
        self.pool, self.pair, self.rig, self.payloads, self.callers = pool, pair, rig, payloads, rig.callers

    @property
    def provider(self) -> ProviderProcess:
        return self.rig.provider

    async def call(self, caller: int, index: int) -> bool:
        payload = self.payloads[index]
        return _same(await self.rig.service.echo(payload), payload)

    async def renew(self) -> None:
        """Replace the pair's clients (after a pass that lost calls: they may be stuck or closed)."""
        self.rig = await self.pool.renew(self.pair)

    async def close(self) -> None:
        pass  # the clients stay for the next case; ``ClientPool.close`` ends them


class ClientPool:
    """One provider process and one caller per pair, opened at the pair's first case and kept for
    the run: a client process per case would cost more start-up time than the runs take. A pass
    that loses calls gets the pair new clients for its next pass."""

    def __init__(self) -> None:
        self._rigs: dict[str, SplitEchoRig] = {}

    async def _rig(self, pair: Pair) -> SplitEchoRig:
        rig = self._rigs.get(pair.label)
        if rig is None:
            assert isinstance(pair.client, HyphaRpcClients)
            apart = pair.contender.workers > 1
            rig = self._rigs[pair.label] = await split_echo_rig(pair.client, pair.contender.url, [], apart)
        return rig

    async def open(self, pair: Pair, case: Case, payloads: list[Any]) -> EchoRig:
        return CaseRig(self, pair, await self._rig(pair), payloads)

    async def renew(self, pair: Pair) -> SplitEchoRig:
        old = self._rigs.pop(pair.label, None)
        if old is not None:
            await old.close()
        return await self._rig(pair)

    async def close(self) -> None:
        await asyncio.gather(*(rig.close() for rig in self._rigs.values()), return_exceptions=True)
        self._rigs.clear()


def router_probe(pair: Pair, pairs: list[Pair]) -> ProcessProbe:
    """A rhizomorph router's cost is its whole Ray runtime less the other routers' own processes."""
    contender = pair.contender
    if not contender.ray_session:
        return ProcessProbe(contender.server_pids())
    others = {
        pid
        for p in pairs
        if p.contender.name != contender.name and p.contender.ray_session
        for pid in p.contender.server_pids()
    }
    return RayProcesses(contender.ray_session, exclude=sorted(others))


async def _measure_claim(
    rig: EchoRig | EventRig, case: Case, payloads: list[Any], probe: ProcessProbe, timeout: float
) -> Record:
    assert isinstance(rig, CaseRig)
    if isinstance(probe, RayProcesses):
        probe.refresh(PROBE_REFRESH_S)  # outside the timed window; a scan reads every process's command line
    provider0 = rig.provider.cpu_seconds()
    result = await run_calls(rig, case, payloads, probe, timeout)
    record = {
        **result.as_dict(),
        "provider_cpu_s": rig.provider.cpu_seconds() - provider0,
        "in_flight": min(case.concurrency, len(payloads)),
        "wire_protocol": {"caller": wire_protocol(rig.rig.caller), "provider": rig.provider.info.get("wire_protocol")},
    }
    if result.delivered < result.messages:
        try:
            await rig.renew()
            record["renewed_clients"] = True
        except Exception as exc:  # the next pass fails on the old clients and says so
            record["renew_error"] = f"{type(exc).__name__}: {exc}"
    return record


async def _new_clients(rig: EchoRig | EventRig) -> None:
    assert isinstance(rig, CaseRig)
    await rig.renew()


def claims_harness(
    pool: ClientPool, agents: Agents | None = None, pairs: list[Pair] | None = None, fresh_clients: bool = False
) -> Harness:
    """Calls between a caller here and a provider process (kept in ``pool``); the router probed as above.
    With ``agents`` (``--trees``), a tree's pairs run in that tree's agent (``tree_agent.RemoteRig``),
    which probes the router itself. ``fresh_clients``: every repeat of a case on new clients (a new
    provider process and caller per pair), so that no pair's own processes sit under all its runs."""
    if agents is None:
        new_repeat = _new_clients if fresh_clients else None
        return Harness(
            open_rig=pool.open, measure=_measure_claim, probe=router_probe, kind="claim", new_repeat=new_repeat
        )
    everyone = pairs or []

    async def open_rig(pair: Pair, case: Case, payloads: list[Any]) -> EchoRig | EventRig:
        if not isinstance(pair.contender, Hosted):
            return await pool.open(pair, case, payloads)
        session = pair.contender.ray_session
        exclude = {
            pid
            for p in everyone
            if p.contender.name != pair.contender.name and p.contender.ray_session == session
            for pid in p.contender.server_pids()
        }
        return await agents.open(pair.contender, pair.client.name, case, sorted(exclude), RIG_TIMEOUT)

    async def measure(
        rig: EchoRig | EventRig, case: Case, payloads: list[Any], probe: ProcessProbe, timeout: float
    ) -> Record:
        if isinstance(rig, RemoteRig):
            return await rig.measure(len(payloads), timeout)
        return await _measure_claim(rig, case, payloads, probe, timeout)

    def probe(pair: Pair, pairs: list[Pair]) -> ProcessProbe:
        return ProcessProbe([]) if isinstance(pair.contender, Hosted) else router_probe(pair, pairs)

    return Harness(open_rig=open_rig, measure=measure, probe=probe, kind="claim")


async def idle_record(pair: Pair, pairs: list[Pair], seconds: float = IDLE_SECONDS) -> Record:
    """What the router's probe counts with no traffic at all (Ray's background, the idle workers)."""
    probe = router_probe(pair, pairs)
    cpu0, started = probe.cpu_seconds(), time.perf_counter()
    await asyncio.sleep(seconds)
    elapsed = time.perf_counter() - started
    return {
        "kind": "claims-idle",
        "contender": pair.contender.name,
        "processes": len(probe.processes),
        "pids": [process.pid for process in probe.processes],
        "cpu_share_of_core": (probe.cpu_seconds() - cpu0) / elapsed,
        "seconds": elapsed,
    }


async def run_claims_to_file(
    cases: list[Case],
    contenders: list[Started],
    clients: list[str],
    repeats: int,
    timeout: float,
    path: Path,
    stamp: dict[str, Any],
    show_progress: bool = True,
    fresh_clients: bool = False,
) -> None:
    """In the load process: the idle background, then every case on every pair, to ``path``."""
    quiet_client_logs()
    pairs = claim_pairs(list(contenders), clients)
    with record_sink(path, stamp) as emit:
        sessions: dict[str, Pair] = {}  # the first pair on each Ray runtime (one per tree with --trees)
        for pair in pairs:
            if pair.contender.ray_session:
                sessions.setdefault(pair.contender.ray_session, pair)
        for first in sessions.values():
            emit(await idle_record(first, pairs))
        pool = ClientPool()
        agents = Agents(emit) if any(isinstance(p.contender, Hosted) for p in pairs) else None
        try:
            harness = claims_harness(pool, agents, pairs, fresh_clients)
            await run_suite(cases, pairs, repeats, timeout, emit, show_progress, harness=harness)
        finally:
            await pool.close()
            if agents is not None:
                await agents.close()
        emit({"kind": "claims-end", "load_average": [round(x, 2) for x in os.getloadavg()]})


def select_cases(suite: Suite, patterns: list[str] | None) -> list[Case]:
    return [c for c in suite.cases() if not patterns or any(s in c.id for s in patterns)]


def run_claims(
    load: LoadProcess,
    suite: Suite,
    repeats: int,
    path: Path,
    stamp: dict[str, Any],
    contenders: list[Contender],
    clients: list[str],
    cases: list[Case],
    hosts: list[TreeRouters] | None = None,
    fresh_clients: bool = False,
) -> list[str]:
    """Start the contenders (and the trees' ``hosts``, whose contenders join them in the order
    ``tree_order`` gives), run the claims in the load process, stop them; returns start-up notes."""
    notes: list[str] = []
    started = start_contenders(contenders, notes)
    running: list[TreeRouters] = []
    try:
        hosted: list[Started] = []
        missing = []
        for host in hosts or []:
            running.append(host)
            try:
                hosted += host.start(notes)
            except Exception as exc:
                missing.append(f"tree {host.tree.label} did not start: {exc}")
                break  # a before / after with a tree missing compares nothing: no runs at all
        notes += missing
        if missing:
            notes.append(NO_TREES_NOTE)
        everyone = tree_order(hosted, [h.tree.label for h in hosts or []]) + [Started(c) for c in started]
        if everyone and cases and not missing:
            load.run(
                run_claims_to_file,
                cases,
                everyone,
                clients,
                repeats,
                suite.run_timeout,
                path,
                stamp,
                True,
                fresh_clients,
            )
    finally:
        for contender in started:
            contender.stop()
        for host in running:
            host.stop()
    return notes


def tree_order(hosted: list[Started], labels: list[str]) -> list[Started]:
    """Variant by variant, each on every tree in turn (``rhizomorph@a``, ``rhizomorph@b``,
    ``rhizomorph-no-batching@a``, ...): a tree's runs sit next to the same contender's on the others."""
    variants = list(dict.fromkeys(tree_of(c.name, labels)[0] for c in hosted))

    def key(contender: Started) -> tuple[int, int]:
        variant, label = tree_of(contender.name, labels)
        return variants.index(variant), labels.index(label) if label in labels else len(labels)

    return sorted(hosted, key=key)


def tree_hosts(contenders: list[Contender], trees: list[Tree]) -> list[TreeRouters]:
    """Each rhizomorph contender once per tree (named ``<contender>@<tree>``), in a host per tree."""
    variants = [c for c in contenders if isinstance(c, Rhizomorph)]
    return [
        TreeRouters(tree, [Rhizomorph(c.workers, name=f"{c.name}@{tree.label}", **c.config) for c in variants])
        for tree in trees
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=sorted(CLAIM_SUITES), default="quick")
    parser.add_argument("--repeats", type=int, help="override the suite's repeat count (>= 5 for the table)")
    parser.add_argument("--cases", nargs="+", help="only cases whose id contains one of these (e.g. small burst)")
    parser.add_argument(
        "--min-run-s", type=float, help="override the suite's minimum length of one run, seconds (0: one pass)"
    )
    parser.add_argument("--clients", nargs="+", default=list(CLIENTS), choices=list(CLIENTS))
    parser.add_argument("--no-hypha", action="store_true", help="skip the real Hypha server even if installed")
    parser.add_argument("--hypha-python", help="the interpreter that runs the Hypha server (e.g. its own venv)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--batch-waits", nargs="+", choices=WAITS, default=[], help="also the defaults with these batch_wait rules"
    )
    parser.add_argument(
        "--loops", nargs="+", choices=LOOPS, default=[], help="also the defaults on each of these event loops"
    )
    parser.add_argument(
        "--workers", nargs="+", type=int, default=[], help="also the defaults with these gateway worker counts"
    )
    parser.add_argument(
        "--allocators",
        nargs="+",
        choices=ALLOCATORS,
        default=[],
        help="also the defaults, batching on and off, with these worker allocators",
    )
    parser.add_argument("--contenders", nargs="+", help="only the contenders named exactly so")
    parser.add_argument(
        "--trees",
        nargs="+",
        default=[],
        metavar="TREE",
        help="run every rhizomorph contender from each of these source trees (directories or git revisions;"
        " the first is the 'before' the others are compared to)",
    )
    parser.add_argument(
        "--fresh-clients",
        action="store_true",
        help="new client processes for every repeat of a case (not with --trees): a pair's own provider and"
        " caller then sit under one repeat, not the whole run",
    )
    parser.add_argument(
        "--copies",
        type=int,
        help=f"routers per rhizomorph setting, started on, off, off, on and pooled in the table, which adds"
        f" their copy 1 / copy 2 ratio (default {DEFAULT_COPIES}; 1 with --trees, which takes no other)",
    )
    parser.add_argument(
        "--client-loop", choices=("asyncio", "uvloop"), default="asyncio", help="the event loop of the clients"
    )
    args = parser.parse_args(argv)
    os.environ[CLIENT_LOOP_ENV] = args.client_loop  # the load process and the providers inherit it

    suite = CLAIM_SUITES[args.suite]
    if args.min_run_s is not None:
        suite = dataclasses.replace(suite, min_run_s=args.min_run_s)
    repeats = args.repeats or suite.repeats
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-claims-{args.suite}"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{run_id}.jsonl"

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    quiet_client_logs()
    from benchmarks.machine import machine_info
    from rhizomorph import ensure_ray

    if args.fresh_clients and args.trees:
        parser.error("--fresh-clients is not for --trees runs (a tree's clients live in its agent)")
    copies = args.copies if args.copies is not None else (1 if args.trees else DEFAULT_COPIES)
    if args.trees and copies > 1:
        parser.error("--copies is not for --trees runs (each tree's routers run once; the trees are the copies)")
    if copies < 1:
        parser.error("--copies must be at least 1")
    try:
        trees = prepare_trees(args.trees) if args.trees else []
    except TreeError as exc:
        parser.error(str(exc))
    notes: list[str] = []
    contenders = claim_contenders(args.batch_waits, args.loops, args.workers, args.allocators)
    contenders += hypha_contender(notes, not args.no_hypha, args.hypha_python)
    contenders = [c for c in contenders if not args.contenders or c.name in args.contenders]
    contenders = with_copies(contenders, copies)
    hosts = tree_hosts(contenders, trees)
    if trees:  # every rhizomorph contender runs in the trees' hosts, each on a Ray of its own
        contenders = [c for c in contenders if not isinstance(c, Rhizomorph)]
    ray_dir = None if trees else tempfile.mkdtemp(prefix="rb-", dir="/tmp")  # never join someone else's Ray
    ray_started = bool(ray_dir) and ensure_ray(num_cpus=os.cpu_count() or 1, _temp_dir=ray_dir)
    stamp = {"run_id": run_id, "suite": f"claims-{suite.name}"}
    meta = {
        "kind": "meta",
        "machine": machine_info(),
        "repeats": repeats,
        "claims_repeats": repeats,
        "notes": notes,
        "contenders": [c.name for c in contenders] + [c.name for h in hosts for c in h.specs],
        "trees": [{"label": t.label, "spec": t.spec, "source": t.source, "commit": t.commit} for t in trees],
        "clients": args.clients,
        "copies": copies,
        "client_loop": args.client_loop,
        "run_timeout_s": suite.run_timeout,
        "min_run_s": suite.min_run_s,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    path.write_text(json.dumps({**stamp, **meta}) + "\n")
    try:
        with LoadProcess() as load:
            cases = select_cases(suite, args.cases)
            late = run_claims(
                load, suite, repeats, path, stamp, contenders, args.clients, cases, hosts, args.fresh_clients
            )
        with record_sink(path, stamp) as emit:
            for note in late:
                emit({"kind": "note", "text": note})
    finally:
        if ray_started:
            import ray

            ray.shutdown()
        if ray_dir:
            shutil.rmtree(ray_dir, ignore_errors=True)
        remove_trees(trees)
    print(f"results: {path}")

    from benchmarks import report

    print(report.claims_markdown(*report.load_claims(path)))
    outputs = report.write_reports(path, None, plots=False)
    for output in outputs:
        print(f"wrote {output}")
    if NO_TREES_NOTE in late:
        print("error: " + "; ".join(n for n in late if n.startswith("tree ")), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
