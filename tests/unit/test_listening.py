"""The early listener's hand-over (rhizomorph/listening.py) with real sockets and processes, no Ray:
a connection queued before any worker is served by the one that takes the socket, a taker
that dies leaves it to the next, and a listener closed untaken resets its queue."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from rhizomorph.listening import EarlyListener, take_over

# A stand-in for a worker that dies after taking the socket, before it says it serves it.
DYING_TAKER = """
import os, sys
from rhizomorph.listening import take_over
handed = take_over(sys.argv[1], int(sys.argv[2]))
print("took" if handed is not None else "none", flush=True)
os._exit(0)
"""


def take_and_die(listener: EarlyListener) -> None:
    """A process that takes the listener's socket and ends before it says it serves it."""
    dying = subprocess.run(
        [sys.executable, "-c", DYING_TAKER, listener.path, str(listener.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dying.stdout.strip() == "took", dying.stderr


def queued_client(port: int) -> socket.socket:
    client = socket.create_connection(("127.0.0.1", port), timeout=5)
    client.sendall(b"ping")
    return client


def serve_one(server: socket.socket) -> bytes:
    server.setblocking(True)
    server.settimeout(5)
    conn, _ = server.accept()
    with conn:
        data = conn.recv(16)
        conn.sendall(b"pong")
    return data


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


def test_a_connection_queued_before_the_hand_over_is_served_by_the_worker_that_takes_it():
    listener = EarlyListener("127.0.0.1", 0)
    try:
        assert listener.port > 0
        client = queued_client(listener.port)  # nobody accepts yet: it waits in the backlog
        handed = take_over(listener.path, listener.port)
        assert handed is not None
        assert serve_one(handed.socket) == b"ping"
        assert client.recv(16) == b"pong"
        assert not listener.taken.is_set()  # the launcher keeps its copy until told
        handed.confirm()
        assert listener.taken.wait(5)
        deadline = time.monotonic() + 5
        while listener.socket.fileno() != -1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert listener.socket.fileno() == -1, "the launcher's copy is closed once a worker serves"
        late = queued_client(listener.port)  # the worker's copy listens on
        assert serve_one(handed.socket) == b"ping" and late.recv(16) == b"pong"
        assert take_over(listener.path, listener.port, timeout=2) is None  # handed out once
        client.close(), late.close(), handed.socket.close()
    finally:
        listener.close()


def test_a_taker_that_dies_before_serving_leaves_the_socket_and_its_queue_to_the_next():
    listener = EarlyListener("127.0.0.1", 0)
    try:
        client = queued_client(listener.port)
        take_and_die(listener)
        handed = take_over(listener.path, listener.port)
        assert handed is not None, "the next worker that asks gets the socket"
        assert serve_one(handed.socket) == b"ping" and client.recv(16) == b"pong"
        handed.confirm()
        assert listener.taken.wait(5)
        client.close(), handed.socket.close()
    finally:
        listener.close()


def test_an_untaken_listener_closed_resets_its_queued_clients_and_stops_listening():
    listener = EarlyListener("127.0.0.1", 0)
    client = queued_client(listener.port)
    listener.close()
    client.settimeout(5)
    try:
        assert client.recv(16) == b""
    except ConnectionResetError:
        pass  # what Linux does with a queued connection: told, not left waiting
    client.close()
    assert refused(listener.port)
    assert take_over(listener.path, listener.port, timeout=2) is None


def test_a_port_in_use_is_an_error_at_once():
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        with pytest.raises(OSError):
            EarlyListener("127.0.0.1", other.getsockname()[1])


def test_port_0_is_resolved_by_the_listener_and_checked_by_the_taker():
    listener = EarlyListener("127.0.0.1", 0)
    try:
        assert take_over(listener.path, listener.port + 1 if listener.port < 65535 else 1) is None
        handed = take_over(listener.path, listener.port)  # a wrong port is abandoned, not taken
        assert handed is not None and handed.socket.getsockname()[1] == listener.port
        handed.confirm()
        assert listener.taken.wait(5)
        handed.socket.close()
    finally:
        listener.close()


def test_closing_while_a_worker_holds_the_hand_over_ends_the_thread_at_once():
    listener = EarlyListener("127.0.0.1", 0)
    handed = take_over(listener.path, listener.port)  # took it, has not said it serves it
    assert handed is not None
    listener.close()
    listener._thread.join(5)
    assert not listener._thread.is_alive(), "the hand-over thread waits for no worker once closed"
    handed.abandon()
    assert refused(listener.port)
