"""Run a benchmark suite on every contender in one process and one Ray runtime, then report.

    python -m benchmarks.run --suite quick     # make bench
    python -m benchmarks.run --suite full      # make bench-full

Each case opens one rig per (contender, client) pair, warms it up, then runs the repeats
interleaved across pairs (pair order rotated every repeat) so that background noise spreads
evenly over the contenders; with ``Case.min_run_s`` a repeat goes round the pairs, one pass
each, until their passes have lasted that long (``another_round``). One JSON line per measured
pass goes to benchmarks/results/ (``report.merge_passes`` makes a run of a repeat's). The
clients run in a spawned process of their own (``benchmarks/loadgen.py``), not in this one,
which is the Ray driver.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.clients import CLIENT_KINDS, ClientKind, EchoRig, EventRig
from benchmarks.contenders import Contender, ProcessProbe, Started, default_contenders
from benchmarks.loadgen import LoadProcess
from benchmarks.machine import machine_info
from benchmarks.measure import run_calls, run_events
from benchmarks.scenarios import EVENTS, SUITES, Case, Suite, payload_size

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WARMUP_MESSAGES = 5
WARMUP_TIMEOUT = 15.0
Record = dict[str, Any]


@dataclass
class Pair:
    contender: Contender
    client: ClientKind

    @property
    def label(self) -> str:
        return f"{self.contender.name} [{self.client.name}]"


def make_pairs(contenders: list[Contender], clients: list[str]) -> list[Pair]:
    return [Pair(c, CLIENT_KINDS[k]()) for c in contenders for k in clients if k in c.clients]


class Progress:
    """tqdm when installed, else a one-line bar on stderr."""

    def __init__(self, total: int, enabled: bool = True) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self._bar: Any = None
        if enabled:
            try:
                from tqdm import tqdm

                self._bar = tqdm(total=total, file=sys.stderr, unit="run", dynamic_ncols=True)
            except ImportError:
                pass

    def update(self, label: str) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.set_description_str(label[:60])
            self._bar.update(1)
        elif self.enabled:
            filled = int(30 * self.done / max(self.total, 1))
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {label[:50]:<50}")
            sys.stderr.flush()

    def skip(self, runs: int) -> None:
        """Runs that will not happen (a pair failed to set up)."""
        self.total -= runs
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


async def _open_rig(pair: Pair, case: Case, payloads: list[Any]) -> EchoRig | EventRig:
    url, apart = pair.contender.url, pair.contender.workers > 1
    if case.mode == EVENTS:
        return await pair.client.event_rig(url, payloads, max(case.scenario.subscribers, 1), case.broadcast, apart)
    return await pair.client.echo_rig(url, payloads, case.scenario.callers, apart)


async def _measure(
    rig: EchoRig | EventRig, case: Case, payloads: list[Any], probe: ProcessProbe, timeout: float
) -> Record:
    if isinstance(rig, EventRig):
        return (await run_events(rig, case, payloads, probe, timeout)).as_dict()
    return (await run_calls(rig, case, payloads, probe, timeout)).as_dict()


def _server_probe(pair: Pair, pairs: list[Pair]) -> ProcessProbe:
    return ProcessProbe(pair.contender.server_pids())


@dataclass(frozen=True)
class Harness:
    """How a benchmark opens a pair's rig for a case, probes the pair's server, and measures one
    run into a record of ``kind`` (a pair that cannot run a case: ``skip`` / ``error``, prefixed
    with ``kind-`` for another kind). The defaults are the suite's; ``bench_claims`` brings its own."""

    open_rig: Callable[[Pair, Case, list[Any]], Awaitable[EchoRig | EventRig]] = _open_rig
    measure: Callable[[EchoRig | EventRig, Case, list[Any], ProcessProbe, float], Awaitable[Record]] = _measure
    probe: Callable[[Pair, list[Pair]], ProcessProbe] = _server_probe
    kind: str = "result"
    #: Called for each open rig before every repeat but the first (``None``: a rig is kept for the
    #: whole case): ``bench_claims --fresh-clients`` gives every repeat new client processes.
    new_repeat: Callable[[EchoRig | EventRig], Awaitable[None]] | None = None

    def failure(self, what: str) -> str:
        return what if self.kind == "result" else f"{self.kind}-{what}"


SUITE_HARNESS = Harness()


def _unsupported(pair: Pair, case: Case, payloads: list[Any]) -> str | None:
    limit = pair.client.max_event_payload
    if case.mode == EVENTS and limit is not None and max(map(payload_size, payloads)) > limit:
        return f"{pair.client.name} cannot receive events over {limit:,} B (emit does not chunk)"
    return None


async def _open(pair: Pair, case: Case, payloads: list[Any], probe: ProcessProbe, timeout: float, harness: Harness):
    """Open the pair's rig and warm it up; a rig that cannot deliver its warm-up is closed and refused."""
    rig = await asyncio.wait_for(harness.open_rig(pair, case, payloads), timeout)
    warmup = payloads[:WARMUP_MESSAGES]
    result = await harness.measure(rig, case, warmup, probe, min(timeout, WARMUP_TIMEOUT))
    if result["delivered"] < result["messages"]:
        await rig.close()
        raise RuntimeError(f"warm-up delivered {result['delivered']}/{result['messages']}")
    return rig


