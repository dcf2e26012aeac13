"""The command line and the embedded Ray: listens on loopback only, starts and stops cleanly."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

LISTEN = re.compile(r"^LISTEN\s+\d+\s+\d+\s+(?P<local>\S+)\s+\S+\s+users:(?P<users>.*)$")


def listening_sockets(pids: set[int]) -> list[tuple[str, int]]:
    """(local address, pid) of every TCP listening socket owned by one of ``pids`` (from ``ss -ltnp``)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = []
    for line in out.splitlines():
        match = LISTEN.match(line.strip())
        if not match:
            continue
        for pid in map(int, re.findall(r"pid=(\d+)", match["users"])):
            if pid in pids:
                found.append((match["local"], pid))
    return found


def is_loopback(local: str) -> bool:
    host = local.rsplit(":", 1)[0].strip("[]")
    return host.startswith("127.") or host in ("::1", "::ffff:127.0.0.1") or host.startswith("::ffff:127.")


def descendants(pid: int) -> set[int]:
    return {p.pid for p in psutil.Process(pid).children(recursive=True)}


def test_embedded_ray_listens_on_loopback_only(ray_runtime, router):
    pids = descendants(os.getpid())
    sockets = listening_sockets(pids | {os.getpid()})
    assert len(sockets) >= 3, f"expected Ray's servers among {sockets}"
    exposed = [s for s in sockets if not is_loopback(s[0])]
    assert exposed == [], f"Ray or the gateway listens beyond loopback: {exposed}"


def test_embedded_ray_runs_the_routers_actors_at_the_drivers_priority(ray_runtime, router):
    # Ray would run them at nice 15 (rhizomorph.launcher.EMBEDDED_RAY_ENV says why not).
    actors = {}
    for process in psutil.Process(os.getpid()).children(recursive=True):
        try:
            title = process.cmdline()[0] if process.cmdline() else ""
            if title.startswith(("ray::GatewayWorker", "ray::Registry", "ray::Controller")):
                actors[process.pid] = (title, process.nice())
        except psutil.Error:
            continue
    assert {title.split(".")[0] for title, _ in actors.values()} >= {"ray::GatewayWorker", "ray::Registry"}, actors
    assert {nice for _, nice in actors.values()} == {os.nice(0)}, actors


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
async def test_cli_serves_hypha_clients_and_ctrl_c_leaves_no_process():
    from hypha_rpc import connect_to_server

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhizomorph", "serve", "--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        lines = []
        while time.monotonic() < deadline:
            line = await asyncio.to_thread(proc.stdout.readline)
            lines.append(line)
            if f"serving ws://127.0.0.1:{port}" in line:
                break
            assert proc.poll() is None, "".join(lines)
        else:
            pytest.fail("the router did not start: " + "".join(lines))

        children = descendants(proc.pid)
        assert children, "the embedded Ray should run as child processes"
        exposed = [s for s in listening_sockets(children | {proc.pid}) if not is_loopback(s[0])]
        assert exposed == []

        url = f"ws://127.0.0.1:{port}"
        provider = await connect_to_server({"server_url": url})
        consumer = await connect_to_server({"server_url": url})
        await provider.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
        echo = await consumer.get_service(f"{provider.config.workspace}/{provider.config.client_id}:echo")
        assert await echo.echo("cli") == "cli"
        await provider.disconnect()
        await consumer.disconnect()

        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 60) == 0

        def alive(pid: int) -> bool:
            try:
                return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return False

        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        assert [pid for pid in children if alive(pid)] == [], "orphan processes after Ctrl-C"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def wait_gone(pids: set[int], timeout: float) -> tuple[list[int], float]:
    """Wait until none of ``pids`` runs; returns those still running and the seconds waited."""
    started = time.monotonic()
    while any(alive(pid) for pid in pids) and time.monotonic() - started < timeout:
        await asyncio.sleep(0.2)
    return sorted(pid for pid in pids if alive(pid)), time.monotonic() - started


