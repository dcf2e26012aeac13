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
