"""The gateway port's listening sockets, and the early one an embedded ``serve`` hands to a worker.

Every gateway worker of a node listens on the same port with its own SO_REUSEPORT socket
(``reuseport_socket``). An embedded ``rhizomorph serve`` binds the port itself before it starts
Ray (``EarlyListener``): ``ray.init`` takes seconds, and until a worker listens a port bound by
nobody refuses connections. The kernel completes the connections made meanwhile and queues
them in the socket's backlog. The first gateway worker then takes that very socket over a Unix
socket in a private directory (SCM_RIGHTS: ``take_over``), serves it, and says so
(``Handed.confirm``); only then does the launcher close its copy, so every queued connection
is served. A worker that dies before it says so closes its copy with its process; the
launcher's still holds the socket and its queue, for the next worker that asks. A start that
fails closes the launcher's copy: the queued connections are reset, none waits for ever.

Imports only the standard library: the launcher binds before it imports anything heavy.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
import threading

__all__ = ["LISTEN_BACKLOG", "EarlyListener", "Handed", "reuseport_socket", "take_over"]

log = logging.getLogger("rhizomorph.listening")

#: Connections the kernel completes and queues for a worker before it accepts them. When a
#: worker dies its clients all reconnect at once to the others (docs/deploy.md, "Reconnection
#: storms"); a full queue drops their SYNs, and each retransmission costs the client 1, 2,
#: then 4 s. asyncio's default (100) overflowed with 500 clients reconnecting. The early
#: listener queues every client that connects while Ray starts, up to this many.
LISTEN_BACKLOG = 1024
#: What a worker sends back once it serves the socket it was given.
SERVING = b"serving"
#: Seconds a worker may take to receive the socket once the launcher answers it. Between then
#: and its answer it may take as long as its start does: until it ends, which closes its side
#: (the controller kills a worker that does not start in time).
SEND_TIMEOUT = 10.0


def reuseport_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``(host, port)`` that other workers of the node share."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets whose proto says TCP, and
    # accepted sockets inherit it. Without it Nagle and delayed ACKs hold the tail of a burst.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class EarlyListener:
    """The gateway port bound and listening in the launcher, until a worker has taken it.

    ``port`` is the port bound (``port=0`` picks a free one); ``path`` is the Unix socket a
    worker asks at (``take_over``). A thread answers each worker that asks with the socket
    until one confirms it serves it; ``taken`` is set then, and the launcher's copy is closed.
    """

    def __init__(self, host: str, port: int) -> None:
        self.socket = reuseport_socket(host, port)
        self.port: int = self.socket.getsockname()[1]
        self.taken = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._worker: socket.socket | None = None  # the worker being answered, for close()
        self._directory = tempfile.mkdtemp(prefix="rhizomorph-listen-")  # mode 0700: this user only
        self.path = os.path.join(self._directory, "listener")
        self._requests = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._requests.bind(self.path)
            self._requests.listen(8)
        except OSError:
            self.close()
            raise
        self._thread = threading.Thread(target=self._hand_over, name="rhizomorph-listen-handover", daemon=True)
        self._thread.start()

    def _hand_over(self) -> None:
        while not self.taken.is_set():
            try:
                worker, _ = self._requests.accept()
            except OSError:
                return  # closed
            with worker:
                self._worker = worker
                try:
                    worker.settimeout(SEND_TIMEOUT)
                    socket.send_fds(worker, [b"listener"], [self.socket.fileno()])
                    worker.settimeout(None)
                    answer = worker.recv(len(SERVING))
                except OSError as exc:
                    log.warning("a gateway worker took the listening socket and did not serve it: %s", exc)
                    continue
                if answer == SERVING:
                    self.taken.set()
                else:  # its process ended: its copy of the socket with it
                    log.warning("a gateway worker took the listening socket and ended before serving it")
        self.close()

    def close(self) -> None:
        """Close the launcher's copy of the socket (connections still queued on it are reset
        unless a worker serves it) and stop answering workers. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for waiting in (self._requests, self._worker):  # wakes the thread's accept or recv
            if waiting is not None:
                with contextlib.suppress(OSError):
                    waiting.shutdown(socket.SHUT_RDWR)
        self._requests.close()
        self.socket.close()
        shutil.rmtree(self._directory, ignore_errors=True)


class Handed:
    """A listening socket received from the launcher, and the line to tell it it is served."""

    def __init__(self, sock: socket.socket, launcher: socket.socket) -> None:
        self.socket = sock
        self._launcher = launcher

    def confirm(self) -> None:
        """Tell the launcher this worker serves the socket: it closes its copy."""
        try:
            self._launcher.sendall(SERVING)
        except OSError as exc:  # the launcher closed meanwhile: this worker's copy serves on
            log.warning("could not tell the launcher the listening socket is served: %s", exc)
        finally:
            self._launcher.close()

    def abandon(self) -> None:
        """Not served after all: close this copy; the launcher keeps its own for another worker."""
        self._launcher.close()
        self.socket.close()


def take_over(path: str, port: int, timeout: float = 10.0) -> Handed | None:
    """The launcher's listening socket from the Unix socket at ``path`` (blocking), or ``None``
    if nobody hands one out there (the launcher closed it) or it is not a TCP socket listening
    on ``port``: the caller then binds its own."""
    launcher = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    launcher.settimeout(timeout)
    try:
        launcher.connect(path)
        _, fds, _, _ = socket.recv_fds(launcher, 64, 1)
    except OSError as exc:
        launcher.close()
        log.info("no listening socket to take at %s (%s): binding one", path, exc)
        return None
    if not fds:
        launcher.close()
        return None
    sock = socket.socket(fileno=fds[0])
    if (
        sock.type != socket.SOCK_STREAM
        or sock.family not in (socket.AF_INET, socket.AF_INET6)
        or (port and sock.getsockname()[1] != port)
    ):
        log.warning("the socket handed over at %s is not the gateway port %d: binding one", path, port)
        sock.close()
        launcher.close()
        return None
    sock.setblocking(False)
    return Handed(sock, launcher)