# A stand-in for a driver: processes that would outlive it (as Ray's agents did), then the
# watcher; then more, started after it: one by the main thread with a child of its own, one by
# another thread that lives on (noted by the watcher's look at every thread, here every second one).
FAKE_DRIVER = """
import subprocess, sys, threading, time
from rhizomorph import reaper
SLEEP = [sys.executable, "-c", "import time; time.sleep(600)"]
PARENT = [sys.executable, "-c", "import subprocess, sys, time; "
          "print(subprocess.Popen(sys.argv[1:]).pid, flush=True); time.sleep(600)", *SLEEP]
child = subprocess.Popen(SLEEP)
watcher = reaper.start(full_every=2)
later = subprocess.Popen(PARENT, stdout=subprocess.PIPE, text=True)
grandchild = int(later.stdout.readline())
from_thread, started = [], threading.Event()
def spawn():  # the thread lives on: its child is listed under it, not under the main thread
    from_thread.append(subprocess.Popen(SLEEP))
    started.set()
    threading.Event().wait()
threading.Thread(target=spawn, daemon=True).start()
started.wait()
time.sleep(2.5)  # two looks: at the main threads' children, then at every thread's
print(watcher.pid, child.pid, later.pid, grandchild, from_thread[0].pid, flush=True)
if sys.argv[1] == "exit":
    sys.exit(0)
time.sleep(600)
"""


@pytest.mark.parametrize("ending", ["kill", "exit"])
async def test_the_watcher_kills_what_a_killed_driver_left_and_spares_a_clean_exit(ending):
    driver = subprocess.Popen(
        [sys.executable, "-c", FAKE_DRIVER, ending], stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    watcher, *left_behind = map(int, (await asyncio.to_thread(driver.stdout.readline)).split())
    try:
        if ending == "kill":
            driver.kill()
            left, waited = await wait_gone({watcher, *left_behind}, 10)
            assert left == [], f"left behind after {waited:.1f} s"
        else:
            assert await asyncio.to_thread(driver.wait, 10) == 0
            left, _ = await wait_gone({watcher}, 10)
            assert left == [] and all(alive(pid) for pid in left_behind)  # told "stop": it touches nothing
    finally:
        for pid in (driver.pid, *left_behind):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        driver.wait()
        driver.stdout.close()


def test_start_needs_an_address():
    from rhizomorph.cli import main

    assert main(["start", "--port", "0"]) == 2


async def start_cli(*args: str) -> tuple[subprocess.Popen, str]:
    """``python -m rhizomorph serve <args>`` until it says it serves: (process, banner)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rhizomorph", "serve", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = await asyncio.to_thread(proc.stdout.readline)
        lines.append(line)
        if "rhizomorph: serving" in line:
            return proc, line
        if not line and proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    proc.stdout.close()
    pytest.fail("the router did not start: " + "".join(lines))


@pytest.mark.slow
async def test_kill_9_of_the_embedded_cli_leaves_no_process():
    """The embedded Ray lives as long as ``rhizomorph serve``: a kill -9 takes everything down,
    the raylet's agents included (they used to stay 60-90 s: rhizomorph/reaper.py)."""
    from hypha_rpc import connect_to_server

    port = free_port()
    proc, banner = await start_cli("--port", str(port), "--workers", "1")
    try:
        server = await connect_to_server({"server_url": f"ws://127.0.0.1:{port}"})
        assert await server.echo("up") == "up"
        await asyncio.sleep(1.5)  # the watcher has noted every process by now
        family = descendants(proc.pid)
        names = {psutil.Process(pid).name() for pid in family if alive(pid)}
        assert {"raylet", "gcs_server"} <= names and any("Agent" in n for n in names), names
        proc.kill()
        assert await asyncio.to_thread(proc.wait, 10) == -signal.SIGKILL
        left, waited = await wait_gone(family, 30)
        assert left == [], f"left behind {waited:.1f} s after the kill: {left}"
        print(f"every process of the embedded router gone {waited:.1f} s after kill -9")
        try:
            await asyncio.wait_for(server.disconnect(), 5)
        except Exception:
            pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stdout.close()
