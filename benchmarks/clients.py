"""Load generators: the same rigs driven by raw v3 frames or by the released hypha-rpc client.

A rig is a set of connected clients for one case: an *echo rig* (one provider, N callers) or an
*event rig* (one publisher, N receivers in the publisher's workspace). ``measure.py`` times
what the rigs do; the rigs only move messages and check them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import sys
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from subprocess import PIPE
from typing import Any

import psutil

from benchmarks.scenarios import payload_size
from benchmarks.wire import RawPeer, pack

EVENT_TYPE = "bench_event"
ECHO_SERVICE = "bench-echo"
CONNECT_PARALLEL = 16
CLOSE_TIMEOUT = 10.0
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EventSink:
    """Counts event deliveries (by message index) and their one-way latency, across all receivers."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = sizes
        self.reset(0)

    def reset(self, expected: int) -> None:
        self.expected = expected
        self.delivered = 0
        self.bytes = 0
        self.latencies: list[float] = []
        self.last_arrival = 0.0
        self.done = asyncio.Event()
        if expected == 0:
            self.done.set()

    def record(self, index: int, sent_at: float) -> None:
        now = time.perf_counter()
        self.delivered += 1
        self.bytes += self.sizes[index]
        self.latencies.append(now - sent_at)
        self.last_arrival = now
        if self.delivered >= self.expected:
            self.done.set()


class EchoRig(ABC):
    callers: int

    @abstractmethod
    async def call(self, caller: int, index: int) -> bool:
        """One echo call of message ``index`` from caller ``caller``; ``True`` if the echo is intact."""

    @abstractmethod
    async def close(self) -> None: ...


class EventRig(ABC):
    receivers: int
    sink: EventSink

    @abstractmethod
    async def publish(self, index: int) -> None:
        """Send event ``index`` (to the receiver, or to ``*`` for fan-out); do not wait for delivery."""

    @abstractmethod
    async def close(self) -> None: ...


class ClientKind(ABC):
    name: str
    #: Largest event payload the client can receive, bytes (None: no limit).
    max_event_payload: int | None = None

    @abstractmethod
    async def echo_rig(self, url: str, payloads: list[Any], callers: int, apart: bool = False) -> EchoRig:
        """A provider and ``callers`` callers; with ``apart``, a single caller sits on another worker."""

    @abstractmethod
    async def event_rig(
        self, url: str, payloads: list[Any], receivers: int, broadcast: bool, apart: bool = False
    ) -> EventRig:
        """A publisher and receivers; with ``apart``, a single receiver sits on another worker."""


async def event_burst(sender: Any, target: Any, count: int, payload: bytes, event_type: str = "burst") -> float:
    """hypha-rpc clients: ``sender`` fires ``count`` point-to-point events at ``target`` at once
    (as a busy producer does); returns events/s until the last one arrived."""
    address = f"{target.config.workspace}/{target.config.client_id}"
    received, done = 0, asyncio.Event()

    def on_event(_: dict) -> None:
        nonlocal received
        received += 1
        if received == count:
            done.set()

    target.on(event_type, on_event)
    started = time.perf_counter()
    results = [sender.emit({"type": event_type, "to": address, "data": payload}) for _ in range(count)]
    await asyncio.gather(*(r for r in results if asyncio.iscoroutine(r) or isinstance(r, asyncio.Future)))
    await asyncio.wait_for(done.wait(), 120)
    return count / (time.perf_counter() - started)


async def connect_many(
    factory: Callable[[], Awaitable[Any]], count: int, close: Callable[[Any], Awaitable[None]]
) -> list[Any]:
    """Open ``count`` connections, a few at a time; on any failure close those that opened, then raise."""
    gate = asyncio.Semaphore(CONNECT_PARALLEL)

    async def one() -> Any:
        async with gate:
            return await factory()

    results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await close_all([r for r in results if not isinstance(r, BaseException)], close)
        raise failures[0]
    return list(results)


async def connect_apart(
    factory: Callable[[], Awaitable[Any]],
    worker_of: Callable[[Any], str | None],
    other: Any,
    close: Callable[[Any], Awaitable[None]],
    attempts: int = 20,
) -> Any:
    """Connect a client held by another gateway worker than ``other`` (when the server has several).

    A point-to-point pair on a multi-worker rhizomorph then always crosses the Ray hop, instead of
    by the kernel's draw. Servers that do not say which worker holds a client are taken as is.
    """
    avoid = worker_of(other)
    client = await factory()
    if avoid is None:
        return client
    for _ in range(attempts):
        if worker_of(client) != avoid:
            return client
        await close(client)
        client = await factory()
    return client  # the kernel kept choosing the same worker


