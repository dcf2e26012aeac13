"""A member process of a ``Crowd`` (tests/crowd.py): its share of the hypha-rpc clients, and the
commands the test sends it over a socket (``python -m tests.crowd_member <fd>``).

It imports neither Ray nor the test. Each client is ``hypha_rpc.connect_to_server`` as a
user calls it; the process only watches it: hypha-rpc's connection attempts (``open``), the end
of each (re)connection (its ``on_connected`` handler, which re-registers the services, returned),
and the replies that arrive on its socket (counted per call id before hypha-rpc reads them).
"""

from __future__ import annotations

import asyncio
import io
import itertools
import logging
import threading
import time
import traceback
from collections import Counter
from typing import Any

#: The service every member registers (``register``): ``echo(call_id)`` returns ``call_id``.
ECHO = "crowd-echo"
CALL_PREFIX = "crowd-call"
#: How many clients of one process open their connection at once (``connect``).
CONNECT_PARALLEL = 16
#: Errors kept per recovering member (the rest are counted).
ERRORS_KEPT = 3


class _CountingHandler(logging.Handler):
    """hypha-rpc's log lines, counted by level; a storm would otherwise print thousands."""

    def __init__(self, counts: Counter[str]) -> None:
        super().__init__(logging.DEBUG)
        self.counts = counts

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1
        if record.levelno >= logging.ERROR and self.counts[record.levelname] <= ERRORS_KEPT:
            self.counts[f"{record.levelname}: {record.getMessage()[:200]}"] += 1


class _Member:
    def __init__(self, index: int, server: Any) -> None:
        self.index = index
        self.server = server
        self.connection = server.rpc._connection  # hypha-rpc's WebsocketRPCConnection
        config = server.config
        self.workspace = config.workspace
        self.client_id = config.client_id
        self.address = f"{self.workspace}/{self.client_id}"
        self.first_worker = getattr(config, "rhizomorph_worker", None)
        #: (monotonic time, worker id) of each reconnection, once hypha-rpc's own handler (which
        #: re-registers the services) returned.
        self.connections: list[tuple[float, str | None]] = []
        #: When each of those reconnections got its ``connection_info`` (the handshake's end).
        self.opened: list[float] = []
        #: Every reconnection attempt: (started, ended, error or ``None``).
        self.attempts: list[tuple[float, float, str | None]] = []
        self.changed = asyncio.Event()
        self.calls = itertools.count()

    @property
    def worker(self) -> str | None:
        return self.connections[-1][1] if self.connections else self.first_worker

    def service_id(self, service: str = ECHO) -> str:
        return f"{self.address}:{service}"


