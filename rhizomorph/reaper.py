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

It walks down from the driver through ``/proc/<pid>/task/<tid>/children`` rather than reading
every process of the machine (whose count, not the router's, set what a look cost): each
second the children of every descendant's main thread (Ray's processes start theirs there),
and every ``FULL_EVERY`` looks those of all their threads too (a child forked by another
thread is listed under that thread only). A process's start time is read once, when first seen.
A kernel built without those lists (``CONFIG_PROC_CHILDREN``) gets the full scan instead: every
process's parent, each look.
"""

from __future__ import annotations

import atexit
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from typing import IO

#: Seconds between two looks at the driver's descendants.
PERIOD = 1.0
#: Every this many looks, the children of every thread, not only of the main ones.
FULL_EVERY = 10
_STOP = b"stop\n"


def _read(path: str) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 1 << 16)
    finally:
        os.close(fd)


def _stat(pid: int | str) -> list[bytes] | None:
    """The fields of ``/proc/<pid>/stat`` after "pid (comm) " (state, ppid, ...); ``None`` if it is gone."""
    try:
        stat = _read(f"/proc/{pid}/stat")
    except OSError:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` (clock ticks since boot), ``None`` if it is gone."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def children(pid: int, every_thread: bool) -> list[int]:
    """The children of ``pid``'s main thread, or of all its threads (none if it is gone)."""
    try:
        threads = os.listdir(f"/proc/{pid}/task") if every_thread else [str(pid)]
    except OSError:
        return []
    found = []
    for tid in threads:
        try:
            found += [int(child) for child in _read(f"/proc/{pid}/task/{tid}/children").split()]
        except OSError:  # gone meanwhile
            pass
    return found


#: Whether this kernel lists a thread's children (``CONFIG_PROC_CHILDREN``, on in distribution kernels).
HAS_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def descendants(root: int, every_thread: bool) -> list[int]:
    """Every descendant of ``root`` reached through the children of main threads (or all threads);
    where the kernel lists no children, from every process's parent (``scanned_descendants``)."""
    if not HAS_CHILDREN_FILES:
        return scanned_descendants(root)
    return _walk(root, lambda pid: children(pid, every_thread))


def scanned_descendants(root: int) -> list[int]:
    """Every descendant of ``root``, from the parent pid of every process of the machine."""
    below: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(entry)) is not None:  # else gone meanwhile
            below.setdefault(int(fields[1]), []).append(int(entry))
    return _walk(root, lambda pid: below.get(pid, []))


def _walk(root: int, children_of: Callable[[int], list[int]]) -> list[int]:
    """Every process below ``root``, given each one's children."""
    found, todo = [], [root]
    while todo:
        for child in children_of(todo.pop()):
            found.append(child)
            todo.append(child)
    return found


def watch(driver_pid: int, pipe: IO[bytes], out: IO[bytes] | None, full_every: int = FULL_EVERY) -> int:
    """Note ``driver_pid``'s descendants until ``pipe`` closes; kill them unless told ``stop``.
    Says ``watching`` on ``out`` once it has noted them a first time."""
    noted: dict[int, int] = {}  # pid -> start time
    received = bytearray()
    looks = 0
    while start_time(driver_pid) is not None:
        for pid in descendants(driver_pid, every_thread=looks % full_every == 0):
            if pid not in noted and (started := start_time(pid)) is not None:
                noted[pid] = started
        looks += 1
        if out is not None:
            out.write(b"watching\n")
            out.close()
            out = None
        if not _read_for(PERIOD, pipe, received):
            break  # the driver is gone: the pipe's other end closed
    if received.endswith(_STOP):
        return 0
    noted.pop(os.getpid(), None)
    for pid, started in noted.items():
        if start_time(pid) == started:
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


def start(full_every: int = FULL_EVERY) -> subprocess.Popen[bytes]:
    """Start the watcher for this process and wait until it has noted this process's
    descendants; ``stop`` is written to it when this process exits."""
    watcher = subprocess.Popen(
        # A plain script (-P: its directory stays off sys.path): it imports the standard library only.
        [sys.executable, "-P", __file__, str(os.getpid()), str(full_every)],
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
    sys.exit(watch(int(sys.argv[1]), sys.stdin.buffer, sys.stdout.buffer, int(sys.argv[2])))