async def close_all(clients: Sequence[Any], close: Callable[[Any], Awaitable[None]]) -> None:
    async def one(client: Any) -> None:
        try:
            await asyncio.wait_for(close(client), CLOSE_TIMEOUT)
        except Exception:
            pass

    await asyncio.gather(*(one(c) for c in clients))


# -- raw v3 frames ---------------------------------------------------------------------------------
async def _raw_peer(url: str, **auth: Any) -> RawPeer:
    """A raw peer with a name of its own and its reader task running."""
    peer = await RawPeer.connect(url, client_id=f"raw-{uuid.uuid4().hex[:12]}", **auth)
    return peer.listen()


async def _close_raw(peer: RawPeer) -> None:
    await peer.close()


def _raw_worker(peer: RawPeer) -> str | None:
    return peer.info.get("rhizomorph_worker")


class RawEchoRig(EchoRig):
    def __init__(self, provider: RawPeer, callers: list[RawPeer], extras: list[bytes]) -> None:
        self.provider, self.peers, self.extras = provider, callers, extras
        self.callers = len(callers)
        provider.listen(on_frame=self._echo_back)

    def _echo_back(self, header: dict[str, Any], frame: bytes, offset: int) -> None:
        session = header.get("session")
        if session:  # the echo: resolve with the request's extra segment, bytes untouched
            reply = {"type": "method", "to": header["from"], "method": f"{session}.resolve"}
            asyncio.ensure_future(self.provider.send(reply, frame[offset:]))

    async def call(self, caller: int, index: int) -> bool:
        kind, reply, offset = await self.peers[caller].request(
            self.provider.address, f"services.{ECHO_SERVICE}.echo", self.extras[index]
        )
        return kind == "resolve" and len(reply) - offset == len(self.extras[index])

    async def close(self) -> None:
        await close_all([self.provider, *self.peers], _close_raw)


class RawEventRig(EventRig):
    def __init__(
        self, publisher: RawPeer, receivers: list[RawPeer], extras: list[bytes], sink: EventSink, broadcast: bool
    ) -> None:
        self.publisher, self.peers, self.extras, self.sink = publisher, receivers, extras, sink
        self.receivers = len(receivers)
        self.target = "*" if broadcast else receivers[0].address
        for peer in receivers:
            peer.listen(on_frame=self._on_frame)

    def _on_frame(self, header: dict[str, Any], frame: bytes, offset: int) -> None:
        if header.get("type") == EVENT_TYPE:
            self.sink.record(header["i"], header["t0"])

    async def publish(self, index: int) -> None:
        await self.publisher.send(
            {"type": EVENT_TYPE, "to": self.target, "i": index, "t0": time.perf_counter()}, self.extras[index]
        )

    async def close(self) -> None:
        await close_all([self.publisher, *self.peers], _close_raw)


class RawClients(ClientKind):
    """Bare WebSocket clients writing pre-encoded v3 frames: measures the server, not the client."""

    name = "raw"

    async def echo_rig(self, url: str, payloads: list[Any], callers: int, apart: bool = False) -> EchoRig:
        extras = [pack({"args": [p]}) for p in payloads]
        provider = await _raw_peer(url)
        try:
            if callers == 1 and apart:
                peers = [await connect_apart(lambda: _raw_peer(url), _raw_worker, provider, _close_raw)]
            else:
                peers = await connect_many(lambda: _raw_peer(url), callers, _close_raw)
        except BaseException:
            await provider.close()
            raise
        return RawEchoRig(provider, peers, extras)

    async def event_rig(
        self, url: str, payloads: list[Any], receivers: int, broadcast: bool, apart: bool = False
    ) -> EventRig:
        extras = [pack({"data": p}) for p in payloads]
        publisher = await _raw_peer(url)
        try:
            token = await publisher.call_manager("generate_token")
            connect = lambda: _raw_peer(url, workspace=publisher.workspace, token=token)  # noqa: E731
            if broadcast or not apart:
                peers = await connect_many(connect, receivers, _close_raw)
            else:
                peers = [await connect_apart(connect, _raw_worker, publisher, _close_raw)]
            if broadcast:
                await asyncio.gather(*(p.call_manager("subscribe", EVENT_TYPE) for p in peers))
        except BaseException:
            await publisher.close()
            raise
        return RawEventRig(publisher, peers, extras, EventSink([payload_size(p) for p in payloads]), broadcast)


