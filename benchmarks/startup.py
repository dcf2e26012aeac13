"""How long ``rhizomorph serve`` takes from process start to serving (issue 13 item 3: < 5 s).

Starts the real command line (``python -m rhizomorph serve --port P --workers N``, embedded Ray)
``--runs`` times on a free port of 127.0.0.1 and reports, per run: seconds until the port accepts
a TCP connection (``listening_s``: since the launcher binds the port before Ray starts, the
kernel queues the connection; no WebSocket is served yet), seconds until the CLI prints its
``rhizomorph: serving`` line (``serving_s``: all workers up), the CPU seconds its processes had
used by then, and seconds from SIGTERM to the process having exited. Unless ``--no-client``, a
released hypha-rpc client also calls ``connect_to_server`` right after the process starts, in a
thread of this process, and again every ``--client-retry`` seconds while the connection is
refused or times out (hypha-rpc itself retries only a connection it had): ``client_s`` is when
it was connected, with how many attempts were refused and how many timed out (websockets'
10 s opening handshake). The machine's load average is printed with them: on a shared machine
it decides much of the wall time (not of the CPU seconds).

With ``--baseline REV`` the tree of commit ``REV`` (exported with ``git archive`` to a temporary
directory; same interpreter) is started too, the two interleaved run by run, and the medians are
printed side by side with the ratio after / before.

    python -m benchmarks.startup [--runs 3] [--workers 1] [--baseline REV] [--env NAME=VALUE ...]
                                 [--no-client] [--client-retry 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from benchmarks.router_processes import role, tree, tree_cpu_seconds

READY_LINE = "rhizomorph: serving"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class EarlyClient:
    """A hypha-rpc ``connect_to_server`` to ``port`` from ``started`` on, in a thread of its own,
    tried again every ``retry`` seconds while refused or timed out: ``connected_s`` is when it
    got its connection info (seconds after ``started``)."""

    def __init__(self, port: int, started: float, retry: float) -> None:
        self.port, self.started, self.retry = port, started, retry
        self.connected_s: float | None = None
        self.refused = 0
        self.timed_out = 0
        self.error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._connect()), daemon=True)
        self._thread.start()

    async def _connect(self) -> None:
        from hypha_rpc import connect_to_server

        for name in ("websocket-client", "RPC"):  # a refusal is counted, not logged
            logging.getLogger(name).setLevel(logging.CRITICAL)
        while not self._stop.is_set():
            try:
                server = await connect_to_server({"server_url": f"ws://127.0.0.1:{self.port}"})
            except (ConnectionRefusedError, ConnectionResetError):
                self.refused += 1
            except TimeoutError:
                self.timed_out += 1
            except Exception as exc:  # e.g. a handshake cut by a start that failed
                self.error = f"{type(exc).__name__}: {exc}"
            else:
                self.connected_s = time.monotonic() - self.started
                await server.disconnect()
                return
            await asyncio.sleep(self.retry)

    def wait(self, timeout: float) -> None:
        self._thread.join(timeout)
        self._stop.set()


class Serve:
    """``python -m rhizomorph serve`` of the tree ``tree`` on a free port, as a context manager:
    entering starts it, leaving sends SIGTERM and waits for it to exit (``stop_s``)."""

    def __init__(
        self, tree: Path, workers: int, env: dict[str, str] | None = None, client_retry: float | None = None
    ) -> None:
        self.tree, self.workers, self.port = tree, workers, free_port()
        self.env = env or {}
        #: With ``client_retry``: the hypha-rpc client started right after the process.
        self.client_retry = client_retry
        self.client: EarlyClient | None = None
        self.process: subprocess.Popen[bytes]
        self.started = 0.0
        self.listening_s: float | None = None
        self.serving_s: float | None = None
        #: CPU seconds (user + system) its processes had used when it served: the work of a
        #: start, which the machine's load does not change as it changes the wall time.
        self.cpu_s: float | None = None
        #: With ``wait_serving(phases=True)``: seconds until each process role was first seen.
        self.first_seen: dict[str, float] = {}
        self.stop_s: float | None = None
        self._log: IO[bytes]

    def __enter__(self) -> Serve:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(self.tree), env.get("PYTHONPATH", "")) if p)
        command = [sys.executable, "-m", "rhizomorph", "serve", "--port", str(self.port)]
        command += ["--workers", str(self.workers)]
        self._log = tempfile.TemporaryFile()
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command, cwd=self.tree, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if self.client_retry is not None:
            self.client = EarlyClient(self.port, self.started, self.client_retry)
        return self

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def wait_serving(self, timeout: float, phases: bool = False) -> None:
        """Until the CLI says it serves; notes when the port opened (polled every 20 ms) and,
        with ``phases``, when each process role first appeared (every 0.1 s: reading every
        process's command line costs the start some CPU)."""
        polls = 0
        while self.serving_s is None:
            now = time.monotonic()
            if phases and polls % 5 == 0:
                for process in tree(self.process.pid):
                    self.first_seen.setdefault(role(process), now - self.started)
            polls += 1
            if self.process.poll() is not None:
                raise RuntimeError(f"rhizomorph exited with {self.process.returncode}: {self.output()[-2000:]}")
            if now - self.started > timeout:
                raise RuntimeError(f"not serving within {timeout:.0f} s")
            if self.listening_s is None and port_open(self.port):
                self.listening_s = now - self.started
            if self.listening_s is not None and READY_LINE in self.output():
                self.serving_s = time.monotonic() - self.started
                self.cpu_s = tree_cpu_seconds(self.process.pid)
            time.sleep(0.02)

    def __exit__(self, *exc: Any) -> None:
        stop_started = time.monotonic()
        stop_serve(self.process)
        self.stop_s = time.monotonic() - stop_started
        self._log.close()


def stop_serve(process: subprocess.Popen, timeout: float = 60) -> None:
    """SIGTERM, as Ctrl-C would; after ``timeout`` s, SIGKILL to its whole process group."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def exported(rev: str | None) -> Iterator[Path | None]:
    """The tree of commit ``rev`` in a temporary directory (``git archive``: no worktree), or
    ``None`` without a ``rev``."""
    if not rev:
        yield None
        return
    directory = Path(tempfile.mkdtemp(prefix="rhizomorph-baseline-"))
    try:
        archive = subprocess.run(["git", "archive", rev], cwd=REPO, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(directory)], input=archive, check=True)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def trees(baseline: Path | None) -> dict[str, Path]:
    return {"before": baseline, "after": REPO} if baseline is not None else {"after": REPO}


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options startup.py and idle.py share."""
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--baseline", help="a commit to run side by side (the 'before')")
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="an environment variable for the runs of this tree (not the baseline's), e.g. to "
        "try one of rhizomorph.launcher.EMBEDDED_RAY_ENV back at Ray's default; repeatable",
    )


