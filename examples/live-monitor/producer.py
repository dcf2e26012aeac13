"""Live monitor producer: publishes a dashboard stream through rhizomorph.

    python examples/live-monitor/producer.py [--server-url ws://127.0.0.1:9527] [--rate 20] [--wire 3|4]

It registers the public service ``live-monitor``. A page (or any hypha-rpc client) subscribes by
calling ``subscribe`` with an ``_rintf`` object of callbacks; the producer then calls them at a
steady rate with a mixed load:

- ``on_status``: a small dict every tick (``--rate`` per second),
- ``on_series``: four channels of float32 samples, 16 KiB, every second tick,
- ``on_meta``: what the stream is, on subscribe and every 100 ticks.

Calling the subscriber's callbacks works across workspaces: anonymous pages each get their own
workspace, where a workspace broadcast (``emit``) would not reach them. The values are pure
functions of the sequence number, and ``sent(seq)`` returns exactly what went out, so a test can
check what a page shows.

``--wire 3`` (the default) connects with the released hypha-rpc client; ``--wire 4`` with
rhizomorph's v4 client, whose sends of one tick leave in one batch frame: the router then hands
a v4 page the tick's calls in one frame too, and a v3 page one frame per call.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import struct
import time
from collections import OrderedDict
from typing import Any

from hypha_rpc import connect_to_server

SERVICE_ID = "live-monitor"
CHANNELS = ("sine", "square", "sawtooth", "noise")
SAMPLES = 1024
SERIES_EVERY = 2  # ticks
META_EVERY = 100  # ticks
MAX_IN_FLIGHT = 8  # unanswered calls per subscriber before its frames are dropped, not queued
HISTORY = 1000  # ticks kept for sent()


def status_for(seq: int) -> dict[str, Any]:
    """The deterministic part of status update ``seq``."""
    phase = seq / 40.0
    load = 0.5 + 0.45 * math.sin(phase * 1.7)
    return {
        "seq": seq,
        "state": "busy" if load > 0.8 else "idle" if load < 0.2 else "ok",
        "temperature": round(21.0 + 4.0 * math.sin(phase), 3),
        "pressure": round(1013.0 + 6.0 * math.cos(phase / 3.0), 2),
        "load": round(load, 4),
    }


def samples_for(seq: int, channel: str) -> list[float]:
    """One channel of series ``seq``: a waveform that drifts with ``seq`` so the chart moves."""
    shift = seq / 10.0
    xs = [2.0 * math.pi * (i / SAMPLES * 3.0 + shift) for i in range(SAMPLES)]
    if channel == "sine":
        return [math.sin(x) for x in xs]
    if channel == "square":
        return [0.8 if math.sin(x) >= 0 else -0.8 for x in xs]
    if channel == "sawtooth":
        return [((x / math.pi) % 2.0) - 1.0 for x in xs]
    rng = random.Random(seq)
    return [0.3 * rng.gauss(0.0, 1.0) for _ in xs]


def series_for(seq: int) -> dict[str, Any]:
    """Series message ``seq``: float32 little-endian bytes per channel, and their summary."""
    channels, summary = {}, {}
    for name in CHANNELS:
        data = struct.pack(f"<{SAMPLES}f", *samples_for(seq, name))
        values = struct.unpack(f"<{SAMPLES}f", data)  # summarise what the page receives: float32
        channels[name] = data
        summary[name] = {"min": min(values), "max": max(values), "mean": sum(values) / len(values)}
    return {"seq": seq, "dtype": "float32", "samples": SAMPLES, "channels": channels, "summary": summary}


class Producer:
    def __init__(self, rate: float, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.rate = rate
        self.max_in_flight = max_in_flight
        self.started = time.time()
        self.subscribers: dict[int, dict[str, Any]] = {}
        self.in_flight: dict[int, int] = {}
        self.dropped = 0
        self.sent_log: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._next_id = 0
        self._tasks: set[asyncio.Task] = set()

    def meta(self) -> dict[str, Any]:
        return {
            "name": "rhizomorph live monitor",
            "rate_hz": self.rate,
            "series_every": SERIES_EVERY,
            "channels": list(CHANNELS),
            "samples": SAMPLES,
            "dtype": "float32",
            "units": {"temperature": "°C", "pressure": "hPa", "load": "fraction"},
            "started_at": self.started,
            "subscribers": len(self.subscribers),
        }

    # -- the service ---------------------------------------------------------------------------
    async def subscribe(self, callbacks: dict[str, Any]) -> dict[str, Any]:
        """Start calling ``callbacks.on_status/on_series/on_meta``; returns the subscriber id."""
        if not all(callable(callbacks.get(k)) for k in ("on_status", "on_series", "on_meta")):
            raise ValueError("subscribe needs {_rintf: true, on_status, on_series, on_meta}")
        self._next_id += 1
        self.subscribers[self._next_id] = callbacks
        self.in_flight[self._next_id] = 0
        print(f"subscriber {self._next_id} joined ({len(self.subscribers)} now)", flush=True)
        return {"subscriber": self._next_id, "meta": self.meta()}

    def unsubscribe(self, subscriber: int) -> bool:
        """Stop sending to a subscriber."""
        self.in_flight.pop(subscriber, None)
        return self.subscribers.pop(subscriber, None) is not None

    def sent(self, seq: int) -> dict[str, Any] | None:
        """Exactly what tick ``seq`` sent (status, and the series summary on series ticks)."""
        return self.sent_log.get(seq)

    def service(self) -> dict[str, Any]:
        return {
            "id": SERVICE_ID,
            "name": "Live monitor",
            "config": {"visibility": "public"},
            "subscribe": self.subscribe,
            "unsubscribe": self.unsubscribe,
            "get_meta": self.meta,
            "sent": self.sent,
        }

    # -- the stream ----------------------------------------------------------------------------
    def _send(self, subscriber: int, callback: str, payload: Any) -> None:
        """Fire a callback without waiting for it: one slow page must not slow the others."""
        if self.in_flight.get(subscriber, self.max_in_flight) >= self.max_in_flight:
            self.dropped += 1
            return
        self.in_flight[subscriber] += 1
        task = asyncio.ensure_future(self._call(subscriber, callback, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, subscriber: int, callback: str, payload: Any) -> None:
        callbacks = self.subscribers.get(subscriber)
        try:
            if callbacks is not None:
                await callbacks[callback](payload)
        except Exception as exc:  # the page closed or went away: forget it
            if self.unsubscribe(subscriber):
                print(f"subscriber {subscriber} left: {str(exc).splitlines()[0][:120]}", flush=True)
        finally:
            if subscriber in self.in_flight:
                self.in_flight[subscriber] -= 1

    async def run(self, ticks: int | None = None) -> None:
        loop = asyncio.get_running_loop()
        period, next_tick, seq = 1.0 / self.rate, loop.time(), 0
        while ticks is None or seq < ticks:
            seq += 1
            status = {
                **status_for(seq),
                "time": time.time(),
                "subscribers": len(self.subscribers),
                "dropped": self.dropped,
            }
            record: dict[str, Any] = {"status": status}
            series = series_for(seq) if seq % SERIES_EVERY == 0 else None
            if series is not None:
                record["series"] = {"seq": seq, "summary": series["summary"]}
            self.sent_log[seq] = record
            while len(self.sent_log) > HISTORY:
                self.sent_log.popitem(last=False)
            for subscriber in list(self.subscribers):
                self._send(subscriber, "on_status", status)
                if series is not None:
                    self._send(subscriber, "on_series", series)
                if seq % META_EVERY == 0:
                    self._send(subscriber, "on_meta", self.meta())
            # A steady rate: sleep to the next tick's deadline, not for a fixed period.
            next_tick += period
            await asyncio.sleep(max(0.0, next_tick - loop.time()))


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server-url", default="ws://127.0.0.1:9527")
    parser.add_argument("--rate", type=float, default=20.0, help="status updates per second")
    parser.add_argument("--ticks", type=int, default=None, help="stop after this many (default: run forever)")
    parser.add_argument("--wire", type=int, choices=(3, 4), default=3, help="the producer's wire protocol")
    parser.add_argument(
        "--max-in-flight", type=int, default=MAX_IN_FLIGHT, help="unanswered calls per page before dropping"
    )
    args = parser.parse_args(argv)

    if args.wire == 4:
        from rhizomorph.client import connect_to_server as connect_v4

        server = await connect_v4({"server_url": args.server_url})
    else:
        server = await connect_to_server({"server_url": args.server_url})
    producer = Producer(args.rate, args.max_in_flight)
    info = await server.register_service(producer.service())
    page = args.server_url.replace("ws://", "http://").replace("wss://", "https://").rstrip("/")
    print(f"registered {info['id']}", flush=True)
    print(f"open {page}/live-monitor/ to watch", flush=True)
    try:
        await producer.run(args.ticks)
    finally:
        await server.disconnect()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