# -- the released hypha-rpc client ----------------------------------------------------------------
async def _close_hypha(server: Any) -> None:
    await server.disconnect()


def _hypha_worker(server: Any) -> str | None:
    return getattr(server.config, "rhizomorph_worker", None)


def _same(a: Any, b: Any) -> bool:
    return a == b if isinstance(a, (bytes, bytearray)) else payload_size(a) == payload_size(b)


class HyphaEchoRig(EchoRig):
    def __init__(self, provider: Any, clients: list[Any], services: list[Any], payloads: list[Any]) -> None:
        self.provider, self.clients, self.services, self.payloads = provider, clients, services, payloads
        self.callers = len(services)

    async def call(self, caller: int, index: int) -> bool:
        payload = self.payloads[index]
        return _same(await self.services[caller].echo(payload), payload)

    async def close(self) -> None:
        await close_all([*self.clients, self.provider], _close_hypha)


class HyphaEventRig(EventRig):
    def __init__(
        self, publisher: Any, clients: list[Any], payloads: list[Any], sink: EventSink, broadcast: bool
    ) -> None:
        self.publisher, self.clients, self.payloads, self.sink = publisher, clients, payloads, sink
        self.receivers = len(clients)
        first = clients[0].config
        self.target = "*" if broadcast else f"{first.workspace}/{first.client_id}"
        for client in clients:
            client.on(EVENT_TYPE, self._on_event)

    def _on_event(self, message: dict[str, Any]) -> None:
        data = message["data"]
        self.sink.record(data["i"], data["t0"])

    async def publish(self, index: int) -> None:
        sent = self.publisher.emit(
            {
                "type": EVENT_TYPE,
                "to": self.target,
                "data": {"i": index, "t0": time.perf_counter(), "payload": self.payloads[index]},
            }
        )
        if inspect.isawaitable(sent):
            await sent

    async def close(self) -> None:
        await close_all([*self.clients, self.publisher], _close_hypha)


class HyphaRpcClients(ClientKind):
    """The released hypha-rpc Python client: what users see, client-side cost included."""

    name = "hypha-rpc"
    #: ``emit`` never chunks: the event is one frame, and the Python client refuses frames over
    #: ~500 KB (its msgpack buffer; websockets' 1 MiB limit), dropping the connection.
    max_event_payload = 400_000

    def __init__(self, method_timeout: float = 60.0) -> None:
        self.method_timeout = method_timeout

    async def _connect(self, url: str, **options: Any) -> Any:
        from hypha_rpc import connect_to_server

        return await connect_to_server({"server_url": url, "method_timeout": self.method_timeout, **options})

    async def echo_rig(self, url: str, payloads: list[Any], callers: int, apart: bool = False) -> EchoRig:
        provider = await self._connect(url)
        clients: list[Any] = []
        try:
            await provider.register_service(
                {"id": ECHO_SERVICE, "config": {"visibility": "public"}, "echo": lambda x: x}
            )
            service_id = f"{provider.config.workspace}/{provider.config.client_id}:{ECHO_SERVICE}"
            if callers == 1 and apart:
                clients = [await connect_apart(lambda: self._connect(url), _hypha_worker, provider, _close_hypha)]
            else:
                clients = await connect_many(lambda: self._connect(url), callers, _close_hypha)
            services = await asyncio.gather(*(c.get_service(service_id) for c in clients))
        except BaseException:
            await close_all([*clients, provider], _close_hypha)
            raise
        return HyphaEchoRig(provider, clients, list(services), payloads)

    async def event_rig(
        self, url: str, payloads: list[Any], receivers: int, broadcast: bool, apart: bool = False
    ) -> EventRig:
        publisher = await self._connect(url)
        clients: list[Any] = []
        try:
            workspace = publisher.config.workspace
            token = await publisher.generate_token()
            connect = lambda: self._connect(url, workspace=workspace, token=token)  # noqa: E731
            if broadcast or not apart:
                clients = await connect_many(connect, receivers, _close_hypha)
            else:
                clients = [await connect_apart(connect, _hypha_worker, publisher, _close_hypha)]
            if broadcast:
                await asyncio.gather(*(c.subscribe(EVENT_TYPE) for c in clients))
        except BaseException:
            await close_all([*clients, publisher], _close_hypha)
            raise
        return HyphaEventRig(publisher, clients, payloads, EventSink([payload_size(p) for p in payloads]), broadcast)


