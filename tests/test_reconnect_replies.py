"""A reply that reaches the router between its caller's socket closing and the caller's
reconnect: the JS reconnect suite's sequence (a client calls ``control.close_client`` on
itself), with raw clients so that the reply surely comes while the caller is away.

Real routers on Ray (one worker, and two sharing the port), real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import websockets

from benchmarks.wire import RawPeer, pack

#: Long enough for the router to have routed the reply (milliseconds) before the caller is
#: back; well inside the router's reconnect_grace (5 s).
AWAY = 1.0


async def reply_while_reconnecting(url: str, deployment: Any, opened: list[RawPeer]) -> tuple[str, str]:
    """The whole sequence, checked; returns the caller's worker before and after its reconnect."""

    async def connect(**auth: Any) -> RawPeer:
        peer = await RawPeer.connect(url, timeout=10, **auth)
        opened.append(peer)
        return peer

    caller = await connect()
    replier = await connect()
    await caller.send(
        {"type": "method", "to": replier.address, "method": "services.control.close_me", "session": "S1"},
        pack({"args": [], "promise": "*"}),
    )
    called = await replier.next_binary()
    assert (called["method"], called["from"]) == ("services.control.close_me", caller.address)

    # What the control service does: ask the caller's worker to close the caller's socket.
    workers = await asyncio.to_thread(lambda: deployment.workers)
    assert await workers[caller.info["rhizomorph_worker"]].close_client.remote(caller.address)
    try:
        await asyncio.wait_for(caller.ws.recv(), 5)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None and closed.rcvd.code == 1001
    else:
        raise AssertionError("the router did not close the caller's socket")

    await replier.send({"type": "method", "to": caller.address, "method": "S1.resolve"}, pack({"args": ["closed"]}))
    await asyncio.sleep(AWAY)

    again = await connect(
        client_id=caller.info["client_id"],
        workspace=caller.workspace,
        reconnection_token=caller.info["reconnection_token"],
    )
    assert again.address == caller.address
    # Its first frame says it listens (hypha-rpc's first after a reconnect is a manager call).
    await again.send({"type": "method", "to": again.address, "method": "hello"})
    got = [await again.next_binary(timeout=10) for _ in range(2)]
    before, after = caller.info["rhizomorph_worker"], again.info["rhizomorph_worker"]
    if before == after:  # what waited for it comes first; from another worker, when it arrives
        assert [m["method"] for m in got] == ["S1.resolve", "hello"], got
    [answer] = [m for m in got if m["method"] == "S1.resolve"]
    assert (answer["from"], answer["args"]) == (replier.address, ["closed"])
    # The replier was never told its reply could not be delivered.
    try:
        extra = await replier.next_binary(timeout=0.5)
    except TimeoutError:
        extra = None
    assert extra is None, extra
    return before, after


async def test_a_reply_sent_while_its_caller_reconnects_reaches_the_callers_new_socket(router):
    opened: list[RawPeer] = []
    try:
        await reply_while_reconnecting(router.url, router, opened)
    finally:
        for peer in opened:
            with contextlib.suppress(Exception):
                await peer.close()


async def test_the_reply_follows_a_caller_that_reconnects_on_another_worker(router2):
    # The kernel spreads sockets over the shared port: run the sequence until the reconnect
    # lands on the other worker (each run is checked, wherever it lands).
    opened: list[RawPeer] = []
    try:
        for _ in range(20):
            before, after = await reply_while_reconnecting(router2.url, router2, opened)
            if before != after:
                return
        raise AssertionError("20 reconnects never reached the other worker")
    finally:
        for peer in opened:
            with contextlib.suppress(Exception):
                await peer.close()
