"""Ends an embedded Ray's processes when the process that started it dies without stopping it.

``ray.init()`` starts the GCS and the raylet so that they die with the driver (Linux's
parent-death signal), and Ray's workers die with their raylet. The raylet's two agents (the
dashboard agent and the runtime-env agent) do notice the raylet's death at once, but then try
to report it through the GCS, which died too, and wait out Ray's GCS reconnect timeout
(``gcs_rpc_server_reconnect_timeout_s``, 60 s) before they exit: after a ``kill -9`` of
``rhizomorph serve`` they stayed 60-90 s (``tests/test_cli.py`` checks that nothing stays).

So a driver that starts an embedded Ray also starts this watcher (``python -P
rhizomorph/reaper.py <driver pid>``, in a session of its own). It holds the read end of a pipe
from the driver and, every second, notes the driver's descendants (from ``/proc``: Linux only,
as the parent-death signal it completes). When the pipe closes without the word ``stop`` first
(the driver died), it kills the processes it noted, checking their start times so that a
reused pid is never hit. A driver that exits normally writes ``stop`` (``atexit``) and the
watcher just ends.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import subprocess
import sys
import time
from typing import IO

#: Seconds between two looks at the driver's descendants.
PERIOD = 1.0
_STOP = b"stop\n"


def processes() -> dict[int, tuple[int, int]]:
    """Every process: pid -> (parent pid, start time in clock ticks since boot), from /proc."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                stat = handle.read()
        except OSError:  # gone meanwhile
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) ": state, ppid, ...
        found[int(entry)] = (int(fields[1]), int(fields[19]))
    return found


def descendants(root: int, table: dict[int, tuple[int, int]]) -> dict[int, int]:
    """pid -> start time of every descendant of ``root`` in ``table``."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    found, todo = {}, [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            found[child] = table[child][1]
            todo.append(child)
    return found


def watch(driver_pid: int, pipe: IO[bytes], out: IO[bytes] | None) -> int:
    """Note ``driver_pid``'s descendants until ``pipe`` closes; kill them unless told ``stop``.
    Says ``watching`` on ``out`` once it has noted them a first time."""
    noted: dict[int, int] = {}  # pid -> start time
    received = bytearray()
    while True:
        table = processes()
        if driver_pid not in table:
            break
        noted.update(descendants(driver_pid, table))
        if out is not None:
            out.write(b"watching\n")
            out.close()
            out = None
        if not _read_for(PERIOD, pipe, received):
            break  # the driver is gone: the pipe's other end closed
    if received.endswith(_STOP):
        return 0
    noted.pop(os.getpid(), None)
    table = processes()
    for pid, started in noted.items():
        if table.get(pid, (0, None))[1] == started:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return 0


def _read_for(seconds: float, pipe: IO[bytes], into: bytearray) -> bool:
    """Read what comes on ``pipe`` for ``seconds``; ``False`` once it is closed."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([pipe], [], [], left)
        if ready:
            chunk = os.read(pipe.fileno(), 64)
            if not chunk:
                return False
            into += chunk
    return True


def start() -> subprocess.Popen[bytes]:
    """Start the watcher for this process and wait until it has noted this process's
    descendants; ``stop`` is written to it when this process exits."""
    watcher = subprocess.Popen(
        # A plain script (-P: its directory stays off sys.path): it imports the standard library only.
        [sys.executable, "-P", __file__, str(os.getpid())],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C or a kill of the driver's process group spares it
    )
    assert watcher.stdout is not None
    watcher.stdout.readline()
    watcher.stdout.close()

    def stop() -> None:
        try:
            assert watcher.stdin is not None
            watcher.stdin.write(_STOP)
            watcher.stdin.close()
            watcher.wait(timeout=5)
        except Exception:
            pass

    atexit.register(stop)
    return watcher


if __name__ == "__main__":
    sys.exit(watch(int(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer))
