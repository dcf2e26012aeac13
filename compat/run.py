"""``make compat``: hypha-rpc's own test suite, from its PyPI sdist, run against rhizomorph.

1. ``pip download --no-binary :all: --no-deps hypha-rpc==VERSION`` into a cache under build/
   (once per version; never committed).
2. Unpack it afresh under ``<out>/src/`` and add our harness to its ``tests/`` (the sdist ships
   none): compat/conftest.py, compat/hypha_tests_init.py as ``__init__.py``, and
   compat/example_service_script.py.
3. Run pytest there (settings: compat/pytest.ini); the conftest starts ``rhizomorph serve`` on
   127.0.0.1:3828 with ``--workers N``. Tests listed in compat/out_of_scope.toml are deselected.
4. Write ``<out>/junit.xml``, ``<out>/pytest.log`` and ``<out>/summary.md`` (counts, every
   non-passing test with a one-line reason, the out-of-scope list, server start times).

Exit status: pytest's when it could not run the suite (interrupted, internal or usage error, no
tests), 1 when fewer than ``--min-passed`` tests passed or, with ``--fail-on-new``, when a test
failed that compat/known_failures.toml does not list (CI: ``.ci/run``), else 0: known failures
are the report's content, not an error of the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
import tomllib
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
HARNESS = Path(__file__).resolve().parent
#: hypha-rpc version whose tests are run; the lower bound of hypha-rpc in pyproject.toml.
DEFAULT_VERSION = "0.21.47"
HARNESS_FILES = {
    "conftest.py": "conftest.py",
    "hypha_tests_init.py": "__init__.py",
    "example_service_script.py": "example_service_script.py",
}


def fetch_sdist(version: str, cache: Path) -> Path:
    """The sdist tarball of hypha-rpc ``version``, downloaded into ``cache`` unless already there."""
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"hypha_rpc-{version}.tar.gz")) + sorted(cache.glob(f"hypha-rpc-{version}.tar.gz"))
    if found:
        return found[0]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:", "--no-deps"]
    subprocess.run([*command, "--dest", str(cache), f"hypha-rpc=={version}"], check=True)
    found = sorted(cache.glob(f"hypha*rpc-{version}.tar.gz"))
    if not found:
        raise SystemExit(f"pip download left no sdist of hypha-rpc {version} in {cache}")
    return found[0]


def unpack(tarball: Path, dest: Path) -> Path:
    """A fresh copy of the sdist under ``dest``; returns its root (the folder holding tests/)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    with tarfile.open(tarball) as archive:
        archive.extractall(dest, filter="data")
    roots = [p for p in dest.iterdir() if (p / "tests").is_dir()]
    if len(roots) != 1:
        raise SystemExit(f"{tarball.name}: expected one folder with tests/, found {[p.name for p in roots]}")
    return roots[0]


def install_harness(root: Path) -> None:
    tests = root / "tests"
    for source, target in HARNESS_FILES.items():
        if (tests / target).exists():
            raise SystemExit(f"the sdist ships tests/{target} itself now: compat/ needs a look before overriding it")
        shutil.copyfile(HARNESS / source, tests / target)


