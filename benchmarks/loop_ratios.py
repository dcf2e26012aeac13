"""The router's event loop, uvloop against asyncio, from ``bench_claims`` results with both.

    python -m benchmarks.bench_claims --loops uvloop asyncio \
        --contenders rhizomorph-loop-uvloop rhizomorph-loop-asyncio --no-hypha [--client-loop uvloop]
    python -m benchmarks.loop_ratios RESULTS.jsonl [RESULTS.jsonl ...]

Per cell (scenario, mode, client) and pooled over all of them: the median (min–max) of the
paired ratios uvloop / asyncio — runs of the same repeat, which interleave, so each pair saw the
same machine — of MiB/s and of the CPU per call of the router (every process of its Ray
runtime but the other routers' actors), the caller and the provider. Several
files (e.g. clients on asyncio, then on uvloop) are pooled and also shown one by one.

    python -m benchmarks.bench_claims --workers 1 --contenders rhizomorph rhizomorph-1w --no-hypha
    python -m benchmarks.loop_ratios --compare rhizomorph-1w rhizomorph RESULTS.jsonl

Any two contenders of one run the same way (``--compare FIRST SECOND``: FIRST / SECOND).

    python -m benchmarks.loop_ratios --client-runs A1.jsonl B1.jsonl A2.jsonl B2.jsonl ...

The clients' loop instead (``bench_claims --client-loop``, which one run can only have one of):
runs alternating between the loops, the n-th run on uvloop against the n-th on asyncio, per
cell the ratio of their medians (uvloop / asyncio), per cell and pooled.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from benchmarks.report import ASYNCIO, UVLOOP, ClaimCell, Stat, claim_cells, load_claims, mib_per_s, paired

#: The asyncio side of runs recorded while Config.loop defaulted to asyncio (before `--loops asyncio`).
OLD_DEFAULT = "rhizomorph"


def _cpu_per_call(key: str) -> Any:
    return lambda r: r[key] / max(r["delivered"], 1)


FIGURES = (
    ("MiB/s", mib_per_s),
    ("router CPU/call", _cpu_per_call("server_cpu_s")),
    ("caller CPU/call", _cpu_per_call("client_cpu_s")),
    ("provider CPU/call", _cpu_per_call("provider_cpu_s")),
)


def _text(stat: Stat) -> str:
    return f"{stat.median:.2f} ({stat.low:.2f}–{stat.high:.2f})"


def loop_table(
    cells: dict[tuple[str, str, str, str], ClaimCell], first: str = UVLOOP, second: str = ASYNCIO, label: str = ""
) -> str:
    """``first`` / ``second`` (uvloop / asyncio unless told) per (scenario, mode, client), and all
    of them pooled."""
    label = label or ("uvloop / asyncio" if (first, second) == (UVLOOP, ASYNCIO) else f"{first} / {second}")
    keys = sorted({(s, m, client) for (s, m, name, client) in cells if name == first})
    lines = [
        "| scenario | mode | client | " + " | ".join(f"{name} {label}" for name, _ in FIGURES) + " |",
        "|---" * (3 + len(FIGURES)) + "|",
    ]
    pooled: dict[str, list[float]] = {name: [] for name, _ in FIGURES}
    for s, m, client in keys:
        a, b = cells.get((s, m, first, client)), cells.get((s, m, second, client))
        texts = []
        for name, value in FIGURES:
            ratios = paired(a, b, value)
            pooled[name] += ratios
            texts.append(_text(Stat.of(ratios)))
        lines.append(f"| {s} | {m} | {client} | " + " | ".join(texts) + " |")
    lines.append("| **all** | | | " + " | ".join(f"**{_text(Stat.of(pooled[n]))}**" for n, _ in FIGURES) + " |")
    return "\n".join(lines)


def client_table(loaded: list[tuple[Path, dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]]) -> str:
    """Clients on uvloop / on asyncio: the n-th run of each, ratios of the cells' medians."""
    runs: dict[str, list[dict[tuple[str, str, str, str], ClaimCell]]] = {"asyncio": [], "uvloop": []}
    for _, meta, records, _ in loaded:
        runs[meta.get("client_loop", "asyncio")].append(claim_cells(records))
    lines = [
        "| scenario | mode | contender | client | " + " | ".join(f"{n} uvloop / asyncio" for n, _ in FIGURES) + " |",
        "|---" * (4 + len(FIGURES)) + "|",
    ]
    pooled: dict[str, list[float]] = {name: [] for name, _ in FIGURES}
    pairs = list(zip(runs["asyncio"], runs["uvloop"]))
    for key in sorted({k for a, b in pairs for k in a.keys() & b.keys()}):
        texts = []
        for name, value in FIGURES:
            medians = [(a[key].stat(value).median, b[key].stat(value).median) for a, b in pairs]
            ratios = [on / off for off, on in medians if off]  # psutil reads CPU in 10 ms steps: 0 is possible
            pooled[name] += ratios
            texts.append(_text(Stat.of(ratios)))
        lines.append("| " + " | ".join(key) + " | " + " | ".join(texts) + " |")
    lines.append("| **all** | | | | " + " | ".join(f"**{_text(Stat.of(pooled[n]))}**" for n, _ in FIGURES) + " |")
    return "\n".join(lines)


def _load(
    path: Path, rename_old_default: bool = True
) -> tuple[Path, dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    meta, records, extra = load_claims(path)
    if rename_old_default and not any(r["contender"] == ASYNCIO for r in records):
        records = [{**r, "contender": ASYNCIO} if r["contender"] == OLD_DEFAULT else r for r in records]
    return path, meta, records, extra


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--client-runs", action="store_true", help="compare the clients' loops across runs")
    parser.add_argument(
        "--compare", nargs=2, metavar=("FIRST", "SECOND"), help="two other contenders (e.g. rhizomorph-1w rhizomorph)"
    )
    args = parser.parse_args(argv)
    loaded = [_load(path, rename_old_default=not args.compare) for path in args.results]
    if args.client_runs:
        for path, meta, _, extra in loaded:
            end = next((r["load_average"] for r in extra if r.get("kind") == "claims-end"), None)
            print(f"- {path.name}: clients on {meta.get('client_loop', 'asyncio')}, load average at the end {end}")
        print("\n" + client_table(loaded))
        return 0
    for path, meta, records, extra in loaded:
        end = next((r["load_average"] for r in extra if r.get("kind") == "claims-end"), None)
        print(f"## {path.name}: clients on {meta.get('client_loop', 'asyncio')}, load average at the end {end}\n")
        print(loop_table(claim_cells(records), *(args.compare or ())) + "\n")
    if len(loaded) > 1:
        # Repeats renumbered per file, so that pairs never mix runs of two files.
        records = [{**r, "repeat": (i, r["repeat"])} for i, (_, _, rs, _) in enumerate(loaded) for r in rs]
        print("## all files pooled\n")
        print(loop_table(claim_cells(records), *(args.compare or ())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
