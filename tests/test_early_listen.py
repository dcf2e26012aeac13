"""An embedded ``rhizomorph serve`` listens before Ray starts (rhizomorph/listening.py): a client
that connects during start-up waits and is served, a failed start resets it and leaves nothing
listening, and the first worker takes the launcher's socket even after a taker died with it."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

from benchmarks.startup import stop_serve
from rhizomorph import Config, Deployment
from rhizomorph.listening import EarlyListener
from tests.test_cli import descendants, free_port, listening_sockets
from tests.unit.test_listening import take_and_die

ACCEPTING = re.compile(r"rhizomorph: accepting connections on ws://127\.0\.0\.1:(\d+)")
HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class Cli:
    """``python -m rhizomorph serve <args>`` with its output collected by a thread."""

    def __init__(self, *args: str) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rhizomorph", "serve", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.output()):
                return match
            if self.process.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        pytest.fail(f"no {pattern!r} in the output of serve: {self.output()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            stop_serve(self.process)
        self._reader.join(10)
        assert self.process.stdout is not None
        self.process.stdout.close()


def connect_early(port: int, timeout: float = 30) -> socket.socket:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=1)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def answer(client: socket.socket, timeout: float = 120) -> bytes:
    """What the server sends on ``client`` until it closes (``b""`` if it only closes)."""
    client.settimeout(timeout)
    data = b""
    try:
        while chunk := client.recv(4096):
            data += chunk
            if b"\r\n\r\n" in data:
                break
    except ConnectionResetError:
        pass
    return data


@pytest.mark.slow
async def test_clients_that_connect_while_ray_starts_are_served_and_port_0_is_known_at_once():
    from hypha_rpc import connect_to_server

    cli = Cli("--port", "0", "--workers", "2")
    try:
        port = int(cli.wait_for(ACCEPTING.pattern, 30)[1])
        early = connect_early(port)
        accepted_s = time.monotonic() - cli.started
        assert "rhizomorph: serving" not in cli.output(), "connected only once it served: not early"
        early.sendall(HEALTH)
        head = await asyncio.to_thread(answer, early)
        assert head.startswith(b"HTTP/1.1 200"), head
        cli.wait_for(rf"rhizomorph: serving ws://127\.0\.0\.1:{port} with 2 gateway worker\(s\)")
        serving_s = time.monotonic() - cli.started
        print(f"TCP accepted {accepted_s:.2f} s, serving {serving_s:.2f} s after the start")
        assert accepted_s < serving_s
        server = await connect_to_server({"server_url": f"ws://127.0.0.1:{port}"})
        assert await server.echo("early") == "early"
        await server.disconnect()
        early.close()
        # Two workers, one socket each: the launcher's copy is closed (its process holds none).
        processes = descendants(cli.process.pid) | {cli.process.pid}
        holders = {pid for local, pid in listening_sockets(processes) if local.endswith(f":{port}")}
        assert cli.process.pid not in holders and len(holders) == 2, holders
    finally:
        cli.stop()


@pytest.mark.slow
def test_a_failed_start_resets_the_waiting_clients_and_leaves_nothing_listening():
    port = free_port()
    cli = Cli("--port", str(port), "--workers", "1", "--worker-resource", "no_node_has_this")
    try:
        early = connect_early(port)
        early.sendall(HEALTH)
        assert answer(early) == b"", "nothing serves a failed start: the client is reset, not answered"
        assert cli.process.wait(120) != 0
        assert "no_node_has_this" in cli.output()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        early.close()
    finally:
        cli.stop()


def test_the_first_worker_serves_the_launchers_socket_and_a_replacement_binds_its_own(ray_runtime):
    import ray

    listener = EarlyListener("127.0.0.1", 0)
    deployment = None
    try:
        queued = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
        queued.sendall(HEALTH)
        take_and_die(listener)  # a worker that died holding the socket: the next one gets it
        config = Config(port=listener.port, workers=2)
        deployment = Deployment(config, listener.path).start()
        info = deployment.worker_info
        assert sorted(i["listener"] for i in info.values()) == ["bound", "handed over"], info
        assert answer(queued, 30).startswith(b"HTTP/1.1 200")
        assert listener.taken.wait(5)
        queued.close()
        # The worker serving the handed-over socket dies: the socket goes with it; its
        # replacement binds one of its own on the same port.
        first = next(w for w, i in info.items() if i["listener"] == "handed over")
        ray.kill(deployment.workers[first], no_restart=True)
        deadline = time.monotonic() + 60
        while first in deployment.worker_info and time.monotonic() < deadline:
            deployment.check()
        info = deployment.worker_info
        assert first not in info and len(info) == 2, info
        assert sorted(i["listener"] for i in info.values()) == ["bound", "bound"], info
        for _ in range(4):  # each worker's socket, whichever the kernel picks
            with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as again:
                again.sendall(HEALTH)
                assert answer(again, 30).startswith(b"HTTP/1.1 200")
    finally:
        listener.close()
        if deployment is not None:
            deployment.stop()


def test_a_worker_killed_before_it_took_the_socket_leaves_it_to_its_replacement(ray_runtime):
    import ray

    from rhizomorph.actors import naming

    listener = EarlyListener("127.0.0.1", 0)
    server_id = f"early-{os.getpid()}"
    started: list[Deployment | BaseException] = []
    deployment = None
    try:
        queued = socket.create_connection(("127.0.0.1", listener.port), timeout=5)
        queued.sendall(HEALTH)
        # Someone holds the hand-over (took the socket, has not said it serves it): no worker
        # can take the socket until it lets go, so the first worker dies without it.
        holder = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        holder.connect(listener.path)
        _, fds, _, _ = socket.recv_fds(holder, 64, 1)
        os.close(fds[0])

        def start() -> None:
            try:
                started.append(
                    Deployment(Config(port=listener.port, workers=2, server_id=server_id), listener.path).start()
                )
            except BaseException as exc:
                started.append(exc)

        starting = threading.Thread(target=start, daemon=True)
        starting.start()
        first = naming.worker_name(server_id, "n0w0")  # the one given the hand-over
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ray.kill(naming.get(first), no_restart=True)
                break
            except ValueError:
                time.sleep(0.01)
        else:
            pytest.fail("the first worker never appeared")
        starting.join(120)
        holder.close()
        assert started and isinstance(started[0], Deployment), started
        deployment = started[0]
        info = deployment.worker_info
        assert [(w, i["listener"]) for w, i in sorted(info.items())] == [("n0w1", "bound")], info
        assert not listener.taken.is_set()
        deployment.check()  # the watchdog's look: it starts the missing worker, given the hand-over
        info = deployment.worker_info
        assert [(w, i["listener"]) for w, i in sorted(info.items())] == [("n0w1", "bound"), ("n0w2", "handed over")]
        assert listener.taken.wait(5)
        assert answer(queued, 30).startswith(b"HTTP/1.1 200"), "queued on the launcher's socket, served by n0w2"
        queued.close()
    finally:
        listener.close()
        if deployment is not None:
            deployment.stop()
