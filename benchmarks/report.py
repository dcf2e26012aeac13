"""Turn a results file into tables, plots and PERFORMANCE.md.

    python -m benchmarks.report benchmarks/results/<run>.jsonl [--performance-md PERFORMANCE.md]

Every figure is the median over the repeats of a (case, contender, client) with its min-max;
ratios compare medians (their range compares the extremes: min/max .. max/min).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import shutil
import statistics
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PLOTS_DIR = Path(__file__).resolve().parent / "plots"
RAW, HYPHA_RPC, V4 = "raw", "hypha-rpc", "v4"


@dataclass
class Stat:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        finite = [v for v in values if not math.isnan(v)]
        if not finite:
            return cls(math.nan, math.nan, math.nan)
        return cls(statistics.median(finite), min(finite), max(finite))


@dataclass
class Row:
    """One (case, contender, client) over its repeats."""

    case: str
    contender: str
    client: str
    repeats: int
    complete: bool  #: every run delivered every message in time
    delivered: str
    msgs_per_s: Stat
    mb_per_s: Stat
    latency_p50_ms: Stat
    latency_p99_ms: Stat
    cpu_us_per_msg: Stat  #: server CPU microseconds per delivered message
    server_rss_mb: Stat
    client_cpu_s: Stat

    @property
    def label(self) -> str:
        return f"{self.contender} [{self.client}]"


#: Figures of a run that are the sums of its passes' (a run's passes are records of one repeat).
SUMMED = (
    "messages",
    "delivered",
    "errors",
    "payload_bytes",
    "elapsed_s",
    "server_cpu_s",
    "client_cpu_s",
    "provider_cpu_s",
)


def run_key(record: dict[str, Any]) -> tuple[Any, ...]:
    """The run a pass record belongs to: (kind, case, contender, client, repeat)."""
    return (record.get("kind"), record["case"], record["contender"], record["client"], record.get("repeat"))


def merge_passes(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per run — (kind, case, contender, client, repeat) — from the records of its
    passes (``run.run_case`` interleaves the pairs pass by pass): counts, bytes, time and CPU
    summed, rates of the sums, the median of the passes' latency percentiles, the peak RSS,
    ``passes`` how many there were. A record without ``pass`` is a run of one pass."""
    runs: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        runs.setdefault(run_key(r), []).append(r)
    merged = []
    for passes in runs.values():
        run = {k: v for k, v in passes[0].items() if k != "pass"}
        for key in SUMMED:
            if key in run:
                run[key] = sum(p[key] for p in passes)
        elapsed = max(run["elapsed_s"], 1e-9)
        run.update(
            passes=len(passes),
            timed_out=any(p["timed_out"] for p in passes),
            msgs_per_s=run["delivered"] / elapsed,
            mb_per_s=run["payload_bytes"] / elapsed / 1e6,
        )
        for key in ("latency_p50_ms", "latency_p99_ms"):
            if key in run:
                run[key] = statistics.median(p[key] for p in passes)
        if "server_rss_mb" in run:
            run["server_rss_mb"] = max(p["server_rss_mb"] for p in passes)
        for key in ("renewed_clients", "renew_error"):  # after a pass that lost calls
            found = [p[key] for p in passes if key in p]
            if found:
                run[key] = found[-1]
        merged.append(run)
    return merged


