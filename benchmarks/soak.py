"""Soak test: many raw v3 clients sending sequence-numbered messages to each other for a while.

    python benchmarks/soak.py [--clients 1000] [--rate 10] [--seconds 60] [--workers 2]
                              [--procs 2] [--payload 64] [--grace 20]

Starts an embedded Ray and a router (``Deployment(Config(port=0, workers=N))``) in this process,
then ``--procs`` client processes holding ``--clients`` bare WebSocket clients between them
(``LeanClient``: websockets' sans-I/O protocol on an asyncio transport, no task per connection,
so a 2-core machine can drive a thousand of them). Client ``i`` sends ``--rate`` messages per
second for ``--seconds`` seconds to client ``(i + clients // 2 + 1) % clients`` (a permutation:
every client receives from exactly one sender, usually one in another client process and,
with 2 workers, on the other worker half of the time). Sends are spread evenly over each
1/rate period (client phases are staggered), so the router sees a steady clients * rate msgs/s.

A message is a v3 frame ``msgpack(header) + msgpack(extra)``: the header is ``{"type":
"method", "to": <peer address>, "method": "soak.tick"}`` (no session: fire-and-forget), the
extra segment ``{"pad": <payload bytes>, "soak": <16 bytes: sender index, sequence number,
send time (CLOCK_MONOTONIC ns, one clock for every process of the machine)>}``. The router
re-packs the header and leaves the extra segment untouched, so a receiver reads the last 16
bytes of the frame. Each receiver checks, per sender: every sequence number arrives exactly
once (a bitmap), in order (never below the highest seen), and from the expected sender.

Report: messages sent / received / lost / duplicates / out of order / misrouted, one-way
latency p50/p99/max (send to receive), how late the load generator was against its schedule,
gateway worker RSS (psutil, ``Deployment.worker_info`` pids) and the registry's before and
after, their CPU over the send phase, and the client processes' CPU (near 100 % of a core
each: the load generator, not the router, was the limit). Exits 1 if anything was lost,
duplicated, reordered or misrouted.

Bounded: exactly clients * rate * seconds messages, then at most ``--grace`` seconds of
draining; every phase has a timeout. Loopback only (127.0.0.1). Stops every process it
started: the client processes (joined, killed if they hang), the router and the embedded Ray.
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import math
import multiprocessing as mp
import os
import resource
import struct
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgpack
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.uri import parse_uri

try:
    from benchmarks.contenders import actor_pid
except ImportError:  # run as a script: benchmarks/ is sys.path[0]
    from contenders import actor_pid  # type: ignore[no-redef]

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# -- the message tail: msgpack map {"pad": <bin>, "soak": <bin 16>}, the 16 bytes last -----------
TAIL = struct.Struct("<IIQ")  # sender index, sequence number, send time (monotonic ns)
MARK = msgpack.packb("soak") + b"\xc4" + bytes([TAIL.size])  # the key, then a bin8 header of 16


def extra_prefix(payload: int) -> bytes:
    return b"\x82" + msgpack.packb("pad") + msgpack.packb(b"x" * payload, use_bin_type=True) + MARK


def raise_nofile() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# -- a lean client ---------------------------------------------------------------------------------
class LeanClient(asyncio.Protocol):
    """One v3 client: WebSocket handshake (websockets' sans-I/O ClientProtocol), the JSON auth
    frame, ``connection_info``; then binary frames out with ``send`` and in through
    ``on_binary``, called from ``data_received`` (no reader task). Pings are answered."""

    def __init__(self, url: str, on_binary: Callable[[bytes], None] | None = None) -> None:
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.on_binary = on_binary
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.info: asyncio.Future = loop.create_future()
        self.lost: asyncio.Future = loop.create_future()
        self.address = ""
        self.texts = 0  # text frames after connection_info (errors, pongs)
        self.last_text = ""

    @classmethod
    async def connect(
        cls, url: str, on_binary: Callable[[bytes], None] | None = None, timeout: float = 30.0
    ) -> LeanClient:
        parts = urlsplit(url)
        client = cls(url, on_binary)
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(loop.create_connection(lambda: client, parts.hostname, parts.port), timeout)
        try:
            info = await asyncio.wait_for(client.info, timeout)
        except BaseException:
            client.abort()
            raise
        client.address = f"{info['workspace']}/{info['client_id']}"
        return client

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        protocol.receive_data(data)
        for event in protocol.events_received():
            if isinstance(event, Frame):
                if event.opcode is Opcode.BINARY:
                    if self.on_binary is not None:
                        self.on_binary(event.data)
                elif event.opcode is Opcode.TEXT:
                    self._text(bytes(event.data).decode())
            elif protocol.handshake_exc is not None:  # the HTTP response refused the upgrade
                self._fail(ConnectionError(f"WebSocket handshake failed: {protocol.handshake_exc}"))
            else:  # upgraded: the auth frame (anonymous, new client)
                protocol.send_text(
                    json.dumps(
                        {"client_id": None, "workspace": None, "token": None, "reconnection_token": None}
                    ).encode()
                )
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"connection lost: {exc or self.protocol.close_code}"))
        if not self.lost.done():
            self.lost.set_result(self.protocol.close_code)

    def _text(self, text: str) -> None:
        if not self.info.done():
            message = json.loads(text)
            if message.get("type") == "connection_info":
                self.info.set_result(message)
            else:
                self._fail(ConnectionError(f"handshake refused: {message}"))
            return
        self.texts += 1
        self.last_text = text[:200]

    def _fail(self, exc: Exception) -> None:
        if not self.info.done():
            self.info.set_exception(exc)
            self.info.exception()  # retrieved: no "never retrieved" warning
            if self.transport is not None and not self.lost.done():
                self.transport.abort()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for chunk in self.protocol.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    # API
    def send(self, frame: bytes) -> None:
        self.protocol.send_binary(frame)
        self._flush()

    @property
    def closed(self) -> bool:
        return self.lost.done()

    def close(self) -> None:
        """Start the closing handshake (code 1000)."""
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            try:
                self.protocol.send_close(1000)
            except Exception:
                pass
            self._flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


async def connect_many(
    url: str,
    count: int,
    concurrency: int,
    on_binary: Callable[[int], Callable[[bytes], None] | None] | None = None,
    attempts: int = 3,
) -> list[LeanClient]:
    """Open ``count`` clients, ``concurrency`` handshakes at a time (each retried a few times)."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> LeanClient:
        async with gate:
            for attempt in range(attempts):
                try:
                    return await LeanClient.connect(url, on_binary(i) if on_binary else None)
                except (TimeoutError, OSError, ConnectionError):
                    if attempt == attempts - 1:
                        raise
                    await asyncio.sleep(0.5 * (attempt + 1))
        raise AssertionError("unreachable")

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def close_all(clients: list[LeanClient], timeout: float = 10.0) -> None:
    for client in clients:
        client.close()
    pending = [c.lost for c in clients if not c.closed]
    if pending:
        await asyncio.wait(pending, timeout=timeout)
    for client in clients:
        if not client.closed:
            client.abort()
    await asyncio.sleep(0)


# -- statistics ------------------------------------------------------------------------------------
def percentile(ordered: list[float] | array.array, q: float) -> float:
    """Nearest rank, on sorted values."""
    if not len(ordered):
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Receiver:
    """What one client got from its one sender."""

    __slots__ = ("sender", "seen", "unique", "duplicates", "out_of_order", "misrouted", "highest")

    def __init__(self, sender: int, count: int) -> None:
        self.sender = sender
        self.seen = bytearray(count)
        self.unique = self.duplicates = self.out_of_order = self.misrouted = 0
        self.highest = -1


# -- a client process ------------------------------------------------------------------------------
def client_process(
    pipe: Any,
    counters: Any,
    slot: int,
    indices: list[int],
    total: int,
    url: str,
    rate: float,
    seconds: float,
    payload: int,
    grace: float,
    concurrency: int,
    nice: int,
) -> None:
    raise_nofile()
    if nice > os.nice(0):
        os.nice(nice - os.nice(0))
    try:
        asyncio.run(_client_main(pipe, counters, slot, indices, total, url, rate, seconds, payload, grace, concurrency))
    except BaseException as exc:  # the parent reports it
        try:
            pipe.send({"error": f"{type(exc).__name__}: {exc}"})
        except Exception:
            pass
        raise


async def _client_main(
    pipe: Any,
    counters: Any,
    slot: int,
    indices: list[int],
    total: int,
    url: str,
    rate: float,
    seconds: float,
    payload: int,
    grace: float,
    concurrency: int,
) -> None:
    loop = asyncio.get_running_loop()
    count = int(round(rate * seconds))
    sender_of = {i: (i - (total // 2 + 1)) % total for i in indices}  # inverse of the peer map
    receivers = {i: Receiver(sender_of[i], count) for i in indices}
    latencies = array.array("d")
    other_frames: list[bytes] = []
    tail_size, mark = TAIL.size, MARK
    unpack_tail, now_ns = TAIL.unpack_from, time.monotonic_ns
    received = [0]

    def on_binary_for(local: int) -> Callable[[bytes], None]:
        state = receivers[indices[local]]
        seen = state.seen
        expected = state.sender

        def on_binary(data: bytes) -> None:
            arrived = now_ns()
            end = len(data) - tail_size
            if end < len(mark) or data[end - len(mark) : end] != mark:
                if len(other_frames) < 20:
                    other_frames.append(bytes(data[:300]))
                return
            sender, seq, sent_ns = unpack_tail(data, end)
            received[0] += 1
            if sender != expected or seq >= count:
                state.misrouted += 1
                return
            if seen[seq]:
                state.duplicates += 1
                return
            seen[seq] = 1
            state.unique += 1
            if seq < state.highest:
                state.out_of_order += 1
            else:
                state.highest = seq
            latencies.append((arrived - sent_ns) / 1e6)

        return on_binary

    clients = await connect_many(url, len(indices), concurrency, on_binary_for)
    pipe.send({"addresses": {i: c.address for i, c in zip(indices, clients)}})
    go = await loop.run_in_executor(None, pipe.recv)
    addresses: dict[int, str] = go["addresses"]
    start_at: float = go["start_at"]

    # Who sends when: client i's message k is due at start_at + phase_i + k / rate.
    period = 1.0 / rate
    prefix = extra_prefix(payload)
    plan = []
    for local, i in enumerate(indices):
        peer = (i + total // 2 + 1) % total
        header = msgpack.packb({"type": "method", "to": addresses[peer], "method": "soak.tick"}, use_bin_type=True)
        plan.append(((i / total) * period, i, header + prefix, clients[local]))
    plan.sort(key=lambda p: p[0])
    sent = {i: 0 for i in indices}
    lag = array.array("d")

    async def publish_counters() -> None:
        while True:
            counters[slot * 3] = sum(sent.values())
            counters[slot * 3 + 1] = received[0]
            counters[slot * 3 + 2] = sum(c.closed for c in clients)
            await asyncio.sleep(0.2)

    reporter = asyncio.ensure_future(publish_counters())
    cpu_before = os.times()
    pack_tail = TAIL.pack
    last_yield = loop.time()
    for k in range(count):
        base = start_at + k * period
        for phase, i, head, client in plan:
            due = base + phase
            now = loop.time()
            if due - now > 0.002:
                await asyncio.sleep(due - now)
                now = last_yield = loop.time()
            elif now - last_yield > 0.005:  # running behind: still let the replies in
                await asyncio.sleep(0)
                now = last_yield = loop.time()
            if client.closed:
                continue
            client.send(head + pack_tail(i, k, now_ns()))
            sent[i] += 1
            lag.append(max(0.0, now - due) * 1000)
    send_end = loop.time()

    # Drain: until every receiver has its sender's whole count, or the grace period is over.
    deadline = start_at + seconds + grace
    while loop.time() < deadline and any(r.unique < count for r in receivers.values()):
        await asyncio.sleep(0.05)
    drained = loop.time()
    cpu_after = os.times()
    counters[slot * 3], counters[slot * 3 + 1] = sum(sent.values()), received[0]
    reporter.cancel()
    closed_early = sum(c.closed for c in clients)
    texts = sum(c.texts for c in clients)
    sample_text = next((c.last_text for c in clients if c.last_text), "")
    await close_all(clients)
    lag_sorted = sorted(lag)
    pipe.send(
        {
            "sent": sent,
            "receivers": {
                i: (r.sender, r.unique, r.duplicates, r.out_of_order, r.misrouted) for i, r in receivers.items()
            },
            "latencies": latencies.tobytes(),
            "lag_p99_ms": percentile(lag_sorted, 0.99),
            "lag_max_ms": lag_sorted[-1] if lag_sorted else 0.0,
            "send_end": send_end,
            "drained": drained,
            "cpu_s": (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system),
            "closed_early": closed_early,
            "texts": texts,
            "sample_text": sample_text,
            "other_frames": [repr(f[:120]) for f in other_frames[:3]],
        }
    )


# -- the router side -------------------------------------------------------------------------------
class Probe:
    """RSS and CPU seconds of named processes."""

    def __init__(self, pids: dict[str, int]) -> None:
        import psutil

        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}

    def rss_mb(self) -> dict[str, float]:
        out = {}
        for name, p in self.processes.items():
            try:
                out[name] = p.memory_info().rss / 2**20
            except Exception:
                out[name] = math.nan
        return out

    def cpu_s(self) -> dict[str, float]:
        out = {}
        for name, p in self.processes.items():
            try:
                t = p.cpu_times()
                out[name] = t.user + t.system
            except Exception:
                out[name] = math.nan
        return out


def process_cpu() -> dict[int, tuple[str, float]]:
    """CPU seconds of every process on the machine, by pid (name, user + system)."""
    import psutil

    out = {}
    for p in psutil.process_iter(["name", "cpu_times"]):
        times = p.info["cpu_times"]
        if times is not None:
            out[p.pid] = (p.info["name"] or "?", times.user + times.system)
    return out


def busiest_others(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    mine: set[int],
    elapsed: float,
    top: int = 6,
) -> str:
    """The processes outside this run that used the most CPU meanwhile (by name)."""
    by_name: dict[str, float] = {}
    for pid, (name, cpu) in after.items():
        if pid in mine:
            continue
        by_name[name] = by_name.get(name, 0.0) + cpu - before.get(pid, (name, 0.0))[1]  # new: all of it
    ranked = sorted(by_name.items(), key=lambda kv: -kv[1])[:top]
    return ", ".join(f"{name} {cpu / elapsed * 100:.0f}%" for name, cpu in ranked if cpu > 0.01 * elapsed)


def router_queued(deployment: Any) -> int | str:
    """Frames waiting in the workers' per-target delivery queues (their stats), or '?'."""
    try:
        return sum(t.get("depth", 0) for w in deployment.stats() for t in w.get("targets", {}).values())
    except Exception:
        return "?"


def fmt_mb(values: dict[str, float]) -> str:
    return ", ".join(f"{name} {mb:.1f}" for name, mb in values.items())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=10.0, help="messages per second per client")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the send phase")
    parser.add_argument("--workers", type=int, default=2, help="gateway workers")
    parser.add_argument("--procs", type=int, default=2, help="client processes")
    parser.add_argument("--payload", type=int, default=64, help="padding bytes per message")
    parser.add_argument("--grace", type=float, default=20.0, help="max seconds to drain after the send phase")
    parser.add_argument("--concurrency", type=int, default=50, help="handshakes in flight per client process")
    parser.add_argument("--timeout", type=float, default=300.0, help="max seconds to connect all clients")
    parser.add_argument(
        "--nice",
        type=int,
        default=None,
        help="niceness of the client processes and, when given, of the gateway workers and "
        "registry too (default: leave the workers at the niceness an embedded Ray gives them, "
        "this process's since RAY_worker_niceness=0, and match it)",
    )
    args = parser.parse_args()
    if args.clients < 2 or args.rate <= 0 or args.seconds <= 0:
        parser.error("need --clients >= 2, --rate > 0, --seconds > 0")
    procs = max(1, min(args.procs, args.clients))
    raise_nofile()
    load_at_start = os.getloadavg()

    import psutil
    import ray

    from rhizomorph import Config, Deployment, ensure_ray

    started_ray = ensure_ray()
    deployment = None
    children: list[tuple[Any, Any]] = []
    ctx = mp.get_context("spawn")
    counters = ctx.Array("q", procs * 3, lock=False)
    try:
        deployment = Deployment(Config(port=0, workers=args.workers, log_level="WARNING")).start()
        pids = {w: info["pid"] for w, info in sorted(deployment.worker_info.items())}
        registry_pid = actor_pid(deployment.registry)
        if registry_pid:
            pids["registry"] = registry_pid
        probe = Probe(pids)
        if args.nice is not None:
            for pid in pids.values():
                psutil.Process(pid).nice(args.nice)
        worker_nice = psutil.Process(next(iter(pids.values()))).nice()
        client_nice = worker_nice
        time.sleep(1.0)
        rss_idle = probe.rss_mb()
        count = int(round(args.rate * args.seconds))
        print(
            f"router {deployment.url}, {args.workers} worker(s) {pids}; {args.clients} clients in {procs} "
            f"processes, {args.rate:g} msg/s each for {args.seconds:g} s ({args.clients * count} messages, "
            f"{args.clients * args.rate:g} msg/s), payload {args.payload} B; niceness: workers {worker_nice}, "
            f"clients {client_nice}",
            flush=True,
        )

        # Client processes, then their connections.
        shares = [list(range(args.clients))[p::procs] for p in range(procs)]
        for slot, indices in enumerate(shares):
            parent_end, child_end = ctx.Pipe()
            process = ctx.Process(
                target=client_process,
                daemon=True,
                args=(
                    child_end,
                    counters,
                    slot,
                    indices,
                    args.clients,
                    deployment.url,
                    args.rate,
                    args.seconds,
                    args.payload,
                    args.grace,
                    args.concurrency,
                    client_nice,
                ),
            )
            process.start()
            children.append((process, parent_end))
        t0 = time.monotonic()
        addresses: dict[int, str] = {}
        for _process, pipe in children:
            remaining = args.timeout - (time.monotonic() - t0)
            if remaining <= 0 or not pipe.poll(remaining):
                raise TimeoutError(f"clients not connected within {args.timeout:g} s")
            message = pipe.recv()
            if "error" in message:
                raise RuntimeError(f"client process failed while connecting: {message['error']}")
            addresses.update(message["addresses"])
        connect_s = time.monotonic() - t0
        time.sleep(1.0)
        rss_connected = probe.rss_mb()
        print(
            f"connected {len(addresses)} clients in {connect_s:.1f} s; RSS MB idle: {fmt_mb(rss_idle)}; "
            f"connected: {fmt_mb(rss_connected)}",
            flush=True,
        )

        idle_cpu0, idle_t0 = probe.cpu_s(), time.monotonic()
        time.sleep(3.0)
        idle_cpu = {k: (v - idle_cpu0[k]) / (time.monotonic() - idle_t0) * 100 for k, v in probe.cpu_s().items()}
        start_at = time.monotonic() + 1.0
        for _, pipe in children:
            pipe.send({"addresses": addresses, "start_at": start_at})
        time.sleep(max(0.0, start_at - time.monotonic()))
        cpu0, sys0, wall0 = probe.cpu_s(), psutil.cpu_times(), time.monotonic()
        everyone0 = process_cpu()
        children_cpu0 = {p.pid: sum(psutil.Process(p.pid).cpu_times()[:2]) for p, _ in children}
        peak = dict(rss_connected)

        # Progress every 10 s; results when every process is done.
        results: list[dict[str, Any] | None] = [None] * procs
        hard_deadline = start_at + args.seconds + args.grace + 60
        next_line = start_at + 10
        prev = (start_at, 0, probe.cpu_s())
        while any(r is None for r in results):
            if time.monotonic() > hard_deadline:
                raise TimeoutError("client processes did not finish in time")
            for slot, (process, pipe) in enumerate(children):
                if results[slot] is None and pipe.poll(0.05):
                    results[slot] = pipe.recv()
                    if "error" in results[slot]:
                        raise RuntimeError(f"client process {slot} failed: {results[slot]['error']}")
                elif results[slot] is None and not process.is_alive():
                    raise RuntimeError(f"client process {slot} died (exit code {process.exitcode})")
            rss = probe.rss_mb()
            peak = {k: max(peak[k], v) for k, v in rss.items()}
            now = time.monotonic()
            if now >= next_line and now < start_at + args.seconds + args.grace:
                s = sum(counters[i * 3] for i in range(procs))
                r = sum(counters[i * 3 + 1] for i in range(procs))
                closed = sum(counters[i * 3 + 2] for i in range(procs))
                cpu = probe.cpu_s()
                queued = router_queued(deployment)
                dt = now - prev[0]
                cores = {k: (cpu[k] - prev[2][k]) / dt * 100 for k in cpu}
                cpu_text = ", ".join(f"{k} {v:.0f}" for k, v in cores.items())
                print(
                    f"  t={now - start_at:5.0f}s sent {s:>8} received {r:>8} in flight {s - r:>6} "
                    f"recv/s {(r - prev[1]) / dt:8.0f} router queues {queued:>6} closed {closed}; CPU % {cpu_text}; "
                    f"RSS MB {fmt_mb(rss)}",
                    flush=True,
                )
                prev = (now, r, cpu)
                next_line += 10
        cpu1, sys1, wall1 = probe.cpu_s(), psutil.cpu_times(), time.monotonic()
        everyone1 = process_cpu()
        children_cpu = {
            pid: sum(psutil.Process(pid).cpu_times()[:2]) - c0
            for pid, c0 in children_cpu0.items()
            if psutil.pid_exists(pid)
        }
        rss_after = probe.rss_mb()
        mine = set(pids.values()) | {os.getpid()} | {p.pid for p, _ in children}
        for process, _ in children:
            process.join(30)
        time.sleep(2.0)
        rss_disconnected = probe.rss_mb()
    finally:
        for process, _ in children:
            if process.is_alive():
                process.kill()
                process.join(5)
        if deployment is not None:
            deployment.stop()
        if started_ray:
            ray.shutdown()

    # Aggregate.
    sent_by = {}
    for r in results:
        sent_by.update(r["sent"])
    sent = sum(sent_by.values())
    unique = dups = ooo = mis = lost = 0
    for r in results:
        for _, (sender, u, d, o, m) in r["receivers"].items():
            unique += u
            dups += d
            ooo += o
            mis += m
            lost += max(0, sent_by[sender] - u)
    received = unique + dups + mis
    lat = array.array("d")
    for r in results:
        lat.frombytes(r["latencies"])
    lat_sorted = sorted(lat)
    send_phase = max(r["send_end"] for r in results) - start_at
    drain_end = max(r["drained"] for r in results) - start_at
    elapsed = wall1 - wall0
    server_cpu = {k: cpu1[k] - cpu0[k] for k in cpu0}
    sys_total = max(sum(sys1) - sum(sys0), 1e-9)
    sys_busy = (sum(sys1) - sys1.idle - (sum(sys0) - sys0.idle)) / sys_total * 100
    sys_split = ", ".join(
        f"{field} {(getattr(sys1, field) - getattr(sys0, field)) / sys_total * 100:.0f}%"
        for field in ("user", "nice", "system", "softirq", "steal", "idle")
        if hasattr(sys1, field)
    )
    ok = lost == 0 and dups == 0 and ooo == 0 and mis == 0 and sent == args.clients * count

    print()
    print(
        f"soak: {args.clients} clients x {args.rate:g} msg/s x {args.seconds:g} s, {args.workers} worker(s), "
        f"{procs} client processes, payload {args.payload} B; load average at start "
        f"{' '.join(f'{x:.2f}' for x in load_at_start)}, at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"  messages   sent {sent} (planned {args.clients * count}), received {received}, lost {lost}, "
        f"duplicates {dups}, out of order {ooo}, misrouted {mis}  -> {'OK' if ok else 'FAILED'}"
    )
    print(
        f"  throughput {sent / send_phase:.0f} msg/s offered over the {send_phase:.1f} s send phase "
        f"(scheduled {args.seconds:g} s); all delivered {drain_end:.1f} s after the start"
    )
    print(
        f"  latency    one way p50 {percentile(lat_sorted, 0.5):.2f} ms, p99 {percentile(lat_sorted, 0.99):.2f} ms, "
        f"max {lat_sorted[-1] if lat_sorted else math.nan:.2f} ms ({len(lat_sorted)} samples)"
    )
    print(
        f"  load gen   send lag behind schedule p99 {max(r['lag_p99_ms'] for r in results):.1f} ms, "
        f"max {max(r['lag_max_ms'] for r in results):.1f} ms; client process CPU "
        f"{', '.join(f'{v / elapsed * 100:.0f}%' for v in children_cpu.values())} of a core; "
        f"connect {connect_s:.1f} s; closed early {sum(r['closed_early'] for r in results)}; "
        f"text frames {sum(r['texts'] for r in results)}"
    )
    print(
        f"  router CPU over {elapsed:.1f} s: "
        + ", ".join(f"{k} {v:.1f} s ({v / elapsed * 100:.0f}% of a core)" for k, v in server_cpu.items())
        + f"; {sum(v for k, v in server_cpu.items() if k != 'registry') / max(received, 1) * 1e6:.0f} µs worker CPU "
        f"per message; machine busy {sys_busy:.0f}% of {psutil.cpu_count()} cores ({sys_split})"
    )
    print(
        f"  other CPU  processes outside this run alive at its end (incl. this Ray's raylet, gcs and "
        f"chunking actor; the Ray workers run at nice 15), % of a core: "
        f"{busiest_others(everyone0, everyone1, mine, elapsed)}"
    )
    print(
        f"  idle CPU   with the clients connected, before sending: "
        f"{', '.join(f'{k} {v:.0f}%' for k, v in idle_cpu.items())} of a core"
    )
    print(f"  RSS MB     idle: {fmt_mb(rss_idle)}")
    print(f"             {args.clients} connected, before sending: {fmt_mb(rss_connected)}")
    print(f"             after the soak: {fmt_mb(rss_after)}; peak {fmt_mb(peak)}")
    print(f"             after the clients left: {fmt_mb(rss_disconnected)}")
    texts = [r["sample_text"] for r in results if r["sample_text"]]
    if texts:
        print(f"  a text frame a client got: {texts[0]}")
    others = [f for r in results for f in r["other_frames"]]
    if others:
        print(f"  unexpected binary frames (first): {others[:3]}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
