"""Turn a results file into tables, plots and PERFORMANCE.md.

    python -m benchmarks.report benchmarks/results/<run>.jsonl [--performance-md PERFORMANCE.md]

Every figure is the median over the repeats of a (case, contender, client) with its min-max;
ratios compare medians (their range compares the extremes: min/max .. max/min).
"""

from __future__ import annotations

import argparse
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
    return meta, results, errors


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


def run_markdown(meta: dict[str, Any], rows: list[Row], errors: list[dict[str, Any]]) -> str:
    parts = ["## Machine\n\n" + _machine_markdown(meta)]
    if meta.get("notes"):
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in meta["notes"]))
    parts.append("## Ratios\n\nMedian of the repeats, with the extreme range in brackets.\n\n" + ratios_markdown(rows))
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
benchmarks' numbers and the limits: [benchmarks/targets.md](benchmarks/targets.md).

Read the **ratios**, not the absolute numbers: the load generator (all clients, one Python process of
their own, not the Ray driver) shares the cores with the servers, and other work ran on the machine at the
same time, so absolute rates say as much about the machine as about the router. The raw-client rows measure
the server (pre-encoded v3 frames, bare WebSocket clients); the hypha-rpc rows are what a user of the released
client sees, client cost included.
"""


def performance_markdown(meta: dict[str, Any], rows: list[Row], errors: list[dict[str, Any]], plots: list[Path]) -> str:
    body = run_markdown(meta, rows, errors)
    figures = "\n\n".join(f"![{p.stem}](benchmarks/plots/{p.name})" for p in plots)
    head, sep, rest = body.partition("## All results")
    if figures:
        head += "## Plots\n\n" + figures + "\n\n"
    return PERFORMANCE_INTRO.format(suite=meta.get("suite"), run_id=meta.get("run_id")) + "\n" + head + sep + rest


def write_reports(path: Path, performance_md: Path | None = None, plots: bool = True) -> list[Path]:
    """Write <run>.md and (matplotlib permitting) plots next to the results; with ``performance_md``,
    also PERFORMANCE.md and its plots in benchmarks/plots/."""
    meta, results, errors = load(path)
    rows = aggregate(results)
    base = path.with_suffix("")
    written = []
    md = base.with_suffix(".md")
    md.write_text(f"# Benchmark run {meta.get('run_id')}\n\n" + run_markdown(meta, rows, errors))
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
        performance_md.write_text(performance_markdown(meta, rows, errors, published))
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
