"""The chaos run's traffic: released hypha-rpc clients of one crowd process, driven by
tests/chaos_run.py through tests/crowd.py (``Crowd.chaos``; the member process,
tests/crowd_member.py, runs one ``Traffic``).

``connect`` forms groups of ``group`` clients that share a workspace (the first connects
anonymously and hands the others a token), so their events reach each other; one client in ten
is rhizomorph's v4 client (``rhizomorph.client``), whose large messages to another v4 client
travel as chunk streams (through the chunking actor when the two sit on workers linked by Ray
calls). Every client registers a public service ``chaos`` and, from ``go`` until ``stop``, calls
the services of clients picked at random from the whole crowd of every process (a fresh
``get_service``, a call through a proxy it got earlier, or a payload over hypha-rpc's 256 KiB
chunk size) and emits events to its workspace.

Every RPC (a lookup is one, so is a call) is counted under the phase it started in:
``completed`` (the right answer), ``wrong`` (another answer), ``rejected`` (an error came back:
the router's or the peer's), ``timed_out`` (hypha-rpc's own ``method_timeout`` gave up: no
answer came) or ``hung`` (not ended ``BOUND`` seconds after it started: followed ``FOLLOW`` seconds more,
to record how it ends, then abandoned).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter, defaultdict
from typing import Any

from tests.crowd_member import disconnect_all

#: Seconds after which a call that has not ended is counted hung.
BOUND = 30.0
#: Seconds a hung call is followed further, to record how it ended (for a diagnosis), before it
#: is abandoned.
FOLLOW = 20.0
#: hypha-rpc's own timer: shorter than ``BOUND``, so a call that gets no answer at all ends as
#: ``timed_out``, and ``hung`` is left for calls that something keeps from ending.
METHOD_TIMEOUT = 20.0
#: Bytes of a large payload: over hypha-rpc's chunk size (256 KiB + 1 KiB), so it is chunked.
LARGE = 600_000
SERVICE = "chaos"
#: The error count of calls that got no answer although the caller's socket never dropped.
STAYED = "timed out, the caller's socket stayed"
EVENT = "chaos-tick"


def classify(exc: BaseException) -> str:
    """What an error says, without the ids that make every message unique."""
    text = str(exc)
    for marker, kind in (
        ("Method call timed out", "timed out"),
        ("gateway worker that was lost", "lost with its worker"),
        ("not connected", "not connected"),
        ("Client disconnected", "client disconnected"),
        ("Connection lost", "connection lost"),
        ("Connection is closed", "connection closed"),
        ("not found", "not found"),
        ("registry", "registry"),
        ("stream was cut", "stream cut"),
        ("reconnection timed out", "reconnection timed out"),
    ):
        if marker in text:
            return kind
    return f"{type(exc).__name__}: {text[:80]}"


class Tally:
    """Outcomes per phase and kind of call, errors per phase, events per phase."""

    def __init__(self) -> None:
        self.calls: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
        self.errors: dict[str, Counter[str]] = defaultdict(Counter)
        self.events: dict[str, Counter[str]] = defaultdict(Counter)
        self.latency: dict[str, list[float]] = defaultdict(list)
        #: The first calls per phase that got no answer (timed out or hung), for a diagnosis.
        self.unanswered: dict[str, list[dict[str, Any]]] = defaultdict(list)

    def report(self) -> dict[str, Any]:
        latency = {}
        for phase, values in self.latency.items():
            values.sort()
            latency[phase] = {
                "p50": round(values[len(values) // 2], 4),
                "p99": round(values[int(len(values) * 0.99)], 4),
                "max": round(values[-1], 4),
            }
        return {
            "calls": {p: {k: dict(c) for k, c in kinds.items()} for p, kinds in self.calls.items()},
            "errors": {p: dict(c) for p, c in self.errors.items()},
            "events": {p: dict(c) for p, c in self.events.items()},
            "latency": latency,
            "unanswered": dict(self.unanswered),
        }


class Member:
    """One connected client of the crowd."""

    def __init__(self, server: Any, v4: bool, group_size: int) -> None:
        self.server = server
        self.v4 = v4
        self.group_size = group_size
        self.sid = f"{server.config.workspace}/{server.config.client_id}:{SERVICE}"
        self.proxies: dict[str, Any] = {}
        self.reconnects = 0  # hypha-rpc fires "connected" after each reconnection (not the first)
        self.reconnected_at: list[float] = []  # time.monotonic() of each

    def socket(self) -> Any:
        """The current WebSocket: hypha-rpc opens a new one for each reconnection."""
        return self.server.rpc._connection._websocket

    def dropped(self, socket: Any) -> bool:
        """Whether the socket the client had then (``socket()``) has dropped since."""
        return self.socket() is not socket or not self.connected()

    def connected(self) -> bool:
        """Connected and done with hypha-rpc's reconnection (services re-registered)."""
        connection = self.server.rpc._connection
        websocket = connection._websocket
        return (
            not connection._closed
            and connection._reconnected_event is None
            and websocket is not None
            and websocket.state.name == "OPEN"
        )