def env_of(label: str, args: argparse.Namespace) -> dict[str, str]:
    return dict(item.split("=", 1) for item in args.env) if label == "after" else {}


def one_start(
    tree: Path,
    workers: int,
    timeout: float,
    env: dict[str, str] | None = None,
    phases: bool = False,
    client_retry: float | None = None,
) -> dict[str, Any]:
    """Start, wait until serving (and with ``client_retry`` until the early client is
    connected), stop: the durations in seconds, the CPU seconds, and with ``phases`` when each
    process role first appeared."""
    with Serve(tree, workers, env, client_retry) as serve:
        serve.wait_serving(timeout, phases)
        if serve.client is not None:
            serve.client.wait(max(1.0, timeout - (time.monotonic() - serve.started)))
    assert serve.serving_s is not None and serve.stop_s is not None and serve.cpu_s is not None
    client = serve.client
    if client is not None and client.connected_s is None:
        raise RuntimeError(f"the early client was not connected: {client.error or 'timed out'}")
    return {
        "listening_s": serve.listening_s or 0.0,
        "serving_s": serve.serving_s,
        "cpu_s": serve.cpu_s,
        "stop_s": serve.stop_s,
        "first_seen": serve.first_seen,
        **(
            {"client_s": client.connected_s, "refused": client.refused, "timed_out": client.timed_out}
            if client is not None
            else {}
        ),
    }


#: Issue 13 item 3: serving within this many seconds of the start.
TARGET_S = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.splitlines()[0])
    add_options(parser)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument(
        "--phases", action="store_true", help="print when each process first appeared (polled every 0.1 s)"
    )
    parser.add_argument("--no-client", action="store_true", help="no hypha-rpc client connecting during the start")
    parser.add_argument(
        "--client-retry", type=float, default=0.1, help="seconds between the early client's attempts (default 0.1)"
    )
    args = parser.parse_args(argv)
    client_retry = None if args.no_client else args.client_retry
    if client_retry is not None:
        import hypha_rpc  # noqa: F401  (imported once here, not in the first run's client thread)
    print(f"rhizomorph serve --workers {args.workers}: {args.runs} runs, {os.cpu_count()} CPUs")
    print(
        "run | tree | load avg (1 min) | listening (TCP accepted) s | serving s | CPU s to serving"
        " | stop after SIGTERM s" + (" | client connected s | refused | timed out" if client_retry is not None else "")
    )
    with exported(args.baseline) as baseline:
        results: dict[str, list[dict[str, Any]]] = {label: [] for label in trees(baseline)}
        failed: dict[str, int] = dict.fromkeys(results, 0)
        for run in range(1, args.runs + 1):
            for label, tree in trees(baseline).items():
                load = os.getloadavg()[0]
                try:
                    result = one_start(tree, args.workers, args.timeout, env_of(label, args), args.phases, client_retry)
                except RuntimeError as exc:  # e.g. Ray's own start-up timeout on a machine this busy
                    failed[label] += 1
                    print(f"{run} | {label} | {load:.1f} | failed: {str(exc).strip().splitlines()[-1][:200]}")
                    continue
                results[label].append(result)
                print(
                    f"{run} | {label} | {load:.1f} | {result['listening_s']:.2f} | {result['serving_s']:.2f}"
                    f" | {result['cpu_s']:.2f} | {result['stop_s']:.2f}"
                    + (
                        f" | {result['client_s']:.2f} | {result['refused']} | {result['timed_out']}"
                        if "client_s" in result
                        else ""
                    ),
                    flush=True,
                )
                if args.phases:
                    seen = sorted(result["first_seen"].items(), key=lambda item: item[1])
                    print("    first seen: " + ", ".join(f"{name} {at:.2f}" for name, at in seen))
    for label, runs in results.items():
        if not runs:
            print(f"{label}: every run failed")
            continue
        serving = sorted(r["serving_s"] for r in runs)
        within = sum(1 for s in serving if s < TARGET_S)
        print(
            f"{label}: serving min {serving[0]:.2f} s, median {statistics.median(serving):.2f} s, max "
            f"{serving[-1]:.2f} s; within {TARGET_S:g} s in {within} of {len(serving) + failed[label]} runs"
            + (f" ({failed[label]} failed)" if failed[label] else "")
        )
    if len(results) == 2 and all(results.values()):
        print("median | before | after | after / before")
        keys = ("listening_s", "serving_s", "cpu_s", "stop_s") + (("client_s",) if client_retry is not None else ())
        for key in keys:
            before, after = (statistics.median(r[key] for r in results[label]) for label in ("before", "after"))
            print(f"{key} | {before:.2f} | {after:.2f} | {after / before:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
