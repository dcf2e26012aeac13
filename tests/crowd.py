"""Many released hypha-rpc clients, spread over a few spawned processes, driven from a test.

One Python process cannot drive a thousand hypha-rpc clients on a loaded 2-core machine (each
is a websocket, an RPC object and a handful of tasks), and they must not share the event loop
of the test, which is also a Ray driver. A ``Crowd`` starts ``processes`` interpreters (spawned:
they import neither Ray nor the test); each holds its share of the clients on its own loop and
runs the commands the test sends it. Every client is the released client as a user has it
(``hypha_rpc.connect_to_server``, its own reconnection and re-registration); the crowd only
watches it: when a (re)connection is complete, and which replies arrive on its socket.

    async with Crowd(processes=4) as crowd:
        members = await crowd.connect(url, 1000)            # [{"index", "address", "worker", ...}]
        await crowd.register()                              # each one registers ECHO
        outcomes = await crowd.call([(0, members[1]["service_id"])])
        killed = time.monotonic()                           # ... and kill something
        reports = await crowd.recover({2: 3}, after=killed) # member 2 back? (3 calls it, it calls 3)
        tally = await crowd.tally()                         # replies and executions per call id

The member processes are ``python -m tests.crowd_member`` (a fresh interpreter: not a fork of a
Ray driver, and it does not import the test's main module as multiprocessing's spawn does). More
commands are methods of its ``_Host``, named in its ``_serve`` table, with a method of ``Crowd``
here that sends them. The chaos run's traffic (tests/chaos_clients.py) is such a set of
commands (``Crowd.chaos``).

Call ids are unique per crowd (``<prefix>-<caller>-<n>``); the echo service returns its call id,
so a reply is counted per call id where it arrives: at the caller's socket, before hypha-rpc
sees it (``tally()["replies"]``), and its executions at the provider (``tally()["executions"]``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterable
from multiprocessing.connection import Connection
from typing import Any

from tests.crowd_member import CALL_PREFIX, ECHO

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

__all__ = ["CALL_PREFIX", "ECHO", "Crowd"]

#: Seconds a process gets to disconnect its clients and exit before it is killed.
CLOSE_TIMEOUT = 20.0


# -- the test's side -------------------------------------------------------------------------------
class _Process:
    """One spawned member process and its command pipe; replies come back in any order."""

    def __init__(self, number: int, stderr_path: str | None = None) -> None:
        self.number = number
        ours, theirs = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
        stderr = open(stderr_path, "wb") if stderr_path else None
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.crowd_member", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                env=env,
                stdin=subprocess.DEVNULL,
                stderr=stderr,
            )
        finally:
            theirs.close()
            if stderr is not None:
                stderr.close()
        self.pipe = Connection(ours.detach())
        self._ids = itertools.count()
        self._waiting: dict[int, tuple[asyncio.AbstractEventLoop, asyncio.Future[Any]]] = {}
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name=f"crowd-{number}-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                request_id, ok, result = self.pipe.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                loop, future = self._waiting.pop(request_id)
            loop.call_soon_threadsafe(_settle, future, ok, result)
        with self._lock:
            waiting, self._waiting = self._waiting, {}
        for loop, future in waiting.values():
            loop.call_soon_threadsafe(_settle, future, False, f"crowd process {self.number} ended")

    async def request(self, command: str, **arguments: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        request_id = next(self._ids)
        with self._lock:
            self._waiting[request_id] = (loop, future)
        self.pipe.send((request_id, command, arguments))
        return await future

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.pipe.send((-1, "exit", {}))
            except OSError:
                pass
            try:
                self.process.wait(CLOSE_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.pipe.close()


def _settle(future: asyncio.Future[Any], ok: bool, result: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(result)
    else:
        future.set_exception(RuntimeError(f"crowd process failed: {result}"))


class Crowd:
    """``processes`` member processes; members are numbered 0..n-1 across them, in order."""

    def __init__(self, processes: int = 4, stderr_dir: str | None = None) -> None:
        """``stderr_dir``: each process's stderr goes to ``crowd-<n>.log`` there (else it is ours)."""
        self.processes = [
            _Process(i, os.path.join(stderr_dir, f"crowd-{i}.log") if stderr_dir else None) for i in range(processes)
        ]
        #: member index -> the process holding it
        self._holder: dict[int, _Process] = {}

    async def __aenter__(self) -> Crowd:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        """Disconnect every member and end the processes (killed if they do not exit)."""
        await asyncio.gather(*(asyncio.to_thread(p.close) for p in self.processes))

    @property
    def pids(self) -> list[int]:
        return [p.process.pid for p in self.processes]

    async def _each(self, command: str, **arguments: Any) -> list[Any]:
        return list(await asyncio.gather(*(p.request(command, **arguments) for p in self.processes)))

    async def _by_member(self, command: str, per_member: dict[int, Any], **arguments: Any) -> list[Any]:
        """``command`` in every process holding one of ``per_member``, given its share."""
        shares: dict[_Process, dict[int, Any]] = {}
        for index, value in per_member.items():
            shares.setdefault(self._holder[index], {})[index] = value
        results = await asyncio.gather(*(p.request(command, share=s, **arguments) for p, s in shares.items()))
        return [item for result in results for item in result]

    def holder(self, index: int) -> int:
        """The number of the process holding member ``index``."""
        return self._holder[index].number

    async def connect(self, url: str, count: int, **options: Any) -> list[dict[str, Any]]:
        """Connect ``count`` clients to ``url`` (hypha-rpc config ``options``: ``method_timeout`` …),
        spread evenly over the processes. Returns one description per member, by index:
        ``index``, ``process``, ``address``, ``workspace``, ``client_id``, ``service_id`` (of
        ``ECHO``, once registered) and ``worker`` (``connection_info.rhizomorph_worker``)."""
        start = len(self._holder)
        per_process = [
            count // len(self.processes) + (i < count % len(self.processes)) for i in range(len(self.processes))
        ]
        requests, first = [], start
        for process, share in zip(self.processes, per_process):
            indices = list(range(first, first + share))
            first += share
            for index in indices:
                self._holder[index] = process
            requests.append(process.request("connect", url=url, indices=indices, options=options))
        members = [m for result in await asyncio.gather(*requests) for m in result]
        for member in members:
            member["process"] = self.holder(member["index"])
        return sorted(members, key=lambda m: m["index"])

    async def register(self, service: str = ECHO) -> None:
        """Every member registers the echo service ``service`` (public)."""
        await self._each("register", service=service)

    async def call(self, calls: Iterable[tuple[int, str]], timeout: float = 30.0) -> list[dict[str, Any]]:
        """Each ``(caller index, service id)``: the caller gets the service and calls ``echo``
        with a fresh call id. Returns the outcomes: ``call_id``, ``caller``, ``service``,
        ``ok`` (the reply was the call id), ``error`` (str, or ``None``), ``hung`` (no answer
        within ``timeout``), ``seconds``."""
        by_caller: dict[int, list[str]] = {}
        for caller, service_id in calls:
            by_caller.setdefault(caller, []).append(service_id)
        return await self._by_member("call", by_caller, timeout=timeout)

    async def recover(
        self,
        buddy_of: dict[int, int],
        after: float,
        timeout: float = 60.0,
        retry: float = 0.5,
        call_timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """For each watched member (``buddy_of``'s keys; each buddy in the same process): wait
        until hypha-rpc reconnected it after ``after`` (``time.monotonic()``, one clock for the
        machine's processes) and re-registered its services, then until the buddy finds its
        ``ECHO`` through the manager and an echo call to it succeeds, and an echo call of its
        own to the buddy's ``ECHO`` succeeds too; retried every ``retry`` s until ``timeout``
        (a call without an answer within ``call_timeout`` is ``hung``).
        Returns per member: ``index``, ``worker`` (now); monotonic times, ``None`` if not
        within ``timeout``: ``opened`` (its ``connection_info`` came), ``reconnected`` (and its
        services re-registered), ``recovered``; ``connections`` and ``tries`` (hypha-rpc's
        connection attempts: ``(started, ended, error or None)``) since ``after``;
        ``attempts`` (of the calls), ``errors`` (the first few), ``error_count``, and the
        ``calls`` made (outcomes as ``call`` returns them)."""
        return await self._by_member(
            "recover", buddy_of, after=after, timeout=timeout, retry=retry, call_timeout=call_timeout
        )

    async def members(self) -> list[dict[str, Any]]:
        """Every member now: ``index``, ``address``, ``worker`` (of its latest connection),
        ``open`` (its socket), ``connections``: ``[(monotonic time, worker), …]`` after the first."""
        return sorted([m for result in await self._each("members") for m in result], key=lambda m: m["index"])

    async def tally(self) -> dict[str, Counter[str]]:
        """Replies per call id as they arrived on the callers' sockets (``replies``), executions
        per call id at the providers (``executions``), and the client log lines by level (``log``)."""
        total: dict[str, Counter[str]] = {"replies": Counter(), "executions": Counter(), "log": Counter()}
        for result in await self._each("tally"):
            for key, counts in result.items():
                total[key].update(counts)
        return total

    async def chaos(self, step: str, per_process: list[dict[str, Any]] | None = None, **arguments: Any) -> list[Any]:
        """The chaos traffic's ``step`` (tests/chaos_clients.py: ``connect``, ``go``,
        ``phase``, ``status``, ``stop``) in every process, each with its own ``per_process``
        arguments if given; the answers in process order."""
        shares = per_process or [{} for _ in self.processes]
        return list(
            await asyncio.gather(
                *(p.request("chaos", step=step, **arguments, **a) for p, a in zip(self.processes, shares))
            )
        )
