"""A browser dashboard on API v4 vs v3: the live monitor page under a mixed load, side by side.

    python -m benchmarks.bench_dashboard [--rate 200] [--seconds 20] [--repeats 3] [--workers 1]

The live monitor's producer (examples/live-monitor/producer.py, on rhizomorph's Python v4 client;
``--producer-wire 3``: the released one) runs at ``--rate`` ticks per second, 10x the example's
20 Hz by default: per tick a ~100-byte status, every second tick a 16 KiB series, every 100th
the metadata, each a call the page answers. One headless Debian Chromium tab (selenium,
Debian's chromedriver) opens the page with rhizomorph-client on v4, then with ``?wire=3`` (the
same client on v3, one message per frame), alternating for ``--repeats`` rounds. Over each
``--seconds`` window (after a warm-up) it reports:

- the producer's achieved ticks/s (it falls behind ``--rate`` on a busy machine), the
  messages/s the page handled (its callbacks) and the frames/s it received and sent;
- CPU of the page (Chromium's renderer processes), of the rest of Chromium (browser, network
  service: WebSocket frames cross it), of the router (its gateway workers) and of the producer,
  in % of one core and in CPU ms per 1000 messages the page handled (the rates differ);
- the producer's dropped calls (past ``--max-in-flight`` unanswered calls per page, 64 here,
  8 in the example, it drops, never queues) and the page's send-to-arrival latency of status
  updates (p50, p99).

Needs ``make examples`` (the browser build) and chromium + chromium-driver. Prints a table;
``--json FILE`` also writes every window's numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import psutil
from hypha_rpc import connect_to_server

from benchmarks.machine import machine_info
from rhizomorph import Config, Deployment, ensure_ray

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "examples" / "node_modules" / "rhizomorph-client" / "dist" / "rhizomorph-client.mjs"
PRODUCER = REPO / "examples" / "live-monitor" / "producer.py"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1400,1000"]
CHROMIUM_FLAGS += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]

PAGE_STATE = """
const m = window.liveMonitor;
if (!m || !m.wire) return null;
const lat = m.latencies.slice().sort((a, b) => a - b);
return { messages: m.counts.status + m.counts.series + m.counts.meta, wire: m.wire,
         p50: lat.length ? lat[Math.floor(lat.length / 2)] : null,
         p99: lat.length ? lat[Math.floor(lat.length * 0.99)] : null,
         dropped: m.status ? m.status.dropped : 0, subscribers: m.status ? m.status.subscribers : 0,
         seq: m.status ? m.status.seq : 0 };
"""


def cpu_seconds(processes: list[psutil.Process]) -> dict[int, float]:
    """CPU seconds (user + system) per pid; processes gone meanwhile are left out."""
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return seconds


def used(before: dict[int, float], after: dict[int, float]) -> float:
    """CPU seconds between two readings; a process started in between counts from zero."""
    return sum(t - before.get(pid, 0.0) for pid, t in after.items())


class Browser:
    def __init__(self) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
        if not chromium or not chromedriver:
            raise SystemExit("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
        options = webdriver.ChromeOptions()
        options.binary_location = chromium
        self.profile = tempfile.mkdtemp(prefix="rhizomorph-bench-chromium-")
        for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"]:
            options.add_argument(flag)
        self.driver = webdriver.Chrome(service=Service(chromedriver), options=options)
        self.driver.set_page_load_timeout(30)

    def processes(self) -> tuple[list[psutil.Process], list[psutil.Process]]:
        """(renderers, the other Chromium processes), found from chromedriver's children."""
        driver = psutil.Process(self.driver.service.process.pid)
        renderers, others = [], []
        for process in driver.children(recursive=True):
            try:
                (renderers if "--type=renderer" in " ".join(process.cmdline()) else others).append(process)
            except psutil.NoSuchProcess:
                pass
        return renderers, others

    def run(self, script: str) -> Any:
        return self.driver.execute_script(script)

    def close(self) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)


async def wait_for(check, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.2)


async def window(
    browser: Browser, base: str, wire: int, service_id: str, probes: dict[str, list[psutil.Process]], args: Any
) -> dict[str, Any]:
    """Open the page on ``wire``, let it warm up, measure ``args.seconds``; leave it again."""
    await asyncio.to_thread(browser.driver.get, f"{base}/live-monitor/?wire={wire}&service={service_id}")

    async def subscribed() -> Any:
        state = await asyncio.to_thread(browser.run, PAGE_STATE)
        return state if state and state["messages"] > 20 and state["wire"]["protocol"] == wire else None

    await wait_for(subscribed, 30, f"the v{wire} page never got going")
    await asyncio.sleep(args.warmup)

    def reading() -> dict[str, Any]:
        renderers, others = browser.processes()
        return {
            "time": time.monotonic(),
            "page": browser.run(PAGE_STATE),
            "cpu": {
                "renderer": cpu_seconds(renderers),
                "chromium_other": cpu_seconds(others),
                **{name: cpu_seconds(processes) for name, processes in probes.items()},
            },
        }

    first = await asyncio.to_thread(reading)
    await asyncio.sleep(args.seconds)
    last = await asyncio.to_thread(reading)
    elapsed = last["time"] - first["time"]
    a, b = first["page"], last["page"]
    result = {
        "wire": wire,
        "seconds": round(elapsed, 2),
        "messages_per_s": (b["messages"] - a["messages"]) / elapsed,
        "ticks_per_s": (b["seq"] - a["seq"]) / elapsed,  # what the producer managed, of --rate
        "frames_in_per_s": (b["wire"]["framesIn"] - a["wire"]["framesIn"]) / elapsed,
        "messages_in_per_s": (b["wire"]["messagesIn"] - a["wire"]["messagesIn"]) / elapsed,
        "frames_out_per_s": (b["wire"]["framesOut"] - a["wire"]["framesOut"]) / elapsed,
        "messages_out_per_s": (b["wire"]["messagesOut"] - a["wire"]["messagesOut"]) / elapsed,
        "dropped": b["dropped"] - a["dropped"],
        "latency_p50_ms": b["p50"],
        "latency_p99_ms": b["p99"],
        "subscribers": b["subscribers"],
    }
    messages = b["messages"] - a["messages"]
    for name in last["cpu"]:
        seconds = used(first["cpu"][name], last["cpu"][name])
        result[f"cpu_{name}_pct"] = 100 * seconds / elapsed
        result[f"cpu_{name}_ms_per_1k"] = 1e6 * seconds / messages if messages else None
    await asyncio.to_thread(browser.driver.get, "about:blank")
    return result


