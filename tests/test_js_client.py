"""rhizomorph-client (clients/js) against a real router and real Python hypha-rpc peers.

Each Node test file in clients/js/test/ runs with ``node --test`` while this process keeps
Python peers connected: one released hypha-rpc client (v3) and one ``rhizomorph.client`` (v4),
each with a public ``py-peer`` service (echo, generators, calls back into a JS service), and a
``control`` service that closes a client's socket from the router side (for reconnection) and
reads the router's per-target message counts.
The Node side learns where everything is from environment variables; run alone (``npm test``)
its router tests skip, so here every suite must pass with nothing skipped.

``frames.test.js`` also replays vectors made here with rhizomorph/protocol/frames.py and
batching.py: the JS client must produce the same bytes and the same flush decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypha_rpc import connect_to_server as connect_v3

from rhizomorph import Config, Deployment
from rhizomorph.client import connect_to_server as connect_v4
from rhizomorph.protocol import frames
from rhizomorph.protocol.batching import Batcher, BatchPolicy
from tests.js_build import CLIENT_DIR, ensure_client_package, node

SUITES = {"transport": 13, "interop": 14, "reconnect": 2}  # Node test file -> tests it must pass


class PyPeer:
    """The ``py-peer`` service of one Python client."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.closed = 0

    def service(self) -> dict[str, Any]:
        return {
            "id": "py-peer",
            "config": {"visibility": "public"},
            "echo": lambda value: value,
            "count": self.count,
            "endless": self.endless,
            "closed": lambda: self.closed,
            "call_echo": self.call_echo,
            "consume": self.consume,
            "consume_some": self.consume_some,
        }

    async def count(self, n: int):
        for i in range(n):
            yield {"i": i}

    async def endless(self):
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            self.closed += 1

    async def call_echo(self, service_id: str, payload: Any) -> Any:
        """Python calls a JS service: the other direction of every pairing."""
        service = await self.server.get_service(service_id)
        return await service.echo(payload)

    async def consume(self, service_id: str, n: int) -> list[Any]:
        service = await self.server.get_service(service_id)
        return [item async for item in await service.count(n)]

    async def consume_some(self, service_id: str, k: int) -> list[Any]:
        """Take ``k`` items of the JS service's endless generator, then close it."""
        service = await self.server.get_service(service_id)
        items = []
        async with contextlib.aclosing(await service.endless()) as items_in:
            async for item in items_in:
                items.append(item)
                if len(items) == k:
                    break
        return items


def batcher_vectors(seed: int = 15, steps: int = 400) -> list[dict[str, Any]]:
    """Random runs of the Python Batcher, one per wait rule: what it was fed and what it answered.

    Times are whole 1/1024 s and the timer 1/64 s, exact in binary floating point both as
    Python's seconds and as JavaScript's milliseconds, so both compare the same numbers."""
    runs = []
    for wait, rules in (
        ("timer", {"idle", "count", "size", "half", "timer", "large"}),
        ("socket", {"idle", "free", "half", "large"}),
    ):
        options = {"timeout_ms": 15.625, "max_messages": 5, "max_size": 4096, "wait": wait}
        events = _batcher_run(Batcher(BatchPolicy(**options)), random.Random(seed), steps)
        reasons = {event["flush"][1] for event in events if event.get("flush")}
        assert reasons >= rules, reasons  # the run covers every rule of this wait
        runs.append({"policy": options, "events": events})
    return runs


def _batcher_run(batcher: Batcher, rng: random.Random, steps: int) -> list[dict[str, Any]]:
    ticks = 0
    events: list[dict[str, Any]] = []
    for _ in range(steps):
        ticks += rng.choice([0, 0, 1, 4, 17])
        now, now_ms = ticks / 1024, ticks * 1000 / 1024
        kind = rng.choices(["add", "take", "written"], weights=[5, 4, 2])[0]
        if kind == "add":
            size = rng.choice([10, 200, 1000, 3000, 4096, 5000])
            alone = rng.random() < 0.05
            batcher.add(b"x" * size, now, alone=alone)
            events.append({"op": "add", "size": size, "alone": alone, "now": now_ms})
        elif kind == "take":
            flush = batcher.take(now)
            deadline = batcher.deadline()
            events.append(
                {
                    "op": "take",
                    "now": now_ms,
                    "flush": None if flush is None else [len(flush.frames), flush.reason],
                    "complete": batcher.complete(),
                    "full": batcher.full(),
                    "deadline": None if deadline is None else round(deadline * 1000.0, 6),
                }
            )
        else:
            batcher.written()
            events.append({"op": "written"})
    return events