def rotation(repeat: int, repeats: int, pairs: int) -> int:
    """Which pair goes first in ``repeat``: the first places spread evenly over the pairs (with 8
    pairs and 5 repeats 0, 1, 3, 4, 6; ``repeat % pairs`` would never let pairs 5-7 go first)."""
    return repeat * pairs // max(repeats, 1) % max(pairs, 1)


def another_round(spent: list[float], min_run_s: float) -> bool:
    """Whether a repeat measures one more pass of every pair: until the pairs' passes have lasted
    ``min_run_s`` each on average (wall time; the pairs take turns, pass by pass, so every pair's
    run spans the same stretch of the machine's load)."""
    return bool(spent) and sum(spent) / len(spent) < min_run_s


async def run_case(
    case: Case,
    pairs: list[Pair],
    repeats: int,
    timeout: float,
    emit: Callable[[Record], None],
    progress: Progress,
    harness: Harness = SUITE_HARNESS,
) -> None:
    payloads = case.scenario.payloads()
    rigs: dict[int, EchoRig | EventRig] = {}
    probes = {i: harness.probe(p, pairs) for i, p in enumerate(pairs)}
    try:
        for i, pair in enumerate(pairs):
            who = {"contender": pair.contender.name, "client": pair.client.name, "case": case.id}
            reason = _unsupported(pair, case, payloads)
            if reason:
                emit({"kind": harness.failure("skip"), **who, "reason": reason})
                progress.skip(repeats)
                continue
            try:
                rigs[i] = await _open(pair, case, payloads, probes[i], timeout, harness)
            except Exception as exc:
                emit({"kind": harness.failure("error"), **who, "error": f"{type(exc).__name__}: {exc}"})
                progress.skip(repeats)
        for repeat in range(repeats):
            if repeat and harness.new_repeat is not None:
                for i, rig in rigs.items():
                    await harness.new_repeat(rig)
                    await harness.measure(rig, case, payloads[:WARMUP_MESSAGES], probes[i], WARMUP_TIMEOUT)
            order = [i for i in range(len(pairs)) if i in rigs]
            shift = rotation(repeat, repeats, len(order))
            order = order[shift:] + order[:shift]
            spent = dict.fromkeys(order, 0.0)  # wall seconds of each pair's passes in this repeat
            for pass_ in itertools.count():
                for i in order:
                    started = time.perf_counter()
                    result = await harness.measure(rigs[i], case, payloads, probes[i], timeout)
                    spent[i] += time.perf_counter() - started
                    emit(
                        {
                            "kind": harness.kind,
                            "contender": pairs[i].contender.name,
                            "client": pairs[i].client.name,
                            "repeat": repeat,
                            "pass": pass_,
                            **result,
                        }
                    )
                if not another_round(list(spent.values()), case.min_run_s):
                    break
            for i in order:
                progress.update(f"{case.id} {pairs[i].label}")
    finally:
        await asyncio.gather(*(rig.close() for rig in rigs.values()), return_exceptions=True)


async def run_suite(
    cases: list[Case],
    pairs: list[Pair],
    repeats: int,
    timeout: float,
    emit: Callable[[Record], None],
    show_progress: bool = True,
    harness: Harness = SUITE_HARNESS,
) -> None:
    progress = Progress(len(cases) * len(pairs) * repeats, enabled=show_progress)
    try:
        for case in cases:
            await run_case(case, pairs, repeats, timeout, emit, progress, harness)
    finally:
        progress.close()


@contextlib.contextmanager
def record_sink(path: Path, stamp: dict[str, Any]) -> Iterator[Callable[[Record], None]]:
    """An ``emit`` that appends each record, with ``stamp``, to ``path`` as a JSON line."""
    with path.open("a") as sink:

        def emit(record: Record) -> None:
            sink.write(json.dumps({**stamp, **record}) + "\n")
            sink.flush()

        yield emit


async def run_suite_to_file(
    cases: list[Case],
    contenders: list[Started],
    clients: list[str],
    repeats: int,
    timeout: float,
    path: Path,
    stamp: dict[str, Any],
) -> None:
    """``run_suite`` in the load process: records are appended to ``path`` as JSON lines."""
    quiet_client_logs()
    with record_sink(path, stamp) as emit:
        await run_suite(cases, make_pairs(list(contenders), clients), repeats, timeout, emit)


def quiet_client_logs() -> None:
    """hypha-rpc logs every closed connection at WARNING; a benchmark closes thousands."""
    os.environ.setdefault("HYPHA_LOGLEVEL", "ERROR")  # read by hypha-rpc when it is imported
    for name in ("RPC", "websocket-client", "websockets"):
        logging.getLogger(name).setLevel(logging.ERROR)