class _Host:
    """The members of one process and the commands on them."""

    def __init__(self) -> None:
        self.members: dict[int, _Member] = {}
        self.replies: Counter[str] = Counter()
        self.executions: Counter[str] = Counter()
        self.log_counts: Counter[str] = Counter()
        self.logger = logging.getLogger("crowd.hypha")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        self.logger.addHandler(_CountingHandler(self.log_counts))
        self.traffic: Any = None  # tests/chaos_clients.py's Traffic, once ``chaos("connect")``

    # -- watching a client ------------------------------------------------------------------------
    def _watch(self, member: _Member) -> None:
        connection = member.connection
        on_connected = connection._handle_connected  # RPC's: re-registers services, subscribes

        async def connected(info: dict[str, Any]) -> None:
            opened = time.monotonic()
            await on_connected(info)
            member.connections.append((time.monotonic(), (info or {}).get("rhizomorph_worker")))
            member.opened.append(opened)
            member.changed.set()

        connection._handle_connected = connected
        open_connection = connection.open

        async def counted_open() -> Any:
            started = time.monotonic()
            try:
                info = await open_connection()
            except BaseException as exc:
                member.attempts.append((started, time.monotonic(), f"{type(exc).__name__}: {exc}"[:200]))
                raise
            member.attempts.append((started, time.monotonic(), None))
            return info

        connection.open = counted_open  # the reconnection loop calls self.open()
        on_message = connection._handle_message

        def counted(data: Any) -> Any:
            if isinstance(data, bytes) and b".resolve" in data:
                self._count_reply(data)
            return on_message(data)

        connection._handle_message = counted

    def _count_reply(self, data: bytes) -> None:
        import msgpack

        unpacker = msgpack.Unpacker(io.BytesIO(data))
        try:
            message = unpacker.unpack()
            try:
                message.update(unpacker.unpack())
            except msgpack.OutOfData:
                pass
        except Exception:
            return
        args = message.get("args") or []
        if str(message.get("method", "")).endswith(".resolve") and args:
            value = args[0]
            if isinstance(value, str) and value.startswith(CALL_PREFIX):
                self.replies[value] += 1

    def _echo(self, call_id: str) -> str:
        self.executions[call_id] += 1
        return call_id

    # -- commands ---------------------------------------------------------------------------------
    async def connect(self, url: str, indices: list[int], options: dict[str, Any]) -> list[dict[str, Any]]:
        from hypha_rpc import connect_to_server

        gate = asyncio.Semaphore(CONNECT_PARALLEL)

        async def one(index: int) -> _Member:
            async with gate:
                server = await connect_to_server({"server_url": url, "logger": self.logger, **options})
            member = self.members[index] = _Member(index, server)
            self._watch(member)
            return member

        members = await asyncio.gather(*(one(i) for i in indices))
        return [self._describe(m) for m in members]

    def _describe(self, member: _Member) -> dict[str, Any]:
        return {
            "index": member.index,
            "address": member.address,
            "workspace": member.workspace,
            "client_id": member.client_id,
            "service_id": member.service_id(),
            "worker": member.worker,
        }

    async def register(self, service: str) -> None:
        await asyncio.gather(
            *(
                m.server.register_service({"id": service, "config": {"visibility": "public"}, "echo": self._echo})
                for m in self.members.values()
            )
        )

    async def _call_once(self, member: _Member, service_id: str, timeout: float) -> dict[str, Any]:
        call_id = f"{CALL_PREFIX}-{member.index}-{next(member.calls)}"
        outcome: dict[str, Any] = {"call_id": call_id, "caller": member.index, "service": service_id}
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                service = await member.server.get_service(service_id)
                reply = await service.echo(call_id)
            outcome.update(ok=reply == call_id, error=None if reply == call_id else f"echoed {reply!r}", hung=False)
        except TimeoutError as exc:  # ours, or hypha-rpc's method_timeout: no answer came
            outcome.update(ok=False, error=f"no answer within {timeout:g} s: {exc}"[:300], hung=True)
        except Exception as exc:
            outcome.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:300], hung=False)
        outcome["seconds"] = time.monotonic() - started
        return outcome

    async def call(self, share: dict[int, list[str]], timeout: float) -> list[dict[str, Any]]:
        calls = [self._call_once(self.members[i], s, timeout) for i, services in share.items() for s in services]
        return list(await asyncio.gather(*calls))

    async def recover(
        self, share: dict[int, int], after: float, timeout: float, retry: float, call_timeout: float
    ) -> list[dict[str, Any]]:
        deadline = after + timeout
        recovering = (self._recover(i, b, after, deadline, retry, call_timeout) for i, b in share.items())
        return list(await asyncio.gather(*recovering))

    async def _recover(
        self, index: int, buddy_index: int, after: float, deadline: float, retry: float, call_timeout: float
    ) -> dict[str, Any]:
        member, buddy = self.members[index], self.members[buddy_index]
        report: dict[str, Any] = {"index": index, "reconnected": None, "recovered": None, "attempts": 0}
        errors: list[str] = []
        calls: list[dict[str, Any]] = []
        while not any(t > after for t, _ in member.connections) and time.monotonic() < deadline:
            member.changed.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await member.changed.wait()
            except TimeoutError:
                break
        later = [(t, w) for t, w in member.connections if t > after]
        if later:
            report["reconnected"] = later[0][0]
            while time.monotonic() < deadline:
                report["attempts"] += 1
                remaining = max(0.1, min(call_timeout, deadline - time.monotonic()))
                there = await self._call_once(buddy, member.service_id(), remaining)
                back = await self._call_once(member, buddy.service_id(), remaining) if there["ok"] else None
                calls += [c for c in (there, back) if c is not None]
                if there["ok"] and back is not None and back["ok"]:
                    report["recovered"] = time.monotonic()
                    break
                errors.append((back or there)["error"])
                await asyncio.sleep(retry)
        report.update(
            opened=next((t for t in member.opened if t > after), None),
            tries=[a for a in member.attempts if a[0] > after],
            worker=member.worker,
            connections=[(t, w) for t, w in member.connections if t > after],
            errors=errors[:ERRORS_KEPT],
            error_count=len(errors),
            calls=calls,
        )
        return report

    async def members_now(self) -> list[dict[str, Any]]:
        from websockets.protocol import State

        described = []
        for member in self.members.values():
            websocket = member.connection._websocket
            described.append(
                {
                    **self._describe(member),
                    "open": websocket is not None and websocket.state == State.OPEN,
                    "connections": list(member.connections),
                }
            )
        return described

    async def chaos(self, step: str, **arguments: Any) -> Any:
        """The chaos run's traffic (tests/chaos_clients.py): ``connect`` (``url``, ``clients``,
        ``seed``; returns the members and the seconds it took), ``go`` (``targets``,
        ``v4_targets``), ``phase`` (``phase``; returns the seconds the last phase's calls took
        to end), ``status``, and ``stop`` (returns the counts, then disconnects)."""
        from tests import chaos_clients

        if step == "connect":
            started = time.monotonic()
            traffic = self.traffic = chaos_clients.Traffic(
                arguments["url"], arguments["clients"], seed=arguments["seed"]
            )
            await traffic.connect()
            members = [{"sid": m.sid, "v4": m.v4} for m in traffic.members]
            return {"members": members, "connect_s": round(time.monotonic() - started, 2)}
        traffic = self.traffic
        if traffic is None:
            raise RuntimeError("no chaos traffic: connect first")
        if step == "go":
            traffic.go(arguments["targets"], arguments["v4_targets"])
            return None
        if step == "phase":
            return await traffic.switch(arguments["phase"])
        if step == "status":
            return traffic.status()
        if step == "stop":
            await traffic.stop()
            report = traffic.tally.report()
            await traffic.disconnect()
            self.traffic = None
            return report
        raise ValueError(f"unknown chaos step {step!r}")

    async def tally(self) -> dict[str, dict[str, int]]:
        return {"replies": dict(self.replies), "executions": dict(self.executions), "log": dict(self.log_counts)}

    async def disconnect(self) -> None:
        await disconnect_all([m.server for m in self.members.values()], 5)
        self.members.clear()


