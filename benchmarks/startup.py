"""How long ``rhizomorph serve`` takes from process start to serving (issue 13 item 3: < 5 s).

Starts the real command line (``python -m rhizomorph serve --port P --workers N``, embedded Ray)
``--runs`` times on a free port of 127.0.0.1 and reports, per run: seconds until the port accepts
a TCP connection, seconds until the CLI prints its ``rhizomorph: serving`` line (all workers up),
and seconds from SIGTERM to the process having exited. The machine's load average is printed
with them: on a shared machine it decides much of the result.

    python -m benchmarks.startup [--runs 3] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_LINE = "rhizomorph: serving"
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def one_start(workers: int, timeout: float) -> dict[str, float]:
    """Start, wait until serving, stop; the three durations in seconds."""
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "rhizomorph", "serve", "--port", str(port), "--workers", str(workers)]
    with tempfile.TemporaryFile() as log:
        started = time.monotonic()
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        listening = serving = None
        try:
            while serving is None:
                now = time.monotonic()
                if process.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"rhizomorph exited with {process.returncode}: {log.read().decode()[-2000:]}")
                if now - started > timeout:
                    raise RuntimeError(f"not serving within {timeout:.0f} s")
                if listening is None and port_open(port):
                    listening = now - started
                if listening is not None:
                    log.seek(0)
                    if READY_LINE in log.read().decode(errors="replace"):
                        serving = time.monotonic() - started
                time.sleep(0.02)
        finally:
            stop_started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            stopped = time.monotonic() - stop_started
    return {"listening_s": listening or 0.0, "serving_s": serving, "stop_s": stopped}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.startup", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args(argv)
    print(f"rhizomorph serve --workers {args.workers}: {args.runs} runs, {os.cpu_count()} CPUs")
    print("run | load avg (1 min) | listening s | serving s | stop after SIGTERM s")
    results = []
    for run in range(1, args.runs + 1):
        load = os.getloadavg()[0]
        result = one_start(args.workers, args.timeout)
        results.append(result)
        print(
            f"{run} | {load:.1f} | {result['listening_s']:.2f} | {result['serving_s']:.2f} | {result['stop_s']:.2f}",
            flush=True,
        )
    serving = sorted(r["serving_s"] for r in results)
    print(f"serving: min {serving[0]:.2f} s, median {serving[len(serving) // 2]:.2f} s, max {serving[-1]:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