def start_contenders(contenders: list[Contender], notes: list[str]) -> list[Contender]:
    started = []
    for contender in contenders:
        try:
            contender.start()
            started.append(contender)
        except Exception as exc:
            notes.append(f"{contender.name} did not start and was skipped: {exc}")
    return started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="rhizomorph side-by-side benchmarks")
    parser.add_argument("--suite", choices=sorted(SUITES), default="quick")
    parser.add_argument("--repeats", type=int, help="override the suite's repeat count (>= 3 for a report)")
    parser.add_argument("--clients", nargs="+", default=list(CLIENT_KINDS), choices=list(CLIENT_KINDS))
    parser.add_argument("--contenders", nargs="+", help="only contenders whose name contains one of these")
    parser.add_argument("--cases", nargs="+", help="only cases whose id contains one of these (e.g. small fanout)")
    parser.add_argument("--no-hypha", action="store_true", help="skip the real Hypha server even if installed")
    parser.add_argument("--hypha-python", help="the interpreter that runs the Hypha server (e.g. its own venv)")
    parser.add_argument("--no-claims", action="store_true", help="skip the batching report's table (bench_claims)")
    parser.add_argument("--claims-repeats", type=int, help="override the claims' repeat count (>= 5 for the table)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument(
        "--performance-md",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "PERFORMANCE.md",
        help="where to write the report generated from this run ('-' for none)",
    )
    args = parser.parse_args(argv)
    from benchmarks import bench_claims
    from benchmarks.contenders import hypha_contender
    from benchmarks.scenarios import CLAIM_SUITES

    suite: Suite = SUITES[args.suite]
    claims_suite = CLAIM_SUITES[args.suite]
    repeats = args.repeats or suite.repeats
    claims_repeats = args.claims_repeats or claims_suite.repeats
    cases = [c for c in suite.cases() if not args.cases or any(s in c.id for s in args.cases)]
    claims_cases = [] if args.no_claims else bench_claims.select_cases(claims_suite, args.cases)
    run_id = time.strftime("%Y%m%d-%H%M%S") + f"-{args.suite}"
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{run_id}.jsonl"

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # embedded Ray on 127.0.0.1 only
    quiet_client_logs()
    from rhizomorph import ensure_ray

    # A private temp dir: Ray would otherwise join the cluster named in /tmp/ray/ray_current_cluster
    # (anyone's `ray start` on this machine) instead of starting our own.
    ray_dir = tempfile.mkdtemp(prefix="rb-", dir="/tmp")
    ray_started = ensure_ray(num_cpus=os.cpu_count() or 1, _temp_dir=ray_dir)
    notes = list(suite.notes)
    hypha = hypha_contender(notes, not args.no_hypha, args.hypha_python)  # one server object, started per phase
    contenders = default_contenders(notes, with_hypha=False) + hypha
    claimants = (bench_claims.claim_contenders() + hypha) if claims_cases else []
    if args.contenders:
        contenders = [c for c in contenders if any(s in c.name for s in args.contenders)]
        claimants = [c for c in claimants if any(s in c.name for s in args.contenders)]
    claimants = bench_claims.with_copies(claimants, bench_claims.DEFAULT_COPIES)  # the claims' routers, twice each
    stamp = {"run_id": run_id, "suite": suite.name}
    meta = {
        "kind": "meta",
        "machine": machine_info(),
        "repeats": repeats,
        "claims_repeats": claims_repeats,
        "notes": notes,
        "contenders": [c.name for c in contenders],
        "claims_contenders": [c.name for c in claimants],
        "claims_copies": bench_claims.DEFAULT_COPIES,
        "clients": args.clients,
        "run_timeout_s": suite.run_timeout,
        "claims_min_run_s": claims_suite.min_run_s,
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    path.write_text(json.dumps({**stamp, **meta}) + "\n")
    late: list[str] = []
    try:
        with LoadProcess() as load:  # the clients run outside this process, the Ray driver
            if claimants:  # first, on their own: the headline (the batching report's table)
                late += bench_claims.run_claims(
                    load, claims_suite, claims_repeats, path, stamp, claimants, args.clients, claims_cases
                )
            started = start_contenders(contenders, late)
            try:
                load.run(
                    run_suite_to_file,
                    cases,
                    [Started(c) for c in started],
                    args.clients,
                    repeats,
                    suite.run_timeout,
                    path,
                    stamp,
                )
            finally:
                for contender in started:
                    contender.stop()
    finally:
        with record_sink(path, stamp) as emit:
            for note in late:
                emit({"kind": "note", "text": note})
        if ray_started:
            import ray

            ray.shutdown()
            shutil.rmtree(ray_dir, ignore_errors=True)
    print(f"results: {path}")

    from benchmarks import report

    if claimants:
        print(report.claims_markdown(*report.load_claims(path)))
    outputs = report.write_reports(path, None if str(args.performance_md) == "-" else args.performance_md)
    for output in outputs:
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