def frame_vectors() -> dict[str, Any]:
    messages = [b"\x82\xa4type\xa6method", b"", bytes(range(256)) * 3]
    message = bytes(random.Random(4).randrange(256) for _ in range(10_000))
    stream_id = 2**40 + 5
    return {
        "batch": {"messages": [m.hex() for m in messages], "frame": frames.encode_batch(messages).hex()},
        "stream": {
            "message": message.hex(),
            "stream_id": str(stream_id),
            "chunk_size": 4096,
            "chunks": [c.hex() for c in frames.split_stream(message, stream_id, 4096)],
        },
        "abort": frames.encode_chunk(7, 3, False, b"", abort=True).hex(),
        "batcher": batcher_vectors(),
    }


@pytest.fixture(scope="module")
def router_v3_only(ray_runtime):
    """A router with API v4 turned off: v4 clients must fall back to v3."""
    deployment = Deployment(Config(port=0, workers=1, enable_v4=False)).start()
    yield deployment
    deployment.stop()


@pytest.fixture(scope="module")
async def python_peers(router):
    clients = []
    peers = {}
    for name, connect in (("py_v3", connect_v3), ("py_v4", connect_v4)):
        server = await connect({"server_url": router.url, "method_timeout": 30})
        clients.append(server)
        peer = PyPeer(server)
        info = await server.register_service(peer.service())
        peers[name] = info["id"]

    async def close_client(address: str) -> bool:
        """Close ``address``'s socket from the router side, as a worker restart would."""
        workers = await asyncio.to_thread(lambda: router.workers)  # asks the controller: not on this loop
        for worker in workers.values():
            if await worker.close_client.remote(address):
                return True
        return False

    async def messages_to(address: str) -> int:
        """Messages the router delivered to ``address`` (the manager shows a client only its own
        workspace's targets; this asks the workers)."""
        for worker in await asyncio.to_thread(router.stats):
            if address in worker["targets"]:
                return int(worker["targets"][address]["messages"])
        raise KeyError(f"{address} is on no worker")

    controller = await connect_v3({"server_url": router.url, "method_timeout": 30})
    clients.append(controller)
    info = await controller.register_service(
        {
            "id": "control",
            "config": {"visibility": "public"},
            "close_client": close_client,
            "messages_to": messages_to,
        }
    )
    peers["control"] = info["id"]
    yield peers
    for server in clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.disconnect(), 5)


@pytest.mark.slow
@pytest.mark.timeout(420)
@pytest.mark.parametrize("suite", sorted(SUITES))
async def test_node_suite(suite: str, router, router_v3_only, python_peers, tmp_path: Path) -> None:
    ensure_client_package()
    vectors = tmp_path / "vectors.json"
    vectors.write_text(json.dumps(frame_vectors()))
    env = {
        **os.environ,
        "RHIZOMORPH_URL": router.url,
        "RHIZOMORPH_V3_URL": router_v3_only.url,
        "RHIZOMORPH_PEERS": json.dumps(python_peers),
        "RHIZOMORPH_VECTORS": str(vectors),
    }
    process = await asyncio.create_subprocess_exec(
        node(),
        "--experimental-websocket",
        "--test",
        "--test-reporter=tap",
        f"test/{suite}.test.js",
        cwd=CLIENT_DIR,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(process.communicate(), 400)
    except TimeoutError:
        process.kill()
        out, _ = await process.communicate()
        raise AssertionError(f"node --test {suite} hung:\n{out.decode()[-6000:]}") from None
    report = out.decode()
    counts = {key: int(n) for key, n in re.findall(r"^# (pass|fail|skipped|todo|cancelled) (\d+)$", report, re.M)}
    assert process.returncode == 0 and counts.get("fail") == 0, report[-8000:]
    assert counts.get("skipped", 0) == 0 and counts.get("todo", 0) == 0, report[-8000:]
    assert counts.get("pass", 0) == SUITES[suite], f"expected {SUITES[suite]} passing tests:\n{report[-8000:]}"
