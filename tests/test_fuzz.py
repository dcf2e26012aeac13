"""Fuzzing the gateway's input surface, live (the parsers alone: tests/unit/test_fuzz_parsers.py).

A flood (``slow``): over 100,000 malformed, truncated, oversized and random frames
from raw sockets at one gateway worker, while a hypha-rpc client keeps calling a service
through it. The worker must not crash or restart, must answer every frame as docs/protocol.md
says (one error text frame per unroutable frame, a reject or ``peer_not_found`` per
undeliverable call, nothing for the rest; tests/wire_oracle.py), and every good call must
succeed.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
import websockets

from benchmarks.wire import RawPeer
from rhizomorph import Config, Deployment
from rhizomorph.protocol.envelope import encode
from tests.fuzz_frames import AUTH_KEYS, NON_MAP_PREFIXES, garbage_frame, v4_frame
from tests.helpers import eventually
from tests.wire_oracle import expected_v4_errors, expects_error

# -- text and auth frames for the flood ---------------------------------------------------------------


def _garbage_text(rng: random.Random) -> str:
    """Text frames after the handshake that the router ignores (no ping, no refresh_token)."""
    kind = rng.randrange(4)
    if kind == 0:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(40)))
    if kind == 1:
        return json.dumps({"type": rng.choice(["pong", "error", "hello", 5, None]), "x": rng.random()})
    if kind == 2:
        return json.dumps([rng.random()])
    return json.dumps({"type": "ping", "pad": "x" * 1000})  # over 1000 characters: ignored


def _bad_auth_frames(rng: random.Random, count: int) -> list[str | bytes]:
    """Auth frames that must all be refused with an error frame and close 1008."""
    other_secret = jwt.encode(
        {"sub": "x", "typ": "access", "exp": 2**40, "iss": "rhizomorph"},
        "not-the-router-secret-0123456789abcdef",
        algorithm="HS256",
    )
    makers = [
        lambda: "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(1, 30))) + "{",
        lambda: json.dumps(rng.choice([[1], "x", 5, None, True])),
        lambda: json.dumps({rng.choice(AUTH_KEYS[:4]): rng.choice([5, [1], {"a": 1}, True])}),
        lambda: json.dumps({"client_id": rng.choice(["a/b", "a:b", "*", "a b", "x" * 300])}),
        lambda: json.dumps({"token": rng.choice(["garbage", "a.b.c", other_secret])}),
        lambda: json.dumps({"reconnection_token": "x" * rng.randrange(1, 200)}),
        # A refused workspace named in 2-byte characters: the close reason must be
        # cut to 123 bytes, not 123 characters.
        lambda: json.dumps({"workspace": "é" * rng.randrange(100, 250)}),
        lambda: json.dumps({"pad": "x" * 17000}),  # over the 16 KiB auth frame limit
        lambda: rng.randbytes(rng.randrange(1, 30)),  # a binary first frame
    ]
    return [makers[i % len(makers)]() for i in range(count)]


# -- the live flood ----------------------------------------------------------------------------------

MAX_MESSAGE_SIZE = 256 * 1024
GARBAGE_CONNECTIONS = 5
GARBAGE_FRAMES = 18_000  # per connection; < message_burst, so the rate limit never interferes
BAD_AUTH_CONNECTIONS = 300
OVERSIZED_CONNECTIONS = 3
V4_FRAMES = 5000


@dataclass
class Tally:
    """What one raw connection sent and got back."""

    sent: int = 0
    expected_errors: int = 0
    expected_replies: int = 0  # binary: rejects and peer_not_found
    errors: int = 0
    replies: int = 0
    other_text: list[Any] = field(default_factory=list)
    error_messages: set[str] = field(default_factory=set)


async def _read_all(client: RawPeer, tally: Tally) -> None:
    try:
        async for frame in client.ws:
            if isinstance(frame, str):
                message = json.loads(frame)
                if message.get("type") == "error":
                    tally.errors += 1
                    tally.error_messages.add(message["message"].split(":")[0])
                else:
                    tally.other_text.append(message)
            else:
                tally.replies += 1
    except websockets.ConnectionClosed:
        pass


async def _flood(client: RawPeer, frames: list[bytes | str], tally: Tally) -> None:
    for frame in frames:
        await client.ws.send(frame)
        tally.sent += 1


def _garbage_plan(rng: random.Random, tally: Tally) -> list[bytes | str]:
    frames: list[bytes | str] = []
    for _ in range(GARBAGE_FRAMES):
        roll = rng.random()
        if roll < 0.05:
            frames.append(_garbage_text(rng))
            continue
        if roll < 0.052:  # large random frames, under max_message_size
            frame = bytes([rng.choice(NON_MAP_PREFIXES)]) + rng.randbytes(rng.randrange(50_000, MAX_MESSAGE_SIZE - 1))
        else:
            frame = garbage_frame(rng, "nowhere")
        tally.expected_errors += expects_error(frame)
        frames.append(frame)
    return frames


def _v4_plan(rng: random.Random, tally: Tally) -> list[bytes]:
    frames = [v4_frame(rng) for _ in range(V4_FRAMES)]
    tally.expected_errors = sum(expected_v4_errors(frame) for frame in frames)
    return frames


def _deterministic_plan(rng: random.Random, manager_id: str, tally: Tally) -> list[bytes]:
    """Well-formed frames whose answers docs/protocol.md fixes exactly."""
    kinds = (
        [("call_ghost", True)] * 300
        + [("resolve_ghost", True)] * 300
        + [("event_ghost", False)] * 200
        + [("call_other_ws", True)] * 2000
        + [("event_other_ws", False)] * 1500
        + [("event_own_ws", False)] * 1500
        + [("manager_unknown", True)] * 100
        + [("manager_garbage", False)] * 100
    )
    rng.shuffle(kinds)
    frames = []
    for i, (kind, answered) in enumerate(kinds):
        if kind == "call_ghost":  # -> <session>.reject "Target peer ... is not connected"
            frame = encode(
                {"type": "method", "to": f"ghost-{i}", "method": "services.a.b", "session": f"g{i}"},
                {"args": [i], "promise": "*"},
            )
        elif kind == "resolve_ghost":  # no session -> peer_not_found
            frame = encode({"type": "method", "to": f"ghost-{i}", "method": f"s{i}.resolve"}, {"args": [i]})
        elif kind == "event_ghost":  # events are fire-and-forget
            frame = encode({"type": "fuzz-event", "to": f"ghost-{i}", "data": i})
        elif kind == "call_other_ws":  # broadcast to another workspace, refused -> reject
            frame = encode({"type": "method", "to": "other-ws/*", "method": "m", "session": f"o{i}"})
        elif kind == "event_other_ws":
            frame = encode({"type": "fuzz-event", "to": "other-ws/*"})
        elif kind == "event_own_ws":  # nobody in the workspace subscribed
            frame = encode({"type": "fuzz-event", "to": "*", "data": rng.randbytes(8)})
        elif kind == "manager_unknown":  # -> reject "Method not found"
            frame = encode(
                {"type": "method", "to": f"*/{manager_id}", "method": "services.default.nope", "session": f"m{i}"},
                {"args": [], "promise": "*"},
            )
        else:  # a valid header with an undecodable payload: the manager drops it (logged)
            frame = (
                encode(
                    {"type": "method", "to": f"*/{manager_id}", "method": "services.default.echo", "session": f"x{i}"}
                )
                + b"\xc1\xc1garbage"
            )
        tally.expected_replies += answered
        frames.append(frame)
    return frames


async def _bad_handshake(url: str, auth: str | bytes, results: list[tuple[int | None, str | None]]) -> None:
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(auth)
        error = None
        try:
            while True:
                frame = await asyncio.wait_for(ws.recv(), 15)
                if isinstance(frame, str):
                    error = json.loads(frame).get("message")
        except websockets.ConnectionClosed as closed:
            results.append((closed.rcvd.code if closed.rcvd else None, error))


async def _oversized(url: str, results: list[int | None]) -> None:
    client = await RawPeer.connect(url)
    try:
        await client.ws.send(b"\x81\xa2to\xa1x" + b"\x00" * MAX_MESSAGE_SIZE)
        while True:
            await asyncio.wait_for(client.ws.recv(), 15)
    except websockets.ConnectionClosed as closed:
        results.append(closed.rcvd.code if closed.rcvd else None)
    finally:
        await client.ws.close()


@pytest.fixture(scope="module")
def fuzzed(ray_runtime):
    deployment = Deployment(Config(port=0, workers=1, max_message_size=MAX_MESSAGE_SIZE, log_level="WARNING")).start()
    yield deployment
    deployment.stop()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_gateway_survives_a_flood_of_bad_frames_while_serving_good_calls(fuzzed):
    from hypha_rpc import connect_to_server

    config = fuzzed.config
    assert GARBAGE_FRAMES < config.message_burst  # the flood must meet the parsers, not the rate limit
    before = (await asyncio.to_thread(fuzzed.stats))[0]
    rng = random.Random(20240601)

    # The well-behaved pair: a provider and a caller in another workspace.
    provider = await connect_to_server({"server_url": fuzzed.url, "method_timeout": 30})
    caller = await connect_to_server({"server_url": fuzzed.url, "method_timeout": 30})
    await provider.register_service({"id": "echo", "config": {"visibility": "public"}, "echo": lambda x: x})
    echo = await caller.get_service(f"{provider.config.workspace}/echo")

    # Raw peers: garbage, deterministic, read-only broadcaster.
    garbage = [await RawPeer.connect(fuzzed.url) for _ in range(GARBAGE_CONNECTIONS)]
    steady = await RawPeer.connect(fuzzed.url)
    admin = await RawPeer.connect(fuzzed.url)
    read_only_token = await admin.call_manager("generate_token", {"permission": "r"})
    reader = await RawPeer.connect(fuzzed.url, token=read_only_token, workspace=admin.info["workspace"])
    v4 = await RawPeer.connect(fuzzed.url, wire_protocol=4)
    assert v4.info.get("wire_protocol") == 4

    tallies = [Tally() for _ in garbage]
    plans: list[tuple[RawPeer, list, Tally]] = [
        (client, _garbage_plan(rng, tally), tally) for client, tally in zip(garbage, tallies)
    ]
    steady_tally = Tally()
    plans.append((steady, _deterministic_plan(rng, admin.info["manager_id"], steady_tally), steady_tally))
    reader_tally = Tally(expected_errors=4000)
    plans.append((reader, [encode({"type": "fuzz-event", "to": "*", "data": i}) for i in range(4000)], reader_tally))
    v4_tally = Tally()
    plans.append((v4, _v4_plan(rng, v4_tally), v4_tally))
    bad_auths = _bad_auth_frames(rng, BAD_AUTH_CONNECTIONS)
    total = sum(len(p[1]) for p in plans) + len(bad_auths) + OVERSIZED_CONNECTIONS
    assert total >= 100_000

    stop = asyncio.Event()
    good_calls: list[Any] = []

    async def keep_calling() -> None:
        i = 0
        while not stop.is_set() or i < 20:
            value = {"i": i, "blob": bytes(i % 251) * (i % 7), "text": "é" * (i % 13), "nested": [[i]]}
            assert await echo.echo(value) == value
            good_calls.append(i)
            i += 1

    started = time.monotonic()
    readers = [asyncio.ensure_future(_read_all(client, tally)) for client, _, tally in plans]
    good = asyncio.ensure_future(keep_calling())
    handshake_results: list[tuple[int | None, str | None]] = []
    oversized_results: list[int | None] = []

    async def bad_handshakes() -> None:
        for start in range(0, len(bad_auths), 25):
            await asyncio.gather(
                *(_bad_handshake(fuzzed.url, auth, handshake_results) for auth in bad_auths[start : start + 25])
            )

    await asyncio.gather(
        *(_flood(client, frames, tally) for client, frames, tally in plans),
        bad_handshakes(),
        *(_oversized(fuzzed.url, oversized_results) for _ in range(OVERSIZED_CONNECTIONS)),
    )
    sent_in = time.monotonic() - started

    def all_answered() -> bool:
        return all(t.errors >= t.expected_errors and t.replies >= t.expected_replies for _, _, t in plans)

    await eventually(all_answered, timeout=120, interval=0.2)
    await asyncio.sleep(0.5)  # anything beyond the expected answers would arrive now
    answered_in = time.monotonic() - started
    stop.set()
    await asyncio.wait_for(good, 60)

    print(
        f"\n{total} bad frames sent in {sent_in:.1f} s, all answered after {answered_in:.1f} s; "
        f"{len(good_calls)} good calls meanwhile"
    )
    for _, frames, tally in plans:
        assert tally.sent == len(frames)
        assert tally.errors == tally.expected_errors, tally
        assert tally.other_text == [], tally.other_text[:5]
    for tally in tallies:
        assert tally.error_messages == {"unroutable frame"}, tally.error_messages
    assert steady_tally.replies == steady_tally.expected_replies == 2700
    assert reader_tally.error_messages == {"permission denied"}
    assert reader_tally.replies == 0
    assert v4_tally.error_messages <= {"unroutable frame"} and v4_tally.expected_errors > V4_FRAMES
    assert sorted(code for code, _ in handshake_results) == [1008] * BAD_AUTH_CONNECTIONS
    assert all(error for _, error in handshake_results)  # each refusal came with its error frame
    assert oversized_results == [1009] * OVERSIZED_CONNECTIONS
    assert len(good_calls) >= 20

    # The worker is the same process, still answers, and holds exactly the connections left open.
    after = (await asyncio.to_thread(fuzzed.stats))[0]
    assert after["pid"] == before["pid"]
    for client, _, _ in plans:
        await client.ws.close()
    await admin.ws.close()
    await asyncio.gather(*readers)

    async def only_good_clients_left() -> bool:
        return (await asyncio.to_thread(fuzzed.stats))[0]["connections"] == 2

    await eventually(only_good_clients_left, timeout=20)
    assert await echo.echo("still fine") == "still fine"
    await caller.disconnect()
    await provider.disconnect()