def load(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    meta: dict[str, Any] = {}
    results, errors = [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        kind = record.get("kind")
        if kind == "meta":
            meta = record
        elif kind == "result":
            results.append(record)
        elif kind == "error":
            errors.append(record)
        elif kind == "note":  # written after the meta line (e.g. a contender that did not start)
            meta.setdefault("notes", []).append(record["text"])
    return meta, merge_passes(results), errors


def aggregate(results: list[dict[str, Any]]) -> list[Row]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        groups.setdefault((r["case"], r["contender"], r["client"]), []).append(r)
    rows = []
    for (case, contender, client), runs in groups.items():

        def stat(key: str, runs: list[dict] = runs) -> Stat:
            return Stat.of(float(r[key]) for r in runs)

        rows.append(
            Row(
                case=case,
                contender=contender,
                client=client,
                repeats=len(runs),
                complete=all(r["delivered"] == r["messages"] and not r["timed_out"] for r in runs),
                delivered=f"{min(r['delivered'] for r in runs)}/{runs[0]['messages']}",
                msgs_per_s=stat("msgs_per_s"),
                mb_per_s=stat("mb_per_s"),
                latency_p50_ms=stat("latency_p50_ms"),
                latency_p99_ms=stat("latency_p99_ms"),
                cpu_us_per_msg=Stat.of(r["server_cpu_s"] / max(r["delivered"], 1) * 1e6 for r in runs),
                server_rss_mb=stat("server_rss_mb"),
                client_cpu_s=stat("client_cpu_s"),
            )
        )
    return rows


# -- ratios ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RatioSpec:
    title: str
    numerator: tuple[str, str]  #: (contender, client)
    denominator: tuple[str, str]


def ratio_specs(rows: list[Row]) -> list[RatioSpec]:
    """The comparisons this run's contenders allow."""
    present = {(r.contender, r.client) for r in rows}
    contenders = {r.contender for r in rows}
    specs = [
        RatioSpec("1w / bare relay (raw)", ("rhizomorph-1w", RAW), ("bare-relay", RAW)),
        RatioSpec("2w / bare relay (raw)", ("rhizomorph-2w", RAW), ("bare-relay", RAW)),
        RatioSpec("2w / 1w (raw)", ("rhizomorph-2w", RAW), ("rhizomorph-1w", RAW)),
        RatioSpec("2w / 1w (hypha-rpc)", ("rhizomorph-2w", HYPHA_RPC), ("rhizomorph-1w", HYPHA_RPC)),
        RatioSpec("hypha-rpc / raw (1w)", ("rhizomorph-1w", HYPHA_RPC), ("rhizomorph-1w", RAW)),
        RatioSpec("v4 / v3 (hypha-rpc, 1w)", ("rhizomorph-1w", V4), ("rhizomorph-1w", HYPHA_RPC)),
        RatioSpec("1w / Hypha (hypha-rpc)", ("rhizomorph-1w", HYPHA_RPC), ("hypha", HYPHA_RPC)),
        RatioSpec("1w / Hypha (raw)", ("rhizomorph-1w", RAW), ("hypha", RAW)),
    ]
    for name in sorted(c for c in contenders if "batching" in c):
        specs.append(
            RatioSpec(f"{name.removeprefix('rhizomorph-2w-')} / default (raw)", (name, RAW), ("rhizomorph-2w", RAW))
        )
    return [s for s in specs if s.numerator in present and s.denominator in present]


def _ratio(a: Stat, b: Stat) -> Stat:
    if not b.median or not b.low or math.isnan(a.median + b.median):
        return Stat(math.nan, math.nan, math.nan)
    return Stat(a.median / b.median, a.low / b.high, a.high / b.low)


def ratio_table(rows: list[Row], metric: str, specs: list[RatioSpec]) -> str:
    index = {(r.case, r.contender, r.client): r for r in rows}
    cases = list(dict.fromkeys(r.case for r in rows))
    lines = ["| case | " + " | ".join(s.title for s in specs) + " |", "|---" * (len(specs) + 1) + "|"]
    for case in cases:
        cells = []
        for spec in specs:
            a, b = index.get((case, *spec.numerator)), index.get((case, *spec.denominator))
            cells.append(_fmt_ratio(_ratio(getattr(a, metric), getattr(b, metric))) if a and b else "–")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- tables ---------------------------------------------------------------------------------------
def _num(x: float) -> str:
    if math.isnan(x):
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _fmt(s: Stat, spread: bool = True) -> str:
    if math.isnan(s.median):
        return "–"
    return f"{_num(s.median)} ({_num(s.low)}–{_num(s.high)})" if spread else _num(s.median)


def _fmt_ratio(s: Stat) -> str:
    return "–" if math.isnan(s.median) else f"**{s.median:.2f}** ({s.low:.2f}–{s.high:.2f})"


def detail_table(rows: list[Row]) -> str:
    header = (
        "| case | contender [client] | msgs/s | MB/s | p50 ms | p99 ms | server CPU µs/msg | server RSS MB "
        "| client CPU s | delivered |"
    )
    lines = [header, "|---" * 10 + "|"]
    for r in rows:
        delivered = r.delivered if r.complete else f"⚠ {r.delivered}"
        lines.append(
            f"| {r.case} | {r.label} | {_fmt(r.msgs_per_s)} | {_fmt(r.mb_per_s)} | {_fmt(r.latency_p50_ms)} "
            f"| {_fmt(r.latency_p99_ms)} | {_fmt(r.cpu_us_per_msg, False)} | {_fmt(r.server_rss_mb, False)} "
            f"| {_fmt(r.client_cpu_s, False)} | {delivered} |"
        )
    return "\n".join(lines)


def ratios_markdown(rows: list[Row]) -> str:
    specs = ratio_specs(rows)
    if not specs:
        return "_No pair of contenders to compare in this run._"
    return "\n\n".join(
        [
            "**Throughput ratio** (msgs/s; > 1: the first is faster)\n\n" + ratio_table(rows, "msgs_per_s", specs),
            "**Latency ratio** (p50; < 1: the first is quicker)\n\n" + ratio_table(rows, "latency_p50_ms", specs),
            "**Server CPU per message ratio** (< 1: the first spends less CPU)\n\n"
            + ratio_table(rows, "cpu_us_per_msg", specs),
        ]
    )


# -- the batching report's table (benchmarks/bench_claims.py) --------------------------------------
CLAIM_SCENARIOS = ("small", "medium", "large", "mixed")
CLAIM_MODE_NAMES = {"concurrent": "32 in flight", "burst": "burst"}
DEFAULT, NO_BATCHING, HYPHA = "rhizomorph", "rhizomorph-no-batching", "hypha"
WAIT_TIMER = "rhizomorph-wait-timer"  # the defaults with the report's timer rule (``--batch-waits timer``)
UVLOOP = "rhizomorph-loop-uvloop"  # the defaults on uvloop (``--loops uvloop asyncio``)
ASYNCIO = "rhizomorph-loop-asyncio"  # ... and on asyncio
BEST = ("best rhizomorph", "")
#: The issue's targets (issue 12), evaluated on medians over both modes of one run.
V4_ON_OFF_TARGET = {"small": 1.5, "medium": 1.3, "large": 1.05, "mixed": 1.35}
V4_V3_TARGET = {"small": 1.3, "medium": 1.3, "mixed": 1.3}
ROUTER_CPU_VS_HYPHA = 0.25
MiB = 2**20


@dataclass
class ClaimCell:
    """One (scenario, mode, contender, client) of the claims benchmark over its repeats."""

    scenario: str
    mode: str
    contender: str
    client: str
    runs: dict[int, dict[str, Any]]  #: by repeat
    complete: bool

    def stat(self, value: Any) -> Stat:
        return Stat.of(value(r) for r in self.runs.values())

    @property
    def mib_per_s(self) -> Stat:
        return self.stat(mib_per_s)

    def cpu_us(self, key: str) -> Stat:
        return self.stat(lambda r: r[key] / max(r["delivered"], 1) * 1e6)


def mib_per_s(record: dict[str, Any]) -> float:
    return record["payload_bytes"] / record["elapsed_s"] / MiB


def load_claims(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """The meta line (with notes), the claims records and the other claims lines (idle, end, errors)."""
    meta, _, _ = load(path)
    claims, extra = [], []
    for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "claim":
            claims.append(record)
        elif record.get("kind") in ("claims-idle", "claims-end", "claim-error", "claim-skip"):
            extra.append(record)
    return meta, merge_passes(claims), extra


def claim_cells(records: list[dict[str, Any]]) -> dict[tuple[str, str, str, str], ClaimCell]:
    cells: dict[tuple[str, str, str, str], ClaimCell] = {}
    for r in records:
        key = (r["scenario"], r["mode"], r["contender"], r["client"])
        cell = cells.setdefault(key, ClaimCell(*key, runs={}, complete=True))
        cell.runs[r["repeat"]] = r
        cell.complete &= r["delivered"] == r["messages"] and not r["timed_out"]
    return cells


#: A router started more than once in a claims run (``bench_claims --copies``): ``rhizomorph#2``.
COPY_MARK = "#"


def copy_of(name: str) -> tuple[str, int]:
    """``rhizomorph-no-batching#2`` -> (``rhizomorph-no-batching``, 2); a name without a copy number is copy 1."""
    base, mark, number = name.rpartition(COPY_MARK)
    return (base, int(number)) if mark and number.isdigit() else (name, 1)


def pool_copies(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs of a setting's copies, one run per repeat: payload, time, calls and CPU summed over
    the copies (so MiB/s is the sum of the payload over the sum of the time: with the same passes on
    every copy, the same work's total time), ``passes`` summed, ``copies`` how many were pooled."""
    if all(copy_of(r["contender"])[1] == 1 for r in records):
        return records
    renamed = [{**r, "contender": copy_of(r["contender"])[0]} for r in records]
    passes: dict[tuple[Any, ...], int] = {}
    copies: dict[tuple[Any, ...], int] = {}
    for r in renamed:
        key = run_key(r)
        passes[key] = passes.get(key, 0) + r.get("passes", 1)
        copies[key] = copies.get(key, 0) + 1
    pooled = merge_passes(renamed)
    for run in pooled:
        key = run_key(run)
        run.update(passes=passes[key], copies=copies[key])
    return pooled


def copy_ratios(copies: dict[tuple[str, str, str, str], ClaimCell], scenario: str, mode: str) -> dict[str, list[float]]:
    """Identical routers in one run: per setting and client started in copies, the paired ratios
    (same repeat) of copy 1 to each later copy, in one scenario and mode; ``copies`` the cells of the
    unpooled records."""
    found = {}
    for (s, m, name, client), cell in sorted(copies.items(), key=lambda item: item[0]):
        base, number = copy_of(name)
        first = copies.get((s, m, base, client))
        if s == scenario and m == mode and number > 1 and first is not None:
            found[f"{base} [{client}] 1/{number}"] = paired(first, cell)
    return found


def copy_floor(copies, scenario: str, mode: str) -> float | None:
    """How far identical routers' medians differ in this cell: the largest max(m, 1/m) over the
    medians m of ``copy_ratios``; None when the run had no copies."""
    medians = [statistics.median(r) for r in copy_ratios(copies, scenario, mode).values() if r]
    return max((max(m, 1 / m) for m in medians if m > 0), default=None)


def copy_row_title(copies) -> str | None:
    """The title of the identical-routers row (``copy 1 / copy 2``), None without copies."""
    last = max((copy_of(name)[1] for (_, _, name, _) in copies or {}), default=1)
    if last < 2:
        return None
    return "identical routers, copy 1 / copy " + ("2" if last == 2 else f"2–{last}")


def copy_stat(copies, scenario: str, modes: Iterable[str]) -> tuple[Stat, bool]:
    """Every copy-1 / later-copy ratio of a scenario over ``modes``, and whether those runs were complete."""
    ratios: list[float] = []
    complete = True
    for mode in modes:
        for rs in copy_ratios(copies, scenario, mode).values():
            ratios += rs
        complete &= all(c.complete for (s, m, _, _), c in copies.items() if s == scenario and m == mode)
    return Stat.of(ratios), complete


def _best(cells: dict[tuple[str, str, str, str], ClaimCell], scenario: str, mode: str) -> ClaimCell | None:
    """The rhizomorph pair with the highest median MiB/s in this cell."""
    mine = [c for (s, m, name, _), c in cells.items() if s == scenario and m == mode and name.startswith(DEFAULT)]
    return max(mine, key=lambda c: c.mib_per_s.median, default=None)


def _cell(cells, scenario: str, mode: str, who: tuple[str, str]) -> ClaimCell | None:
    return _best(cells, scenario, mode) if who == BEST else cells.get((scenario, mode, *who))


def paired(a: ClaimCell | None, b: ClaimCell | None, value: Any = mib_per_s) -> list[float]:
    """Ratios of the runs of the same repeat (the repeats interleave the pairs, so each such pair of
    runs saw the same machine)."""
    if a is None or b is None:
        return []
    return [value(a.runs[r]) / value(b.runs[r]) for r in sorted(a.runs.keys() & b.runs.keys()) if value(b.runs[r])]


@dataclass(frozen=True)
class ClaimRatio:
    title: str
    numerator: tuple[str, str]
    denominator: tuple[str, str]
    claimed: bool = False  #: the report's claimed gain applies (batching on / off)
    optional: bool = False  #: a row only when the run measured its contenders (``--batch-waits``)


CLAIM_RATIOS = (
    ClaimRatio("v3 clients, batching on / off", (DEFAULT, HYPHA_RPC), (NO_BATCHING, HYPHA_RPC), claimed=True),
    ClaimRatio("v4 client, batching on / off", (DEFAULT, V4), (NO_BATCHING, V4), claimed=True),
    ClaimRatio("v4 on / v3 on", (DEFAULT, V4), (DEFAULT, HYPHA_RPC)),
    ClaimRatio("best rhizomorph / Hypha", BEST, (HYPHA, HYPHA_RPC)),
    ClaimRatio("v3 clients, wait for socket / timer", (DEFAULT, HYPHA_RPC), (WAIT_TIMER, HYPHA_RPC), optional=True),
    ClaimRatio("v4 client, wait for socket / timer", (DEFAULT, V4), (WAIT_TIMER, V4), optional=True),
    ClaimRatio("v4 client, timer wait: on / off", (WAIT_TIMER, V4), (NO_BATCHING, V4), optional=True),
    ClaimRatio("v3 clients, router on uvloop / asyncio", (UVLOOP, HYPHA_RPC), (ASYNCIO, HYPHA_RPC), optional=True),
    ClaimRatio("v4 client, router on uvloop / asyncio", (UVLOOP, V4), (ASYNCIO, V4), optional=True),
)


def claim_rows(cells) -> list[ClaimRatio]:
    measured = {contender for (_, _, contender, _) in cells}
    return [r for r in CLAIM_RATIOS if not r.optional or {r.numerator[0], r.denominator[0]} <= measured]


def claim_ratio(cells, spec: ClaimRatio, scenario: str, modes: Iterable[str], value: Any = mib_per_s):
    """Median and min-max of the paired ratios over ``modes`` (those measured on both sides), and
    whether every run behind them delivered every call in time."""
    ratios, complete = [], True
    for mode in modes:
        a, b = _cell(cells, scenario, mode, spec.numerator), _cell(cells, scenario, mode, spec.denominator)
        if a is None or b is None:
            continue
        ratios += paired(a, b, value)
        complete &= a.complete and b.complete
    return Stat.of(ratios), complete


def _pct(x: float) -> str:
    return f"{(x - 1) * 100:+.0f} %"


def _claim_cell_text(stat: Stat, complete: bool, claimed: float | None) -> str:
    if math.isnan(stat.median):
        return "–"
    text = f"**{stat.median:.2f}** ({stat.low:.2f}–{stat.high:.2f})"
    if claimed is not None:
        text += f" {_pct(stat.median)} vs claimed +{claimed * 100:.0f} %"
    return text + ("" if complete else " ⚠")


def _modes(cells) -> list[str]:
    present = {m for (_, m, _, _) in cells}
    return [m for m in CLAIM_MODE_NAMES if m in present] + sorted(present - CLAIM_MODE_NAMES.keys())


def _scenarios(cells) -> list[str]:
    present = {s for (s, _, _, _) in cells}
    return [s for s in CLAIM_SCENARIOS if s in present] + sorted(present - set(CLAIM_SCENARIOS))


def claims_table(cells, copies=None) -> str:
    """``copies``: the cells of the unpooled records (``claim_cells`` before ``pool_copies``), for the
    identical-routers row; ``cells`` those of the pooled ones."""
    from benchmarks.scenarios import CLAIMED_GAIN

    scenarios, modes = _scenarios(cells), _modes(cells)
    lines = [
        "| ratio of MiB/s | " + " | ".join(scenarios) + " |",
        "|---" * (len(scenarios) + 1) + "|",
        "| *the batching report's claim, on / off* | "
        + " | ".join(f"+{CLAIMED_GAIN[s] * 100:.0f} %" if s in CLAIMED_GAIN else "–" for s in scenarios)
        + " |",
    ]
    for spec in claim_rows(cells):
        texts = []
        for s in scenarios:
            stat, complete = claim_ratio(cells, spec, s, modes)
            texts.append(_claim_cell_text(stat, complete, CLAIMED_GAIN.get(s) if spec.claimed else None))
        lines.append(f"| {spec.title} | " + " | ".join(texts) + " |")
    lines += _copy_row(copies, [(s, modes) for s in scenarios])
    return "\n".join(lines)


def claims_mode_table(cells, copies=None) -> str:
    scenarios, modes = _scenarios(cells), _modes(cells)
    columns = [(s, m) for s in scenarios for m in modes]
    lines = [
        "| ratio of MiB/s | " + " | ".join(f"{s}, {CLAIM_MODE_NAMES.get(m, m)}" for s, m in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for spec in claim_rows(cells):
        texts = [_claim_cell_text(*claim_ratio(cells, spec, s, [m]), None) for s, m in columns]
        lines.append(f"| {spec.title} | " + " | ".join(texts) + " |")
    lines += _copy_row(copies, [(s, [m]) for s, m in columns])
    return "\n".join(lines)


def _copy_row(copies, columns: list[tuple[str, list[str]]]) -> list[str]:
    """The identical-routers row of a claims table, one cell per (scenario, modes) column; none
    without copies."""
    title = copy_row_title(copies)
    if not title:
        return []
    texts = [_claim_cell_text(*copy_stat(copies, s, modes), None) for s, modes in columns]
    return [f"| *{title}* | " + " | ".join(texts) + " |"]


def claims_spread(cells, value: Any = mib_per_s) -> dict[str, Stat]:
    """How far one cell's paired ratios (scenario, mode: one per repeat) of ``value`` (MiB/s unless
    told) spread: per ratio row, the max / min of each cell's ratios, as median (min–max) over the
    cells. 1.00 would be runs that agree exactly; a cell with fewer than two ratios has no spread."""
    spreads = {}
    for spec in claim_rows(cells):
        per_cell = []
        for s in _scenarios(cells):
            for m in _modes(cells):
                a, b = _cell(cells, s, m, spec.numerator), _cell(cells, s, m, spec.denominator)
                ratios = [r for r in paired(a, b, value) if r > 0]
                if len(ratios) > 1:
                    per_cell.append(max(ratios) / min(ratios))
        if per_cell:
            spreads[spec.title] = Stat.of(per_cell)
    return spreads


def claims_spread_markdown(cells) -> str:
    lines = ["| ratio | max / min of a cell's paired ratios: median over the cells (min–max) |", "|---|---|"]
    lines += [f"| {title} | {_fmt(stat)} |" for title, stat in claims_spread(cells).items()]
    return "\n".join(lines)


def claims_detail_table(cells, idle_share: float | None = None) -> str:
    """``idle_share``: the share of a core Ray's processes use with no traffic; the router column then
    says how much of each rhizomorph figure that background is (that share over the run, per call)."""
    lines = [
        "| scenario | mode | contender [client] | MiB/s | calls/s | p50 ms | caller µs/call | provider µs/call "
        "| router µs/call | calls per run |",
        "|---" * 10 + "|",
    ]
    order = {name: i for i, name in enumerate((DEFAULT, NO_BATCHING, HYPHA))}
    for s in _scenarios(cells):
        for m in _modes(cells):
            mine = [c for (cs, cm, _, _), c in cells.items() if cs == s and cm == m]
            for c in sorted(mine, key=lambda c: (order.get(c.contender, 9), c.contender, c.client)):
                delivered = calls_per_run(list(c.runs.values()))
                calls, p50 = c.stat(lambda r: r["msgs_per_s"]), c.stat(lambda r: r["latency_p50_ms"])
                router = _fmt(c.cpu_us("server_cpu_s"), False)
                if idle_share is not None and c.contender != HYPHA:
                    idle = c.stat(lambda r: idle_share * r["elapsed_s"] / max(r["delivered"], 1) * 1e6)
                    router += f" (idle {_fmt(idle, False)})"
                lines.append(
                    f"| {s} | {CLAIM_MODE_NAMES.get(m, m)} | {c.contender} [{c.client}] | {_fmt(c.mib_per_s)} "
                    f"| {_fmt(calls)} | {_fmt(p50, False)} "
                    f"| {_fmt(c.cpu_us('client_cpu_s'), False)} | {_fmt(c.cpu_us('provider_cpu_s'), False)} "
                    f"| {router} | {delivered} |"
                )
    return "\n".join(lines)


def calls_per_run(runs: list[dict[str, Any]]) -> str:
    """A scenario's calls times the passes of the runs (``2000 × 3–4``), ⚠ and the calls lost, if any."""
    passes = [r.get("passes", 1) for r in runs]
    per_pass = runs[0]["messages"] // max(passes[0], 1)
    text = f"{per_pass} × {min(passes)}" + (f"–{max(passes)}" if max(passes) != min(passes) else "")
    lost = sum(r["messages"] - r["delivered"] for r in runs)
    timed_out = sum(bool(r["timed_out"]) for r in runs)
    if lost or timed_out:
        text = f"⚠ {text}, {lost} lost" + (f", {timed_out} timed out" if timed_out else "")
    return text


def _verdict(got: dict[str, float], wanted: Iterable[str], ok: Any) -> str:
    """reached / not reached over the wanted scenarios; ``ok(scenario, value)`` judges one."""
    wanted = list(wanted)
    if any(s in got and not ok(s, got[s]) for s in wanted):
        return "**not reached**"
    missing = [s for s in wanted if s not in got]
    if missing:
        return f"not measured ({', '.join(missing)} missing)" if len(missing) < len(wanted) else "not measured"
    return "**reached**"


def _figures(got: dict[str, float]) -> str:
    return " — " + ", ".join(f"{s} {v:.2f}" for s, v in got.items()) if got else ""


def _who(key: tuple[str, str]) -> str:
    return " ".join(part for part in key if part)


def _below(value: float) -> str:
    """A ratio below 1.0 that two digits would round up to 1.00 gets three."""
    return f"{value:.2f}" if round(value, 2) < 1 else f"{value:.3f}"


def every_cell_verdict(got: dict[tuple[str, str], float], floors: dict[str, float | None]) -> str:
    """A ≥ 1.0-in-every-cell target over ``got`` ((who, cell) -> median ratio): reached when no cell is
    below 1.0; else each cell below, and with ``floors`` (cell -> ``copy_floor``, identical routers'
    largest difference in that cell) whether it is within that noise (ratio ≥ 1 / floor) or beyond it.
    Every cell below within its floor: **within the noise** (not evidence of a loss); any beyond (or one
    without a floor, when the run had copies): **not reached**."""
    if not got:
        return "not measured"
    below = {key: v for key, v in got.items() if v < 1.0}
    if not below:
        return f"**reached** ({len(got)} of {len(got)} cells ≥ 1.0)"
    if not floors:
        return "**not reached**, below 1.0: " + ", ".join(f"{_who(key)} {_below(v)}" for key, v in below.items())
    texts, beyond = [], 0
    for (who, cell), v in below.items():
        floor = floors.get(cell)
        if floor is None:
            beyond += 1
            texts.append(f"{_who((who, cell))} {_below(v)} (no identical routers measured)")
        else:
            inside = v >= 1 / floor
            beyond += not inside
            spread = f"±{(floor - 1) * 100:.0f} %"
            texts.append(f"{_who((who, cell))} {_below(v)} ({'within' if inside else 'beyond'} {spread})")
    verdict = "**not reached**" if beyond else "**within the noise**"
    within = len(below) - beyond
    counts = f"{len(got) - len(below)} of {len(got)} cells ≥ 1.0, {within} below within the identical routers' spread"
    return f"{verdict} ({counts}), below 1.0: " + ", ".join(texts)


def claims_targets(cells, copies=None) -> list[str]:
    """The issue's targets, each reached or not, with the measured figures (medians over both modes).
    ``copies`` (the unpooled cells of a run with ``--copies``): the ≥ 1.0-in-every-cell targets say
    whether each cell below 1.0 is within that cell's identical-routers spread (``every_cell_verdict``)."""
    scenarios, modes = _scenarios(cells), _modes(cells)
    floors = {}
    if copy_row_title(copies):
        floors = {f"{s}/{CLAIM_MODE_NAMES.get(m, m)}": copy_floor(copies, s, m) for s in scenarios for m in modes}
    on_off_v3, on_off_v4, v4_v3, _ = CLAIM_RATIOS[:4]

    def medians(spec: ClaimRatio, value: Any = mib_per_s) -> dict[str, float]:
        found = {s: claim_ratio(cells, spec, s, modes, value)[0].median for s in scenarios}
        return {s: v for s, v in found.items() if not math.isnan(v)}

    def per_cell(spec: ClaimRatio) -> dict[str, float]:
        found = {
            f"{s}/{CLAIM_MODE_NAMES.get(m, m)}": claim_ratio(cells, spec, s, [m])[0].median
            for s in scenarios
            for m in modes
        }
        return {k: v for k, v in found.items() if not math.isnan(v)}

    lines = []
    got = medians(on_off_v4)
    wanted = ", ".join(f"{t}× {s}" for s, t in V4_ON_OFF_TARGET.items())
    verdict = _verdict(got, V4_ON_OFF_TARGET, lambda s, v: v >= V4_ON_OFF_TARGET[s])
    lines.append(f"- v4 client, batching on vs off ≥ {wanted}: {verdict}{_figures(got)}")
    got = per_cell(v4_v3)
    total = len(CLAIM_SCENARIOS) * len(CLAIM_MODE_NAMES)
    counted = f" ({len(got)} of {total} measured)" if len(got) < total else ""
    verdict = every_cell_verdict({("", k): v for k, v in got.items()}, floors)
    lines.append(f"- v4 / v3 ≥ 1.0 in every cell{counted}: {verdict}")
    got = {s: v for s, v in medians(v4_v3).items() if s in V4_V3_TARGET}
    verdict = _verdict(got, V4_V3_TARGET, lambda s, v: v >= V4_V3_TARGET[s])
    lines.append(f"- v4 / v3 ≥ 1.3× on {', '.join(V4_V3_TARGET)}: {verdict}{_figures(got)}")

    def router_cpu(record: dict[str, Any]) -> float:
        return record["server_cpu_s"] / max(record["delivered"], 1)

    got = medians(ClaimRatio("router CPU", (DEFAULT, HYPHA_RPC), (HYPHA, HYPHA_RPC)), router_cpu)
    verdict = _verdict(got, scenarios, lambda s, v: v <= ROUTER_CPU_VS_HYPHA)
    lines.append(
        "- router CPU per call ≤ 1/4 of Hypha's in every scenario (rhizomorph / Hypha, hypha-rpc clients on both): "
        + (f"{verdict}{_figures(got)}" if got else "not measured (no Hypha in this run)")
    )
    got = {(spec.title.split(",")[0], k): v for spec in (on_off_v3, on_off_v4) for k, v in per_cell(spec).items()}
    lines.append(
        "- never slower (item 3): batching on ≥ off in every cell, v3 and v4 clients: "
        + every_cell_verdict(got, floors)
    )
    return lines


def _run_length(meta: dict[str, Any]) -> str:
    seconds = meta.get("min_run_s", meta.get("claims_min_run_s"))
    if not seconds:
        return " each run one pass over its scenario's calls."
    return (
        f" each run is a pair's passes over its scenario's calls, the pairs taking turns pass by pass"
        f" until their passes have lasted {seconds:g} s each on average."
    )


def claims_markdown(meta: dict[str, Any], records: list[dict[str, Any]], extra: list[dict[str, Any]]) -> str:
    """The headline section: the ratio table with the report's claims, the targets, the figures;
    for a run of several trees (``bench_claims --trees``) that of the last tree, then each tree
    against the first (``trees_markdown``)."""
    labels = tree_labels(meta)
    if labels:
        by_tree = split_trees(records, labels)
        usual = by_tree.get(labels[-1], []) + by_tree.get(None, [])
        head = _claims_markdown(meta, usual, extra)
        note = f"_Run of {len(labels)} source trees: the table above is the last one's (`{labels[-1]}`)._\n\n"
        return head + "\n" + note + trees_markdown(meta, records) + "\n"
    return _claims_markdown(meta, records, extra)


def _copies_text(copies) -> str:
    title = copy_row_title(copies)
    if not title:
        return ""
    return (
        " Every rhizomorph setting ran as identical routers (`rhizomorph`, `rhizomorph#2`, ...), started in a"
        " balanced order (on, off, off, on: each setting has an early and a late router); each ratio pools a"
        " setting's copies per repeat (their payload summed over their time summed). The last row is copy 1 over"
        " the later copies of the same setting and client, every such ratio: how far identical routers differ in"
        " this run. A cell below 1.0 is *within* when it is no further from 1.0 than the median of the identical"
        " routers furthest apart in that cell (scenario and mode)."
    )


def _claims_markdown(meta: dict[str, Any], records: list[dict[str, Any]], extra: list[dict[str, Any]]) -> str:
    copies = claim_cells(records)  # every router on its own (``--copies``: each copy apart)
    cells = claim_cells(pool_copies(records))  # the copies of a setting pooled: what the ratios compare
    if not cells:
        return "## The batching report's table, with real clients\n\n_No claims runs in this results file._\n"
    repeats = max(len(c.runs) for c in cells.values())
    idle = next((r for r in extra if r.get("kind") == "claims-idle"), None)
    idle_share = idle["cpu_share_of_core"] if idle else None
    v3 = meta.get("machine", {}).get("versions", {}).get("hypha-rpc", "")
    parts = [
        "## The batching report's table, with real clients",
        "hypha-rpc's batching report claims +48 % small (2000 × 256 B), +26 % medium (500 × 20 KB), +5 % large"
        " (20 × 2 MB) and +34 % mixed (250 dashboard messages). Measured here with real clients: a caller and an"
        f" echo provider, each a client in a process of its own (released hypha-rpc {v3} as v3, rhizomorph's v4"
        " client), 32 calls in flight and an unbounded burst; `rhizomorph` is the router's defaults,"
        " `rhizomorph-no-batching` the same with `--no-batching` (the v4 client's own batching off with it);"
        " `hypha` the real Hypha server with hypha-rpc clients."
        f" {repeats} repeat{'s' if repeats != 1 else ''}, interleaved;{_run_length(meta)}"
        " Command: `python -m benchmarks.bench_claims` (part of `make bench`).",
        "Each cell: the median of the ratios of runs of the same repeat, over both modes, with their min–max;"
        " MiB/s counts the payload both ways. ⚠: some run lost calls or hit the time limit." + _copies_text(copies),
        claims_table(cells, copies),
        "**Targets** (issue 12; medians over both modes):\n\n" + "\n".join(claims_targets(cells, copies)),
        "**Per mode** (median of the paired ratios, min–max)\n\n" + claims_mode_table(cells, copies),
        "**Spread** (how far the repeats of one cell disagree)\n\n" + claims_spread_markdown(cells),
        "**Figures** (median, min–max, of the repeats). CPU per call, µs: the caller (the load process), the"
        " provider (its process), the router (rhizomorph: every process of the Ray runtime except the other"
        " routers' actors (workers, registry, controller); Hypha: its process tree); *idle*: the part of it that"
        " Ray's processes use with no traffic at all (measured before the runs, times the run's length, per call).\n\n"
        + claims_detail_table(cells, idle_share),
    ]
    facts = []
    lost = [r for r in records if r["delivered"] < r["messages"]]
    if lost:
        facts.append(
            "Runs that lost calls (their pair got new clients for its next pass): "
            + ", ".join(
                f"{r['case']} {r['contender']} [{r['client']}] repeat {r['repeat']} ({r['delivered']}/{r['messages']})"
                for r in lost
            )
        )
    for record in extra:
        if record.get("kind") == "claims-idle":
            facts.append(
                f"With no traffic, the processes counted as `{record['contender']}`'s router ({record['processes']}"
                f" Ray processes) used {record['cpu_share_of_core'] * 100:.1f} % of a core (over"
                f" {record['seconds']:.1f} s); that is in every rhizomorph router figure."
            )
        elif record.get("kind") == "claims-end":
            facts.append(f"Load average at the end of the claims runs: {record['load_average']}.")
        elif record.get("kind") in ("claim-error", "claim-skip"):
            what = record.get("error") or record.get("reason")
            facts.append(f"{record['case']} {record['contender']} [{record['client']}]: {what}")
    if facts:
        parts.append("\n".join(f"- {f}" for f in facts))
    return "\n\n".join(parts) + "\n"


# -- before and after: several source trees in one run (bench_claims --trees) ----------------------
def tree_labels(meta: dict[str, Any]) -> list[str]:
    """The trees of a run, the first (the "before") first; none for a run of one tree."""
    return [t["label"] for t in meta.get("trees") or []]


def tree_of(name: str, labels: list[str]) -> tuple[str, str | None]:
    """``rhizomorph-no-batching@main`` -> (``rhizomorph-no-batching``, ``main``); no tree -> (name, None)."""
    for label in sorted(labels, key=len, reverse=True):
        if name.endswith(f"@{label}"):
            return name[: -len(label) - 1], label
    return name, None


def split_trees(records: list[dict[str, Any]], labels: list[str]) -> dict[str | None, list[dict[str, Any]]]:
    """The records by tree, each with its contender's plain name (``None``: of no tree, e.g. Hypha)."""
    out: dict[str | None, list[dict[str, Any]]] = {}
    for r in records:
        variant, label = tree_of(r["contender"], labels)
        out.setdefault(label, []).append({**r, "contender": variant})
    return out


@dataclass(frozen=True)
class TreeRatio:
    """One cell (scenario, mode) of one pair (contender, client): a later tree's MiB/s over the first's."""

    tree: str
    contender: str
    client: str
    scenario: str
    mode: str
    ratio: Stat  #: of the runs of the same repeat: median, min–max
    spread: float  #: max / min of those ratios (NaN with fewer than ``TREE_JUDGED``)
    complete: bool

    @property
    def regression(self) -> bool:
        """Below 1.0 by more than the cell's own spread: the median times the spread (max / min of
        the cell's ratios) stays under 1.0."""
        return not math.isnan(self.spread) and self.ratio.median * self.spread < 1.0


#: Ratios a cell needs for its spread to judge it: two that happen to agree make a spread of ~1.00,
#: under which any ratio below 1.0 would count as a regression.
TREE_JUDGED = 3


def tree_ratios(records: list[dict[str, Any]], labels: list[str], value: Any = mib_per_s) -> list[TreeRatio]:
    """Every later tree against the first, per pair and cell (only where both trees measured it)."""
    by_tree = {label: claim_cells(rs) for label, rs in split_trees(records, labels).items() if label is not None}
    first = by_tree.get(labels[0], {}) if labels else {}
    found = []
    for label in labels[1:]:
        for key, cell in by_tree.get(label, {}).items():
            base = first.get(key)
            if base is None:
                continue
            ratios = [r for r in paired(cell, base, value) if r > 0]
            spread = max(ratios) / min(ratios) if len(ratios) >= TREE_JUDGED else math.nan
            found.append(
                TreeRatio(
                    label, key[2], key[3], key[0], key[1], Stat.of(ratios), spread, cell.complete and base.complete
                )
            )
    return found


def _tree_columns(ratios: list[TreeRatio]) -> list[tuple[str, str]]:
    cells = {(r.scenario, r.mode, "", ""): None for r in ratios}
    return [(s, m) for s in _scenarios(cells) for m in _modes(cells) if (s, m, "", "") in cells]


def trees_table(ratios: list[TreeRatio]) -> str:
    """A row per (later tree, contender, client), a column per (scenario, mode)."""
    columns = _tree_columns(ratios)
    index = {(r.tree, r.contender, r.client, r.scenario, r.mode): r for r in ratios}
    order = {name: i for i, name in enumerate((DEFAULT, NO_BATCHING))}
    rows = sorted(
        dict.fromkeys((r.tree, r.contender, r.client) for r in ratios),
        key=lambda k: (k[0] != ratios[0].tree, order.get(k[1], 9), k[1], k[2]),
    )
    lines = [
        "| tree / first, MiB/s | " + " | ".join(f"{s}, {CLAIM_MODE_NAMES.get(m, m)}" for s, m in columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for tree, contender, client in rows:
        texts = []
        for s, m in columns:
            r = index.get((tree, contender, client, s, m))
            texts.append("–" if r is None else _claim_cell_text(r.ratio, r.complete, None))
        lines.append(f"| `{tree}`: {contender} [{client}] | " + " | ".join(texts) + " |")
    return "\n".join(lines)


def tree_regressions(ratios: list[TreeRatio]) -> str:
    """The "regressions" line: the cells where a later tree is below 1.0 by more than the cell's spread."""
    found = [r for r in ratios if r.regression]
    unjudged = sum(math.isnan(r.spread) for r in ratios)
    text = (
        "none"
        if not found
        else "; ".join(
            f"`{r.tree}` {r.contender} [{r.client}] {r.scenario}, {CLAIM_MODE_NAMES.get(r.mode, r.mode)}:"
            f" {r.ratio.median:.2f} ({r.ratio.low:.2f}–{r.ratio.high:.2f}, spread {r.spread:.2f})"
            for r in found
        )
    )
    if unjudged:
        text += f" ({unjudged} of {len(ratios)} cells not judged: fewer than {TREE_JUDGED} repeats)"
    return f"**Regressions** (below 1.0 by more than the cell's spread, max / min of its ratios): {text}"


def tree_summary(ratios: list[TreeRatio]) -> list[str]:
    """Per later tree, over all its cells: the median of the cells' medians with the lowest and the
    highest single ratio, and the median of the cells' spreads (a run of one tree twice: the noise)."""
    lines = []
    for tree in dict.fromkeys(r.tree for r in ratios):
        mine = [r for r in ratios if r.tree == tree and not math.isnan(r.ratio.median)]
        if not mine:
            continue
        medians = Stat.of(r.ratio.median for r in mine)
        low, high = min(r.ratio.low for r in mine), max(r.ratio.high for r in mine)
        spreads = [r.spread for r in mine if not math.isnan(r.spread)]
        spread = f"; a cell's spread (max / min) {_fmt(Stat.of(spreads))}" if spreads else ""
        lines.append(
            f"- `{tree}` / first over {len(mine)} cells: median of the cells' medians **{medians.median:.2f}**"
            f" (cells {medians.low:.2f}–{medians.high:.2f}), single runs {low:.2f}–{high:.2f}{spread}"
        )
    return lines


def trees_markdown(meta: dict[str, Any], records: list[dict[str, Any]]) -> str:
    """Each tree's MiB/s over the first's, cell by cell, the regressions, and the spread."""
    trees = meta.get("trees") or []
    labels = tree_labels(meta)
    ratios = tree_ratios(records, labels)
    described = ", ".join(
        f"`{t['label']}` ({t['spec']}" + (f" at {t['commit']}" if t.get("commit") else "") + ")" for t in trees
    )
    parts = [
        "## Before and after: each tree against the first",
        f'Trees: {described}; the first is the "before". Every rhizomorph contender ran from each tree'
        " (routers on a Ray of the tree's own, caller and provider importing the tree's `rhizomorph`),"
        " interleaved pass by pass. Each cell: the median of the ratios of runs of the same repeat,"
        " later tree / first, with their min–max. ⚠: some run lost calls or hit the time limit.",
    ]
    if not ratios:
        return "\n\n".join([*parts, "_No cell was measured on the first tree and a later one._"]) + "\n"
    parts += [trees_table(ratios), tree_regressions(ratios), "\n".join(tree_summary(ratios))]
    return "\n\n".join(parts) + "\n"


# -- plots ----------------------------------------------------------------------------------------
def plot(rows: list[Row], metric: str, title: str, unit: str, path: Path, log: bool = False) -> bool:
    """One panel per case, one bar per (contender, client) with its min-max range. False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    cases = list(dict.fromkeys(r.case for r in rows))
    labels = list(dict.fromkeys(r.label for r in rows))
    colors = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    columns = 3
    lines = math.ceil(len(cases) / columns)
    fig, axes = plt.subplots(
        lines, columns, figsize=(5.2 * columns, 0.45 * len(labels) * lines + 1.2 * lines), squeeze=False
    )
    for ax, case in zip(axes.flat, cases):
        case_rows = [r for r in rows if r.case == case]
        values = [getattr(r, metric) for r in case_rows]
        y = range(len(case_rows))
        medians = [0 if math.isnan(v.median) else v.median for v in values]
        errors = [
            [max(m - (v.low if not math.isnan(v.low) else m), 0) for m, v in zip(medians, values)],
            [max((v.high if not math.isnan(v.high) else m) - m, 0) for m, v in zip(medians, values)],
        ]
        ax.barh(list(y), medians, xerr=errors, color=[colors[r.label] for r in case_rows], capsize=3)
        ax.set_yticks(list(y), [r.label for r in case_rows], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(case, fontsize=9)
        ax.set_xlabel(unit, fontsize=8)
        ax.tick_params(axis="x", labelsize=7)
        if log:
            ax.set_xscale("log")
    for ax in list(axes.flat)[len(cases) :]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


# -- documents ------------------------------------------------------------------------------------
def _machine_markdown(meta: dict[str, Any]) -> str:
    m = meta.get("machine", {})
    versions = ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items())
    return "\n".join(
        [
            f"- CPU: {m.get('cpu_model')}, {m.get('logical_cores')} logical cores "
            f"({m.get('physical_cores')} physical); RAM {m.get('ram_gb')} GB; {m.get('os')}",
            f"- Python {m.get('python')}; {versions}",
            f"- commit `{m.get('commit')}`{' (with uncommitted changes)' if m.get('dirty') else ''}; "
            f"load average at start {m.get('load_average_at_start')}",
            f"- suite `{meta.get('suite')}`, {meta.get('repeats')} repeats per cell, run `{meta.get('run_id')}` "
            f"started {meta.get('started')}",
        ]
    )


def run_markdown(meta: dict[str, Any], rows: list[Row], errors: list[dict[str, Any]], claims: str | None = None) -> str:
    """The run's report; ``claims`` (the batching report's table) leads when the run has one."""
    parts = ([claims.rstrip()] if claims else []) + ["## Machine\n\n" + _machine_markdown(meta)]
    if meta.get("notes"):
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in meta["notes"]))
    if rows:
        parts.append(
            "## Ratios\n\nMedian of the repeats, with the extreme range in brackets.\n\n" + ratios_markdown(rows)
        )
        parts.append(
            "## All results\n\nMedian (min–max) over the repeats. msgs/s counts completed calls (round trips)"
            " or delivered events; MB/s counts payload bytes moved (both ways for calls, per delivery for"
            " events). ⚠ marks a cell where some run lost messages or hit the time limit.\n\n" + detail_table(rows)
        )
    if errors:
        parts.append(
            "## Failures\n\n"
            + "\n".join(f"- {e['case']} {e['contender']} [{e['client']}]: {e['error']}" for e in errors)
        )
    return "\n\n".join(parts) + "\n"


PERFORMANCE_INTRO = """# rhizomorph performance

Generated by `make bench` (`python -m benchmarks.run --suite {suite}`) from `benchmarks/results/{run_id}.jsonl`;
regenerate with `python -m benchmarks.report <results.jsonl>`. What the scenarios, modes and contenders are:
[benchmarks/README.md](benchmarks/README.md); where each performance target stands, with the focused
benchmarks' numbers and the limits: [benchmarks/targets.md](benchmarks/targets.md); the browser
dashboard (live monitor on API v4 vs v3, not part of `make bench`): [benchmarks/dashboard.md](benchmarks/dashboard.md).

Read the **ratios**, not the absolute numbers: the load generator (all clients, one Python process of
their own, not the Ray driver) shares the cores with the servers, and other work ran on the machine at the
same time, so absolute rates say as much about the machine as about the router. The raw-client rows measure
the server (pre-encoded v3 frames, bare WebSocket clients); the hypha-rpc rows are what a user of the released
client sees, client cost included.
"""


DASHBOARD_MD = Path(__file__).resolve().parent / "dashboard.md"


def dashboard_markdown(path: Path = DASHBOARD_MD) -> str | None:
    """The browser dashboard's table (``benchmarks/bench_dashboard.py``, run by hand: it needs
    Chromium) as a section of PERFORMANCE.md, from the first table in ``path``."""
    if not path.is_file():
        return None
    lines = itertools.dropwhile(lambda line: not line.startswith("|"), path.read_text().splitlines())
    table = list(itertools.takewhile(lambda line: line.startswith("|"), lines))
    if not table:
        return None
    return (
        "## Browser dashboard: the live monitor on API v4 vs v3\n\n"
        "From [benchmarks/dashboard.md](benchmarks/dashboard.md) (how it was run, and what it shows).\n\n"
        + "\n".join(table)
        + "\n\n"
    )


def performance_markdown(
    meta: dict[str, Any], rows: list[Row], errors: list[dict[str, Any]], plots: list[Path], claims: str | None = None
) -> str:
    body = run_markdown(meta, rows, errors, claims)
    figures = "\n\n".join(f"![{p.stem}](benchmarks/plots/{p.name})" for p in plots)
    head, sep, rest = body.partition("## All results")
    head += dashboard_markdown() or ""
    if figures:
        head += "## Plots\n\n" + figures + "\n\n"
    return PERFORMANCE_INTRO.format(suite=meta.get("suite"), run_id=meta.get("run_id")) + "\n" + head + sep + rest


def write_reports(path: Path, performance_md: Path | None = None, plots: bool = True) -> list[Path]:
    """Write <run>.md and (matplotlib permitting) plots next to the results; with ``performance_md``,
    also PERFORMANCE.md and its plots in benchmarks/plots/."""
    meta, results, errors = load(path)
    rows = aggregate(results)
    _, claim_records, claim_extra = load_claims(path)
    claims = claims_markdown(meta, claim_records, claim_extra) if claim_records else None
    base = path.with_suffix("")
    written = []
    md = base.with_suffix(".md")
    md.write_text(f"# Benchmark run {meta.get('run_id')}\n\n" + run_markdown(meta, rows, errors, claims))
    written.append(md)
    made: list[Path] = []
    for metric, title, unit, log, name in (
        ()
        if not plots
        else (
            ("msgs_per_s", "Throughput (median, min–max)", "msgs/s", False, "throughput"),
            ("latency_p50_ms", "Latency p50 (median, min–max)", "ms", False, "latency-p50"),
            ("latency_p99_ms", "Latency p99 (median, min–max)", "ms", False, "latency-p99"),
        )
    ):
        target = Path(f"{base}-{name}.png")
        if rows and plot(rows, metric, title, unit, target, log=log):
            made.append(target)
            written.append(target)
    if performance_md is not None:
        PLOTS_DIR.mkdir(exist_ok=True)
        published = []
        for p in made:
            dest = PLOTS_DIR / p.name.removeprefix(f"{base.name}-")
            shutil.copyfile(p, dest)
            published.append(dest)
            written.append(dest)
        performance_md.write_text(performance_markdown(meta, rows, errors, published, claims))
        written.append(performance_md)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="report a benchmark results file")
    parser.add_argument("results", type=Path)
    parser.add_argument("--performance-md", type=Path, help="also write this PERFORMANCE.md (and benchmarks/plots/)")
    args = parser.parse_args(argv)
    for output in write_reports(args.results, args.performance_md):
        print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