async def disconnect_all(servers: list[Any], timeout: float) -> None:
    """``disconnect()`` every hypha-rpc client, each given at most ``timeout`` seconds."""

    async def one(server: Any) -> None:
        try:
            await asyncio.wait_for(server.disconnect(), timeout)
        except BaseException:
            pass

    await asyncio.gather(*(one(s) for s in servers))


def main(pipe: Any) -> None:
    """A member process: run the commands read from ``pipe`` on one event loop until ``exit``."""
    asyncio.run(_serve(pipe))


async def _serve(pipe: Any) -> None:
    host = _Host()
    commands = {
        "connect": host.connect,
        "register": host.register,
        "call": host.call,
        "recover": host.recover,
        "members": host.members_now,
        "tally": host.tally,
        "chaos": host.chaos,
    }
    loop = asyncio.get_running_loop()
    requests: asyncio.Queue[tuple[int, str, dict[str, Any]]] = asyncio.Queue()
    sending = threading.Lock()

    def read() -> None:
        while True:
            try:
                request = pipe.recv()
            except (EOFError, OSError):
                request = (-1, "exit", {})
            loop.call_soon_threadsafe(requests.put_nowait, request)
            if request[1] == "exit":
                return

    def reply(request_id: int, ok: bool, result: Any) -> None:
        with sending:
            pipe.send((request_id, ok, result))

    async def run(request_id: int, command: str, arguments: dict[str, Any]) -> None:
        try:
            result = await commands[command](**arguments)
        except Exception:
            await asyncio.to_thread(reply, request_id, False, traceback.format_exc())
        else:
            await asyncio.to_thread(reply, request_id, True, result)

    threading.Thread(target=read, name="crowd-commands", daemon=True).start()
    running: set[asyncio.Task[None]] = set()
    while True:
        request_id, command, arguments = await requests.get()
        if command == "exit":
            break
        task = asyncio.ensure_future(run(request_id, command, arguments))
        running.add(task)
        task.add_done_callback(running.discard)
    for task in running:
        task.cancel()
    if host.traffic is not None:
        await host.traffic.stop()
        await host.traffic.disconnect()
    await host.disconnect()


if __name__ == "__main__":  # python -m tests.crowd_member <fd of its end of the command socket>
    import sys
    from multiprocessing.connection import Connection

    main(Connection(int(sys.argv[1])))