class Traffic:
    """The chaos clients of one crowd process and their calls and events."""

    def __init__(
        self, url: str, count: int, group: int = 10, seed: int = 0, interval: float = 1.5, event_interval: float = 5.0
    ) -> None:
        """``interval``, ``event_interval``: mean seconds between a client's calls, its events."""
        self.url = url
        self.count = count
        self.group = group
        self.rng = random.Random(seed)
        self.interval = interval
        self.event_interval = event_interval
        self.members: list[Member] = []
        self.targets: list[str] = []
        self.v4_targets: list[str] = []
        self.phase = "calm"
        self.phase_started = time.monotonic()
        self.in_flight: Counter[str] = Counter()
        self.tally = Tally()
        self.running = False
        self.loops: list[asyncio.Task[None]] = []

    # -- connecting ----------------------------------------------------------------------------
    async def connect(self) -> None:
        sizes = [min(self.group, self.count - start) for start in range(0, self.count, self.group)]
        groups = await asyncio.gather(*(self._connect_group(size) for size in sizes))
        self.members = [member for group in groups for member in group]

    async def _connect_group(self, size: int) -> list[Member]:
        leader = await self._connect_one(size, v4=False)
        token = await leader.server.generate_token()
        joining = {"workspace": leader.server.config.workspace, "token": token}
        # One v4 client per group of ten (the last), the rest released hypha-rpc clients.
        others = await asyncio.gather(*(self._connect_one(size, v4=(i % 10 == 9), **joining) for i in range(1, size)))
        return [leader, *others]

    async def _connect_one(self, group_size: int, v4: bool, **options: Any) -> Member:
        if v4:
            from rhizomorph.client import connect_to_server
        else:
            from hypha_rpc import connect_to_server
        config = {"server_url": self.url, "method_timeout": METHOD_TIMEOUT, **options}
        server = await connect_to_server(config)
        member = Member(server, v4, group_size)
        await server.register_service(
            {
                "id": SERVICE,
                "config": {"visibility": "public"},
                "echo": lambda value: value,
                "size": lambda data: len(data),
            }
        )
        server.on(EVENT, lambda message: self._received(message))
        # Subscriptions belong to a socket: after hypha-rpc reconnects (it fires "connected" once
        # it has re-registered the services), the client subscribes again, as an application would.
        server.rpc.on("connected", lambda _info: asyncio.ensure_future(self._subscribe(member)))
        await server.subscribe(EVENT)
        return member

    async def _subscribe(self, member: Member) -> None:
        member.reconnects += 1
        member.reconnected_at.append(time.monotonic())
        try:
            await member.server.subscribe(EVENT)
        except Exception as exc:
            self.tally.errors[self.phase]["subscribe: " + classify(exc)] += 1

    def _received(self, message: dict[str, Any]) -> None:
        data = message.get("data") or {}
        self.tally.events[str(data.get("phase"))]["received"] += 1

    # -- traffic -------------------------------------------------------------------------------
    def go(self, targets: list[str], v4_targets: list[str]) -> None:
        self.targets, self.v4_targets = targets, v4_targets
        self.running = True
        for member in self.members:
            self.loops.append(asyncio.ensure_future(self._calls(member)))
            self.loops.append(asyncio.ensure_future(self._events(member)))

    async def _calls(self, member: Member) -> None:
        others = [t for t in self.targets if t != member.sid]
        big_targets = [t for t in self.v4_targets if t != member.sid]
        await asyncio.sleep(self.rng.uniform(0, self.interval))
        while self.running:
            roll = self.rng.random()
            if member.v4 and big_targets and roll < 0.3:
                kind, target = "large", self.rng.choice(big_targets)
            else:
                kind, target = ("lookup" if roll < 0.5 else "call"), self.rng.choice(others)
            # Each RPC is counted on its own: a call to a target without a proxy yet is a lookup
            # (a fresh get_service: the manager, then the registry), then the call.
            if kind == "lookup" or target not in member.proxies:
                await self._call(member, "lookup", target)
            if kind != "lookup" and target in member.proxies:
                await self._call(member, kind, target)
            await asyncio.sleep(self.rng.expovariate(1 / self.interval))

    async def _call(self, member: Member, kind: str, target: str) -> None:
        phase = self.phase
        nonce = self.rng.getrandbits(48)
        started = time.monotonic()
        socket = member.socket()
        self.in_flight[phase] += 1
        task = asyncio.ensure_future(self._operation(member, kind, target, nonce))
        try:
            done, _ = await asyncio.wait({task}, timeout=BOUND)
        finally:
            self.in_flight[phase] -= 1
        counts = self.tally.calls[phase][kind]
        if not done:
            counts["hung"] += 1
            self.tally.errors[phase][f"{kind}: hung"] += 1
            await asyncio.wait({task}, timeout=FOLLOW)
            if task.done():
                then = repr(task.exception()) if task.exception() else f"answered {task.result()!r}"
            else:
                task.cancel()
                then = "no end"
            ended = round(time.monotonic() - started, 2)
            self._unanswered(phase, member, kind, target, started, socket, f"hung; then {then} after {ended} s")
            return
        exc = task.exception()
        if exc is not None:
            kind_of_error = classify(exc)
            counts["timed_out" if kind_of_error == "timed out" else "rejected"] += 1
            self.tally.errors[phase][f"{kind}: {kind_of_error}"] += 1
            if kind_of_error == "timed out":
                if not member.dropped(socket):  # not a call lost with the caller's own socket
                    self.tally.errors[phase][STAYED] += 1
                self._unanswered(phase, member, kind, target, started, socket, str(exc)[:160])
            return
        expected = LARGE if kind == "large" else nonce
        counts["completed" if task.result() == expected else "wrong"] += 1
        self.tally.latency[phase].append(time.monotonic() - started)

    def _unanswered(
        self, phase: str, member: Member, kind: str, target: str, started: float, socket: Any, what: str
    ) -> None:
        # The first 40 of a phase, and every hung one.
        if len(self.tally.unanswered[phase]) < 40 or what.startswith("hung"):
            self.tally.unanswered[phase].append(
                {
                    "kind": kind,
                    "caller": member.sid,
                    "target": target,
                    "caller_v4": member.v4,
                    "caller_socket_dropped": member.dropped(socket),
                    "started_after_phase_s": round(started - self.phase_started, 2),
                    "caller_reconnected_after_s": [round(t - started, 2) for t in member.reconnected_at if t > started],
                    "what": what,
                }
            )

    async def switch(self, phase: str) -> float:
        """Label new calls ``phase``; returns once the calls of earlier phases have ended."""
        self.phase, self.phase_started = phase, time.monotonic()
        while (
            any(n for p, n in self.in_flight.items() if p != phase)
            and time.monotonic() - self.phase_started < BOUND + 5
        ):
            await asyncio.sleep(0.05)
        return round(time.monotonic() - self.phase_started, 2)

    async def _operation(self, member: Member, kind: str, target: str, nonce: int) -> Any:
        if kind == "lookup":
            # A failed lookup leaves no proxy: the next call to the target looks it up again.
            member.proxies.pop(target, None)
            service = member.proxies[target] = await member.server.get_service(target)
            return nonce if service.get("id") == target else None  # another service: wrong
        service = member.proxies[target]
        if kind == "large":
            return await service.size(self.rng.randbytes(LARGE))
        return await service.echo(nonce)

    async def _events(self, member: Member) -> None:
        await asyncio.sleep(self.rng.uniform(0, self.event_interval))
        while self.running:
            phase = self.phase
            events = self.tally.events[phase]
            events["emitted"] += 1
            events["expected"] += member.group_size  # every member of the group subscribes, the sender too
            try:
                result = member.server.emit({"type": EVENT, "to": "*", "data": {"phase": phase}})
                if asyncio.isfuture(result) or asyncio.iscoroutine(result):
                    await asyncio.wait_for(result, BOUND)
            except Exception as exc:
                events["emit_failed"] += 1
                self.tally.errors[phase]["emit: " + classify(exc)] += 1
            await asyncio.sleep(self.rng.expovariate(1 / self.event_interval))

    async def stop(self) -> None:
        """No new calls; the ones under way end (each within ``BOUND``)."""
        self.running = False
        await asyncio.gather(*self.loops, return_exceptions=True)

    async def disconnect(self) -> None:
        await disconnect_all([m.server for m in self.members], 10)

    def status(self) -> dict[str, Any]:
        up = [m.sid for m in self.members if m.connected()]
        down = [m.sid for m in self.members if not m.connected()]
        reconnects = sum(m.reconnects for m in self.members)
        return {"connected": up, "down": down, "reconnects": reconnects}