def run_pytest(root: Path, out: Path, args: argparse.Namespace) -> tuple[int, float]:
    """Run the suite; returns pytest's exit status and the wall time."""
    env = dict(os.environ)
    env.update(
        COMPAT_REPO=str(REPO),
        COMPAT_WORKERS=str(args.workers),
        COMPAT_OUT=str(out),
        COMPAT_OUT_OF_SCOPE=str(HARNESS / "out_of_scope.toml"),
        COMPAT_SERVER_ARGS=json.dumps(args.server_arg),
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.pop("CI", None)  # one test skips itself under CI=true; the suite here is the same everywhere
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(HARNESS / "pytest.ini"),
        "--rootdir",
        str(root),
        f"--junitxml={out / 'junit.xml'}",
        f"--timeout={args.timeout}",
        *([] if any(a == "tests" or a.startswith("tests/") for a in args.pytest_args) else ["tests"]),
        *args.pytest_args,
    ]
    started = time.monotonic()
    with open(out / "pytest.log", "wb") as log:
        # Our own process group: pytest and everything it started can be ended together.
        process = subprocess.Popen(
            command, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        copier = threading.Thread(target=_tee, args=(process.stdout, log), daemon=True)
        copier.start()
        try:
            process.wait(timeout=args.total_timeout)
        except subprocess.TimeoutExpired:
            # SIGINT: pytest stops, tears the server down and still writes junit.xml.
            print(f"\ncompat: over {args.total_timeout:.0f} s, interrupting pytest", flush=True)
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        copier.join(timeout=10)
    return process.returncode, time.monotonic() - started


def _tee(stream: IO[bytes], log: IO[bytes]) -> None:
    """pytest's output to the console and to pytest.log as it comes."""
    for chunk in iter(lambda: stream.read1(65536), b""):
        log.write(chunk)
        log.flush()
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()


# -- summary -------------------------------------------------------------------------------------
@dataclass
class Outcome:
    test_id: str
    outcome: str  # passed, failed, error, skipped
    seconds: float
    reason: str


def read_junit(path: Path) -> list[Outcome]:
    """One outcome per test of a pytest JUnit XML file (``error`` for a failed setup/teardown)."""
    outcomes: dict[str, Outcome] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test_id = _test_id(case)
        outcome, reason = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                reason = _one_line(child.get("message") or child.text or "")
                break
        seconds = float(case.get("time") or 0)
        previous = outcomes.get(test_id)
        # pytest writes a second <testcase> for an error in teardown after a pass or a failure.
        if previous is None or previous.outcome == "passed":
            outcomes[test_id] = Outcome(test_id, outcome, seconds, reason)
    return list(outcomes.values())


def _test_id(case: ET.Element) -> str:
    """``tests/test_x.py::test_y`` (or ``::Class::test_y``) from xunit1's file and classname."""
    file, classname, name = case.get("file"), case.get("classname") or "", case.get("name") or ""
    if file:
        module_dotted = file[:-3].replace("/", ".") if file.endswith(".py") else file
        rest = classname[len(module_dotted) :].lstrip(".") if classname.startswith(module_dotted) else ""
        return "::".join(p for p in (file, rest.replace(".", "::"), name) if p)
    return f"{classname}::{name}"


def _one_line(text: str, width: int = 220) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= width else line[: width - 3] + "..."


@dataclass
class KnownFailure:
    group: str
    category: str
    cause: str
    needs: str


def read_known_failures(path: Path) -> dict[str, KnownFailure]:
    """Test id -> its known cause, from compat/known_failures.toml."""
    if not path.exists():
        return {}
    with open(path, "rb") as f:
        groups = tomllib.load(f).get("known", {})
    return {
        test_id: KnownFailure(name, group["category"], group["cause"], group.get("needs", ""))
        for name, group in groups.items()
        for test_id in group["tests"]
    }


def new_failures(outcomes: list[Outcome], known: dict[str, KnownFailure]) -> list[Outcome]:
    """Failed tests that compat/known_failures.toml does not list."""
    return [o for o in outcomes if o.outcome in ("failed", "error") and o.test_id not in known]


def write_summary(out: Path, args: argparse.Namespace, status: int, wall: float, root: Path) -> Counter[str]:
    junit = out / "junit.xml"
    outcomes = read_junit(junit) if junit.exists() else []
    counts = Counter(o.outcome for o in outcomes)
    collection = _read_json(out / "collection.json", {})
    deselected: dict[str, str] = collection.get("deselected", {})
    stale: list[str] = collection.get("stale", []) if not args.pytest_args else []
    known = read_known_failures(HARNESS / "known_failures.toml")
    collected = set(collection.get("collected", []))
    stale_known = sorted(set(known) - collected) if collected and not args.pytest_args else []
    starts: list[dict[str, Any]] = _read_json(out / "server_starts.json", [])
    lines = [
        f"# hypha-rpc {args.version} test suite against rhizomorph ({args.workers} gateway worker"
        + ("s" if args.workers != 1 else "")
        + ")",
        "",
        f"- rhizomorph: `{_git_describe()}`; tests from the PyPI sdist of hypha-rpc {args.version}",
        f"- run: {time.strftime('%Y-%m-%d %H:%M:%S')}, {wall:.0f} s wall, pytest exit status {status}"
        + (f", extra pytest arguments `{' '.join(args.pytest_args)}`" if args.pytest_args else ""),
        f"- server: `rhizomorph serve --host 127.0.0.1 --port 3828 --workers {args.workers}"
        + "".join(f" {a}" for a in args.server_arg)
        + "`",
        f"- per-test timeout {args.timeout} s (unless a test sets its own); JUnit XML: `{junit.name}`",
    ]
    if starts:
        served = [s["seconds"] for s in starts if s.get("served")]
        failed = [s for s in starts if not s.get("served")]
        lines.append(
            f"- rhizomorph server starts (the first, then one per restart): {len(starts)}"
            + (
                f"; process start to serving {min(served):.1f}-{max(served):.1f} s, "
                f"mean {sum(served) / len(served):.1f} s"
                if served
                else ""
            )
            + (
                "; **did not serve**: "
                + ", ".join(f"{s['log']} ({s.get('failure', '?')}, {s.get('seconds', 0):.0f} s)" for s in failed)
                if failed
                else ""
            )
        )
    lines += [
        "",
        "| passed | failed | errors | skipped | out of scope | total collected |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {counts['passed']} | {counts['failed']} | {counts['error']} | {counts['skipped']} | {len(deselected)} "
        f"| {len(collection.get('collected', [])) or len(outcomes) + len(deselected)} |",
        "",
    ]
    not_passing = [o for o in outcomes if o.outcome in ("failed", "error")]
    if not_passing:
        by_group = Counter(known[o.test_id].group if o.test_id in known else "NEW" for o in not_passing)
        lines += ["## Not passing, by known cause (compat/known_failures.toml)", ""]
        lines += ["| cause | category | tests | what the server would need |", "|---|---|---:|---|"]
        for group, count in sorted(by_group.items(), key=lambda g: (g[0] == "NEW", -g[1], g[0])):
            entry = next((k for k in known.values() if k.group == group), None)
            lines.append(
                f"| {group} | {entry.category if entry else '**not known**'} | {count} | "
                f"{_cell(entry.needs) if entry else 'read the traceback in pytest.log'} |"
            )
        lines += ["", "## Not passing", "", "| test | outcome | s | known cause | reason |", "|---|---|---:|---|---|"]
        lines += [
            f"| `{o.test_id}` | {o.outcome} | {o.seconds:.1f} | "
            f"{known[o.test_id].group if o.test_id in known else '**NEW**'} | {_cell(o.reason)} |"
            for o in sorted(not_passing, key=lambda o: o.test_id)
        ]
        lines.append("")
    passing_known = sorted(o.test_id for o in outcomes if o.outcome == "passed" and o.test_id in known)
    if passing_known:
        lines += ["## Known failures that passed this run", ""]
        lines += [f"- `{t}` ({known[t].group}, {known[t].category})" for t in passing_known]
        lines.append("")
    skipped = [o for o in outcomes if o.outcome == "skipped"]
    if skipped:
        lines += ["## Skipped by the tests themselves", "", "| test | reason |", "|---|---|"]
        lines += [f"| `{o.test_id}` | {_cell(o.reason)} |" for o in sorted(skipped, key=lambda o: o.test_id)]
        lines.append("")
    if deselected:
        lines += ["## Out of scope (compat/out_of_scope.toml, deselected)", "", "| test | reason |", "|---|---|"]
        lines += [f"| `{t}` | {_cell(r)} |" for t, r in sorted(deselected.items())]
        lines.append("")
    if stale:
        lines += ["## Stale entries of compat/out_of_scope.toml (no such test)", ""]
        lines += [f"- `{t}`" for t in stale]
        lines.append("")
    if stale_known:
        lines += ["## Stale entries of compat/known_failures.toml (no such test)", ""]
        lines += [f"- `{t}`" for t in stale_known]
        lines.append("")
    slowest = sorted(outcomes, key=lambda o: -o.seconds)[:10]
    if slowest:
        lines += ["## Slowest tests", "", "| test | outcome | s |", "|---|---|---:|"]
        lines += [f"| `{o.test_id}` | {o.outcome} | {o.seconds:.1f} |" for o in slowest]
        lines.append("")
    (out / "summary.md").write_text("\n".join(lines))
    return counts


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'") or "(no message)"


def _read_json(path: Path, default: object) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _git_describe() -> str:
    try:
        rev = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        return rev
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compat.run", description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=DEFAULT_VERSION, help=f"hypha-rpc version (default {DEFAULT_VERSION})")
    parser.add_argument("--workers", type=int, default=1, help="rhizomorph gateway workers (default 1)")
    parser.add_argument("--out", type=Path, help="output folder (default build/compat/workers-N)")
    parser.add_argument("--cache", type=Path, default=REPO / "build" / "compat" / "cache", help="sdist cache")
    parser.add_argument("--timeout", type=int, default=90, help="per-test timeout in seconds (default 90)")
    parser.add_argument("--total-timeout", type=float, default=1500, help="whole-run bound in seconds (default 1500)")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="one more argument for `rhizomorph serve` (repeatable), e.g. --server-arg=--no-batching",
    )
    parser.add_argument("--min-passed", type=int, default=0, help="exit 1 if fewer tests passed")
    parser.add_argument(
        "--fail-on-new", action="store_true", help="exit 1 if a test fails that known_failures.toml does not list"
    )
    parser.add_argument("pytest_args", nargs="*", help="more pytest arguments (after --), e.g. -k reconnection")
    args = parser.parse_args(argv)
    out: Path = (args.out or REPO / "build" / "compat" / f"workers-{args.workers}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("junit.xml", "summary.md", "collection.json", "server_starts.json"):
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / "server-logs", ignore_errors=True)

    tarball = fetch_sdist(args.version, args.cache.resolve())
    root = unpack(tarball, out / "src")
    install_harness(root)
    print(f"compat: hypha-rpc {args.version} tests from {tarball.name}, rhizomorph with {args.workers} worker(s)")
    status, wall = run_pytest(root, out, args)
    counts = write_summary(out, args, status, wall, root)
    print(f"compat: {out / 'summary.md'} ({wall:.0f} s)")
    print(
        f"compat: {counts['passed']} passed, {counts['failed'] + counts['error']} failed, {counts['skipped']} skipped"
    )
    if status not in (0, 1):  # 1: some tests failed, which is what the summary is for
        return status
    if counts["passed"] < args.min_passed:
        print(f"compat: {counts['passed']} passed, fewer than --min-passed {args.min_passed}")
        return 1
    if args.fail_on_new:
        junit = out / "junit.xml"
        if not junit.exists():
            print("compat: no junit.xml: the suite did not run")
            return 1
        unknown = new_failures(read_junit(junit), read_known_failures(HARNESS / "known_failures.toml"))
        for outcome in unknown:
            print(f"compat: NEW failure {outcome.test_id}: {outcome.reason}")
        if unknown:
            print(f"compat: {len(unknown)} failure(s) not listed in compat/known_failures.toml")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
