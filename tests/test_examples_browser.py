"""The example pages in a real browser, and the router's static file serving.

Headless Debian Chromium, driven by selenium through Debian's chromedriver, opens the pages the
router serves; the page talks to the router with rhizomorph-client (clients/js: the released
hypha-rpc JavaScript client from npm on API v4; ``?wire=3`` keeps it on v3). Missing pieces are
installed or built (apt as root, npm, tests/js_build.py); a test is skipped only when they cannot be.

``RHIZOMORPH_SAVE_SCREENSHOTS=1`` also writes ``examples/<name>/screenshot.png`` (for the READMEs).
"""

from __future__ import annotations

import asyncio
import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import eventually
from tests.js_build import EXAMPLES, REPO, ensure_browser_build, run

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1000",
]


# -- static files served by a router (without one: tests/unit/test_static_http.py) ----------------


async def test_router_serves_console_and_refuses_traversal(router) -> None:
    host, port = "127.0.0.1", router.config.port

    def fetch(path: str) -> tuple[int, bytes]:
        # http.client sends the path as written: no client-side ".." clean-up hides the test.
        conn = http.client.HTTPConnection(host, port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    status, body = await asyncio.to_thread(fetch, "/")
    assert status == 200 and b"rhizomorph console" in body
    for path in (
        "/../pyproject.toml",
        "/%2e%2e/pyproject.toml",
        "/console/../../README.md",
        "/live-monitor/producer.py",
        "/../.git/config",
    ):
        status, body = await asyncio.to_thread(fetch, path)
        assert status == 404, path
    assert (await asyncio.to_thread(fetch, "/health"))[0] == 200


# -- the fan-out example --------------------------------------------------------------------------


async def test_fanout_example_delivers_everything(router) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        import fanout
    finally:
        sys.path.remove(str(EXAMPLES))
    result = await fanout.main(
        ["--server-url", router.url, "--callers", "6", "--calls", "10", "--subscribers", "6", "--events", "20"]
    )
    assert result["rpc"]["calls"] == result["rpc"]["served"] == 60
    assert result["pubsub"]["delivered"] == result["pubsub"]["expected"] == 120
    assert result["pubsub"]["in_order"]


# -- the browser ----------------------------------------------------------------------------------


def ensure_browser() -> tuple[str, str]:
    """Debian's chromium and chromedriver, installed with apt when missing (never a downloaded build)."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("chromium/chromium-driver are missing and cannot be installed here (needs apt-get as root)")
        ok, output = run(["apt-get", "update", "-q"])
        if ok:
            ok, output = run(["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"])
        if not ok:
            pytest.skip(f"cannot install chromium/chromium-driver with apt-get: {output}")
        found = shutil.which("chromium"), shutil.which("chromedriver")
        if not all(found):
            pytest.skip("apt-get installed chromium but chromium or chromedriver is still not on PATH")
    return found[0], found[1]


@pytest.fixture(scope="module")
def browser():
    chromium, chromedriver = ensure_browser()
    ensure_browser_build()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="rhizomorph-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths given: selenium's driver manager (which downloads) is never consulted.
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
async def producer(router, tmp_path_factory):
    """examples/live-monitor/producer.py as its own process; yields the service id it registered."""
    from hypha_rpc import connect_to_server

    log = tmp_path_factory.mktemp("producer") / "producer.log"
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLES / "live-monitor" / "producer.py"),
                "--server-url",
                router.url,
                "--rate",
                "20",
                # A v4 producer sends each tick's calls in one batch frame, so a v4 page gets them
                # in one frame too (a v3 page: one each), however fast the machine is.
                "--wire",
                "4",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
    watcher = await connect_to_server({"server_url": router.url, "method_timeout": 20})
    try:
        found: list[dict] = []

        async def registered() -> bool:
            assert process.poll() is None, f"producer exited: {log.read_text()}"
            found[:] = await watcher.list_services({"workspace": "*", "service_id": "live-monitor"})
            return bool(found)

        await eventually(registered, timeout=30, interval=0.3)
        yield {"id": found[0]["id"], "service": await watcher.get_service(found[0]["id"]), "log": log}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        await watcher.disconnect()


async def _wait_for(browser, script: str, timeout: float = 30.0) -> Any:
    """Poll a JS expression in the page until it is truthy; fail with the page's state and log."""
    deadline = time.monotonic() + timeout
    while True:
        value = await asyncio.to_thread(browser.execute_script, f"return ({script});")
        if value:
            return value
        if time.monotonic() > deadline:
            status = await asyncio.to_thread(
                browser.execute_script, "const e = document.querySelector('#connection'); return e && e.textContent;"
            )
            logs = await asyncio.to_thread(browser.get_log, "browser")
            raise AssertionError(f"page never satisfied {script!r}; status: {status!r}; log: {logs[-10:]}")
        await asyncio.sleep(0.2)


async def _screenshot(browser, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / f"{name}.png"
    assert await asyncio.to_thread(browser.save_screenshot, str(shot))
    assert shot.stat().st_size > 10_000  # a real rendering, not an empty image
    if os.environ.get("RHIZOMORPH_SAVE_SCREENSHOTS"):
        shutil.copyfile(shot, EXAMPLES / name / "screenshot.png")
    return shot


LIVE_SNAPSHOT = """
const f = (n) => document.querySelector(`[data-field="${n}"]`).textContent;
const rows = [...document.querySelectorAll('#series-table tbody tr')].map((r) => ({
  channel: r.dataset.channel, seq: Number(r.dataset.seq),
  cells: [...r.querySelectorAll('td')].map((td) => td.textContent) }));
const canvas = document.querySelector('#series-chart');
return { seq: Number(f('seq')), state: f('state'), temperature: f('temperature'), pressure: f('pressure'),
         load: f('load'), series: rows, chart: canvas.toDataURL() };
"""


@pytest.mark.timeout(600)  # a first run may install chromium and build the npm package
@pytest.mark.parametrize("wire", [4, 3])
async def test_live_monitor_page_shows_what_the_producer_sent(router, browser, producer, tmp_path, wire) -> None:
    base = router.url.replace("ws://", "http://")
    await asyncio.to_thread(browser.get, f"{base}/live-monitor/" + ("?wire=3" if wire == 3 else ""))
    await _wait_for(browser, "window.liveMonitor && liveMonitor.counts.series >= 3 && liveMonitor.counts.status >= 6")
    assert await asyncio.to_thread(browser.execute_script, "return liveMonitor.service") == producer["id"]
    shown = await asyncio.to_thread(browser.execute_script, "return liveMonitor.wire")
    assert shown["protocol"] == wire
    assert await _text(browser, '[data-field="wire"]') == f"v{wire}"

    first = await asyncio.to_thread(browser.execute_script, LIVE_SNAPSHOT)
    await asyncio.sleep(1.5)
    second = await asyncio.to_thread(browser.execute_script, LIVE_SNAPSHOT)
    # Live: 1.5 s at 20 Hz is ~30 status updates and ~15 series; the chart was redrawn.
    assert second["seq"] >= first["seq"] + 5
    assert second["temperature"] != first["temperature"]
    assert second["series"][0]["seq"] > first["series"][0]["seq"]
    assert second["chart"] != first["chart"]

    for snapshot in (first, second):
        # The status table shows exactly what the producer sent with that sequence number.
        sent = await producer["service"].sent(snapshot["seq"])
        assert sent is not None, snapshot["seq"]
        status = sent["status"]
        assert snapshot["state"] == status["state"]
        assert snapshot["temperature"] == f"{status['temperature']:.3f}"
        assert snapshot["pressure"] == f"{status['pressure']:.2f}"
        assert snapshot["load"] == f"{status['load']:.4f}"
        # The series table: the page's own min/max/mean of the float32 arrays it received.
        assert [row["channel"] for row in snapshot["series"]] == ["sine", "square", "sawtooth", "noise"]
        series_seq = snapshot["series"][0]["seq"]
        summary = (await producer["service"].sent(series_seq))["series"]["summary"]
        for row in snapshot["series"]:
            expected = summary[row["channel"]]
            shown = [float(cell) for cell in row["cells"][1:]]
            assert shown == pytest.approx([expected["min"], expected["max"], expected["mean"]], abs=6e-5)

    # What the page counted: on v4 the router's batch frames carry more messages than there are
    # frames; on v3 every message is a frame of its own. The table shows the same counts.
    counted = await asyncio.to_thread(browser.execute_script, "return liveMonitor.wire")
    assert counted["messagesIn"] >= 40
    if wire == 4:
        assert counted["framesIn"] < counted["messagesIn"], counted
    else:
        assert counted["framesIn"] == counted["messagesIn"], counted
    frames_in, messages_in = (int(n) for n in (await _text(browser, '[data-field="frames_in"]')).split(" / "))
    assert frames_in <= messages_in and (frames_in < messages_in) == (wire == 4)

    if wire == 4:
        if os.environ.get("RHIZOMORPH_SAVE_SCREENSHOTS"):
            await asyncio.sleep(10)  # let the history chart fill for the README picture
        await _screenshot(browser, tmp_path, "live-monitor")


async def _text(browser, selector: str) -> str | None:
    return await asyncio.to_thread(
        browser.execute_script, "const e = document.querySelector(arguments[0]); return e && e.textContent;", selector
    )


@pytest.mark.timeout(600)
async def test_console_page_shows_the_router_live(router, browser, connect, tmp_path) -> None:
    base = router.url.replace("ws://", "http://")
    await asyncio.to_thread(browser.get, f"{base}/")
    await _wait_for(browser, "window.routerConsole && routerConsole.polls >= 2")
    source = await asyncio.to_thread(browser.execute_script, "return routerConsole.source")
    wire = await asyncio.to_thread(browser.execute_script, "return routerConsole.wire")
    assert wire["protocol"] == 4 and wire["messagesIn"] >= 4, wire  # the page's own client, on v4
    assert await _text(browser, '[data-field="wire"]') == "v4"

    # A public service registered now appears in the console, and goes when unregistered.
    provider = await connect()
    caller = await connect()
    info = await provider.register_service(
        {"id": "console-probe", "name": "Console probe", "config": {"visibility": "public"}, "echo": lambda x: x}
    )
    selector = f'[data-service="{info["id"]}"]'
    await _wait_for(browser, f"document.querySelector('{selector}')")

    async def same_services() -> bool:  # the page lists what list_services answers a Python client
        listed = {s["id"] for s in await caller.list_services({"workspace": "*"}) if s.get("type") != "built-in"}
        return set(await asyncio.to_thread(browser.execute_script, "return routerConsole.services")) == listed

    await eventually(same_services, timeout=10, interval=0.5)

    if source == "get_router_stats":
        assert await _text(browser, '[data-field="workers"]') == str(len(router.workers))

        async def same_connections() -> bool:  # page, provider, caller and maybe the producer
            stats = await asyncio.to_thread(router.stats)
            return await _text(browser, '[data-field="connections"]') == str(sum(s["connections"] for s in stats))

        await eventually(same_connections, timeout=10, interval=0.5)
        before = int(await _text(browser, '[data-field="worker_messages"]'))
        echo = await caller.get_service(info["id"])
        for i in range(60):
            assert await echo.echo(i) == i
        # Each call is a request to the provider and a reply to the caller: 120 messages or more.
        await _wait_for(
            browser, f"Number(document.querySelector('[data-field=\"worker_messages\"]').textContent) >= {before + 120}"
        )
        await _wait_for(browser, "routerConsole.rates && routerConsole.rates.known")
    else:
        # An older router without get_router_stats: the page says so instead of guessing.
        assert "get_router_stats" in (await _text(browser, "#note") or "")

    if os.environ.get("RHIZOMORPH_SAVE_SCREENSHOTS"):
        await _keep_busy(caller, info["id"], seconds=20)
    await _screenshot(browser, tmp_path, "console")

    await provider.unregister_service("console-probe")
    await _wait_for(browser, f"!document.querySelector('{selector}')")


async def _keep_busy(caller: Any, service_id: str, seconds: float) -> None:
    """Traffic for the README picture of the console: bursts of calls, so the chart has a shape."""
    echo = await caller.get_service(service_id)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        await asyncio.gather(*(echo.echo(i) for i in range(int(20 + 15 * (time.monotonic() % 4)))))
        await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_dashboard_benchmark_smoke(ray_runtime) -> None:
    """benchmarks/bench_dashboard.py at a tiny scale: it runs, and its counts add up."""
    ensure_browser()
    ensure_browser_build()
    from benchmarks import bench_dashboard

    results = await bench_dashboard.main(["--rate", "40", "--seconds", "3", "--warmup", "1", "--repeats", "1"])
    by_wire = {r["wire"]: r for r in results}
    assert set(by_wire) == {3, 4}
    for result in results:
        assert result["messages_per_s"] > 0 and result["cpu_renderer_pct"] > 0 and result["cpu_router_pct"] > 0
    v3, v4 = by_wire[3], by_wire[4]
    assert v3["frames_in_per_s"] == pytest.approx(v3["messages_in_per_s"])
    assert v4["frames_in_per_s"] < v4["messages_in_per_s"]