def print_table(results: list[dict[str, Any]]) -> None:
    columns = [
        ("ticks_per_s", "ticks/s", 0),
        ("messages_per_s", "msg/s", 0),
        ("frames_in_per_s", "frames in/s", 0),
        ("frames_out_per_s", "frames out/s", 0),
        ("cpu_renderer_pct", "page CPU %", 1),
        ("cpu_renderer_ms_per_1k", "page ms/1k msg", 0),
        ("cpu_chromium_other_pct", "other chromium %", 1),
        ("cpu_router_pct", "router CPU %", 1),
        ("cpu_router_ms_per_1k", "router ms/1k msg", 0),
        ("cpu_producer_pct", "producer CPU %", 1),
        ("dropped", "dropped", 0),
        ("latency_p50_ms", "p50 ms", 1),
        ("latency_p99_ms", "p99 ms", 1),
    ]
    print("| wire | " + " | ".join(title for _, title, _ in columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for wire in (4, 3):
        runs = [r for r in results if r["wire"] == wire]
        cells = []
        for key, _, digits in columns:
            values = [r[key] for r in runs if r[key] is not None]
            if not values:
                cells.append("–")
                continue
            median = statistics.median(values)
            spread = f" ({min(values):.{digits}f}–{max(values):.{digits}f})" if len(values) > 1 else ""
            cells.append(f"{median:.{digits}f}{spread}")
        print(f"| v{wire} | " + " | ".join(cells) + " |")


async def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="producer ticks per second (the example: 20)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per page")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds after the page got going")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of (v4 page, v3 page)")
    parser.add_argument("--workers", type=int, default=1, help="gateway workers")
    parser.add_argument("--max-in-flight", type=int, default=64, help="the producer's unanswered calls per page")
    parser.add_argument("--producer-wire", type=int, choices=(3, 4), default=4, help="the producer's client")
    parser.add_argument("--json", type=Path, help="also write every window's numbers here")
    args = parser.parse_args(argv)
    if not BUILD.is_file():
        raise SystemExit(f"{BUILD} is missing: run `make examples` (installs and builds the JS client)")

    started = ensure_ray(num_cpus=2)
    deployment = Deployment(Config(port=0, workers=args.workers)).start()
    producer = subprocess.Popen(
        [sys.executable, str(PRODUCER), "--server-url", deployment.url, "--rate", str(args.rate)]
        + ["--max-in-flight", str(args.max_in_flight), "--wire", str(args.producer_wire)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    browser = None
    watcher = await connect_to_server({"server_url": deployment.url})
    try:

        async def registered() -> list[dict[str, Any]]:
            if producer.poll() is not None:
                raise RuntimeError("the producer exited")
            return await watcher.list_services({"workspace": "*", "service_id": "live-monitor"})

        service_id = (await wait_for(registered, 60, "the producer never registered"))[0]["id"]
        probes = {
            "router": [psutil.Process(s["pid"]) for s in await asyncio.to_thread(deployment.stats)],
            "producer": [psutil.Process(producer.pid)],
        }
        browser = await asyncio.to_thread(Browser)
        base = deployment.url.replace("ws://", "http://")
        results = []
        for round_ in range(args.repeats):
            for wire in (4, 3):
                result = await window(browser, base, wire, service_id, probes, args)
                result["round"] = round_
                results.append(result)
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()}))
                await asyncio.sleep(2)  # the producer forgets the page at its first failed call
        print(
            f"\nlive monitor at {args.rate:g} Hz (producer on v{args.producer_wire}), {args.seconds:g} s windows, "
            f"median (min–max) of {args.repeats}:\n"
        )
        print_table(results)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {"machine": machine_info(), "args": vars(args) | {"json": str(args.json)}, "results": results},
                    indent=1,
                )
            )
        return results
    finally:
        if browser is not None:
            await asyncio.to_thread(browser.close)
        await watcher.disconnect()
        producer.terminate()
        try:
            producer.wait(10)
        except subprocess.TimeoutExpired:
            producer.kill()
        deployment.stop()
        if started:
            import ray

            ray.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