class V4Clients(HyphaRpcClients):
    """rhizomorph's v4 client (``rhizomorph.client``): hypha-rpc's RPC layer on a batching socket,
    large messages to v4 peers as chunk streams. Only rhizomorph speaks v4. Events keep
    hypha-rpc's one-frame ``emit``, hence the same payload limit. ``batching=False`` turns the
    client's own send-side batching off (``BatchPolicy(enabled=False)``); ``wait`` is its batches'
    ``BatchPolicy.wait``."""

    name = "v4"

    def __init__(self, method_timeout: float = 60.0, batching: bool = True, wait: str = "socket") -> None:
        super().__init__(method_timeout)
        self.batching, self.wait = batching, wait

    async def _connect(self, url: str, **options: Any) -> Any:
        from rhizomorph.client import connect_to_server
        from rhizomorph.protocol.batching import BatchPolicy

        config = {"server_url": url, "method_timeout": self.method_timeout, **options}
        return await connect_to_server(config, batching=BatchPolicy(enabled=self.batching, wait=self.wait))


# -- a provider in a process of its own ------------------------------------------------------------
PROVIDER_START_TIMEOUT = 60.0


class ProviderProcess:
    """An echo provider (``benchmarks/echo_provider.py``) in a process of its own, so that its CPU
    is measured apart from the caller's. It serves until ``stop()`` closes its stdin."""

    def __init__(self, process: asyncio.subprocess.Process, info: dict[str, Any]) -> None:
        self.process, self.info = process, info
        self.service_id: str = info["service_id"]
        self.worker: str | None = info.get("worker")
        self._probe = psutil.Process(process.pid)

    @classmethod
    async def start(cls, url: str, client: str, batching: bool = True, wait: str = "socket") -> ProviderProcess:
        args = [
            sys.executable,
            "-m",
            "benchmarks.echo_provider",
            "--url",
            url,
            "--client",
            client,
            "--batch-wait",
            wait,
        ]
        process = await asyncio.create_subprocess_exec(
            *args, *([] if batching else ["--no-batching"]), stdin=PIPE, stdout=PIPE, cwd=_REPO_ROOT
        )
        try:
            line = await asyncio.wait_for(process.stdout.readline(), PROVIDER_START_TIMEOUT)  # type: ignore[union-attr]
            info = json.loads(line) if line.startswith(b"{") else None
            if not info:
                raise RuntimeError(f"echo provider did not start: {line!r}")
        except BaseException:
            process.kill()
            await process.wait()
            raise
        return cls(process, info)

    def cpu_seconds(self) -> float:
        try:
            times = self._probe.cpu_times()
        except psutil.NoSuchProcess:
            return 0.0
        return times.user + times.system

    async def stop(self) -> None:
        if self.process.returncode is not None:
            return
        self.process.stdin.close()  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(self.process.wait(), CLOSE_TIMEOUT)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class SplitEchoRig(EchoRig):
    """One caller in this process calling the echo method of a provider in another process."""

    def __init__(self, provider: ProviderProcess, caller: Any, service: Any, payloads: list[Any]) -> None:
        self.provider, self.caller, self.service, self.payloads = provider, caller, service, payloads
        self.callers = 1

    async def call(self, caller: int, index: int) -> bool:
        payload = self.payloads[index]
        return _same(await self.service.echo(payload), payload)

    async def close(self) -> None:
        await close_all([self.caller], _close_hypha)
        await self.provider.stop()


async def split_echo_rig(kind: HyphaRpcClients, url: str, payloads: list[Any], apart: bool = False) -> SplitEchoRig:
    """A provider process and a caller here, both clients of ``kind`` (v4: with its batching setting);
    with ``apart``, the caller sits on another gateway worker than the provider."""
    provider = await ProviderProcess.start(
        url, kind.name, getattr(kind, "batching", True), getattr(kind, "wait", "socket")
    )
    caller = None
    try:

        def worker_of(client: Any) -> str | None:
            return provider.worker if client is provider else _hypha_worker(client)

        connect = lambda: kind._connect(url)  # noqa: E731
        caller = await (connect_apart(connect, worker_of, provider, _close_hypha) if apart else connect())
        service = await caller.get_service(provider.service_id)
    except BaseException:
        if caller is not None:
            await close_all([caller], _close_hypha)
        await provider.stop()
        raise
    return SplitEchoRig(provider, caller, service, payloads)


CLIENT_KINDS: dict[str, Callable[[], ClientKind]] = {"raw": RawClients, "hypha-rpc": HyphaRpcClients, "v4": V4Clients}
