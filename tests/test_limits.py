"""Hardening: permissions, workspace isolation and the router's limits, on real sockets.

Permission and isolation checks run on the session's ``router``. Limits need non-default
settings, so they get small dedicated routers (one worker each) in the same Ray runtime.
Close codes and defaults are documented in docs/protocol.md and docs/security.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import websockets

from benchmarks.wire import RawPeer
from rhizomorph import Config, Deployment
from rhizomorph.protocol.envelope import decode, encode
from tests.helpers import eventually

# -- helpers --------------------------------------------------------------------------------------


async def call_manager(client: RawPeer, method: str, *args: Any) -> dict:
    """Call the manager from a raw client; returns the ``<session>.resolve|reject`` message."""
    _, reply, _ = await client.manager_reply(method, *args, timeout=10)
    return decode(reply)


async def token_for(client: RawPeer, permission: str) -> str:
    return await client.call_manager("generate_token", {"permission": permission})


async def subscribe(client: RawPeer, event_type: str) -> None:
    assert await client.call_manager("subscribe", event_type) is True


async def expect_refusal(ws, *, code: int, error: str | None) -> str:
    """Read until the socket closes; check the close code and the error text frame (if any)."""
    texts: list[str] = []
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            frame = await asyncio.wait_for(ws.recv(), 10)
            if isinstance(frame, str):
                texts.append(frame)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == code, closed.value
    if error is None:
        assert texts == []
    else:
        assert len(texts) == 1, texts
        reply = json.loads(texts[0])
        assert reply["type"] == "error" and error in reply["message"], reply
    return closed.value.rcvd.reason


def _deploy(**limits: Any) -> Deployment:
    return Deployment(Config(port=0, workers=1, **limits)).start()


async def _connections(deployment: Deployment) -> int:
    stats = await asyncio.to_thread(deployment.stats)
    return stats[0]["connections"]


# -- permissions ------------------------------------------------------------------------------------


async def test_read_only_client_cannot_register_a_service(raw):
    alice = await raw()
    reader = await raw(token=await token_for(alice, "r"), workspace=alice.info["workspace"])
    writer = await raw(token=await token_for(alice, "rw"), workspace=alice.info["workspace"])
    service = {"id": "notes", "name": "notes", "type": "functions", "config": {"visibility": "public"}}

    refused = await call_manager(reader, "register_service", service)
    assert refused["method"].endswith(".reject")
    assert "Permission denied" in refused["args"][0]["_rvalue"]
    accepted = await call_manager(writer, "register_service", service)
    assert accepted["method"].endswith(".resolve")

    listed = {s["id"] for s in await alice.call_manager("list_services")}
    assert f"{alice.info['workspace']}/{writer.info['client_id']}:notes" in listed
    assert not any(s.startswith(f"{alice.info['workspace']}/{reader.info['client_id']}:") for s in listed)


async def test_read_only_client_can_still_call_the_manager(raw):
    alice = await raw()
    reader = await raw(token=await token_for(alice, "r"), workspace=alice.info["workspace"])
    assert await reader.call_manager("echo", "hi") == "hi"
    assert {"id": reader.address} in await reader.call_manager("list_clients")


async def test_read_only_client_cannot_broadcast(raw):
    alice = await raw()
    await subscribe(alice, "news")
    reader = await raw(token=await token_for(alice, "r"), workspace=alice.info["workspace"])
    writer = await raw(token=await token_for(alice, "rw"), workspace=alice.info["workspace"])

    await reader.ws.send(encode({"type": "news", "to": "*", "data": "from the reader"}))
    error = await reader.next_text()
    assert error["type"] == "error" and "read-only" in error["message"], error
    await writer.ws.send(encode({"type": "news", "to": "*", "data": "from the writer"}))
    got = await alice.next_binary()
    assert got["data"] == "from the writer"  # the reader's event never arrived before it
    assert got["from"] == writer.address
    with pytest.raises(asyncio.TimeoutError):
        await alice.next_binary(timeout=0.3)


async def test_read_only_token_cannot_mint_tokens_or_reach_other_workspaces(raw, router):
    alice = await raw()
    reader = await raw(token=await token_for(alice, "r"), workspace=alice.info["workspace"])
    refused = await call_manager(reader, "generate_token", {"permission": "a"})
    assert refused["method"].endswith(".reject") and "Permission denied" in refused["args"][0]["_rvalue"]
    eve = await raw()
    async with websockets.connect(router.url) as ws:  # a token of alice's cannot enter eve's workspace
        await ws.send(json.dumps({"token": await token_for(alice, "rw"), "workspace": eve.info["workspace"]}))
        await expect_refusal(ws, code=1008, error="does not exist or is not accessible")


async def test_generate_token_refuses_malformed_requests(raw):
    alice = await raw()
    for config, message in (
        ({"expires_in": -5}, "expires_in"),
        ({"expires_in": "soon"}, "expires_in"),
        ({"client_id": ["x"]}, "must be strings"),
        ({"workspace": {"a": 1}}, "must be strings"),
        ({"permission": ["a"]}, "must be strings"),
        ({"permission": "root"}, "invalid permission"),
    ):
        refused = await call_manager(alice, "generate_token", config)
        assert refused["method"].endswith(".reject"), config
        assert message in refused["args"][0]["_rvalue"], (config, refused["args"][0]["_rvalue"])
    assert await alice.call_manager("generate_token", {"expires_in": "60", "permission": "read"})


# -- isolation between workspaces -------------------------------------------------------------------


async def test_broadcasts_never_leave_the_senders_workspace(raw):
    alice = await raw()
    friend = await raw(token=await token_for(alice, "rw"), workspace=alice.info["workspace"])
    eve = await raw()
    for client in (alice, friend, eve):
        await subscribe(client, "news")

    await eve.ws.send(encode({"type": "news", "to": "*", "data": "eve's"}))
    assert (await eve.next_binary())["data"] == "eve's"  # her own workspace: herself
    await alice.ws.send(encode({"type": "news", "to": "*", "data": "alice's"}))
    for member in (alice, friend):
        got = await member.next_binary()
        assert (got["data"], got["ws"]) == ("alice's", alice.info["workspace"])
    # Addressing eve's workspace explicitly is refused too (docs/protocol.md).
    await alice.ws.send(encode({"type": "news", "to": f"{eve.info['workspace']}/*", "data": "sneaky"}))
    for member in (alice, friend, eve):
        with pytest.raises(asyncio.TimeoutError):
            await member.next_binary(timeout=0.3)


async def test_protected_services_are_invisible_across_workspaces(connect, raw):
    alice = await connect()
    await alice.register_service({"id": "secret", "hello": lambda: "secret"})  # protected is the default
    await alice.register_service({"id": "open", "config": {"visibility": "public"}, "hello": lambda: "open"})
    alice_ws = alice.config.workspace
    eve = await connect()

    with pytest.raises(Exception, match="(?i)not found|permission|denied"):
        await eve.get_service(f"{alice_ws}/secret")
    with pytest.raises(Exception, match="(?i)not found|permission|denied"):
        await eve.get_service_info(f"{alice_ws}/secret")
    visible = {s["id"].rsplit(":", 1)[-1] for s in await eve.list_services(alice_ws)}
    assert "open" in visible and "secret" not in visible
    assert await (await eve.get_service(f"{alice_ws}/open")).hello() == "open"

    # Knowing the address is not enough: the frame is delivered with eve's stamped workspace,
    # and the provider's RPC refuses a protected method to another workspace.
    mallory = await raw()
    await mallory.ws.send(
        encode(
            {
                "type": "method",
                "to": f"{alice_ws}/{alice.config.client_id}",
                "method": "services.secret.hello",
                "session": "steal",
                "ws": alice_ws,
                "from": f"{alice_ws}/{alice.config.client_id}",
            },
            {"args": [], "promise": "*", "t": 15},
        )
    )
    while True:
        reply = await mallory.next_binary(timeout=10)
        if reply.get("method", "").startswith("steal."):
            break
    assert reply["method"] == "steal.reject"
    assert "Permission denied" in reply["args"][0]["_rvalue"]


async def test_authorized_workspaces_open_a_protected_service_to_one_workspace(connect):
    friend = await connect()
    stranger = await connect()
    alice = await connect()
    await alice.register_service(
        {"id": "shared", "config": {"authorized_workspaces": [friend.config.workspace]}, "hello": lambda: "shared"}
    )
    alice_ws = alice.config.workspace
    assert await (await friend.get_service(f"{alice_ws}/shared")).hello() == "shared"
    with pytest.raises(Exception, match="(?i)not found|permission|denied"):
        await stranger.get_service(f"{alice_ws}/shared")


# -- limits on a dedicated router ---------------------------------------------------------------------

STRICT = dict(
    handshake_timeout=0.5, max_message_size=64 * 1024, message_rate=50.0, message_burst=100, max_services_per_client=3
)


@pytest.fixture(scope="module")
def strict(ray_runtime):
    """A router with small limits: 0.5 s handshake, 64 KiB frames, 50 frames/s burst 100, 3 services."""
    deployment = _deploy(**STRICT)
    yield deployment
    deployment.stop()


async def test_handshake_timeout_closes_1008_with_an_error(strict):
    started = time.monotonic()
    async with websockets.connect(strict.url) as ws:
        await expect_refusal(ws, code=1008, error="no auth frame in time")
    assert time.monotonic() - started < 5


async def test_frame_over_max_message_size_closes_1009(strict):
    client = await RawPeer.connect(strict.url)
    try:
        limit = STRICT["max_message_size"]
        ok = encode(
            {"type": "method", "to": client.info["client_id"], "method": "big"}, {"args": [b"x" * (limit - 200)]}
        )
        assert len(ok) <= limit
        await client.ws.send(ok)
        assert (await client.next_binary())["method"] == "big"  # just under the limit: delivered
        await client.ws.send(b"\x80" + b"x" * limit)
        await expect_refusal(client.ws, code=1009, error=None)  # websockets' own close, no error frame
    finally:
        await client.ws.close()
    # The worker is fine and serves the next client.
    again = await RawPeer.connect(strict.url)
    await again.ws.close()


async def test_message_rate_over_the_bucket_closes_1008_with_an_error(strict):
    client = await RawPeer.connect(strict.url)
    try:
        ping = json.dumps({"type": "ping"})
        for _ in range(60):  # under the burst (100): all answered
            await client.ws.send(ping)
        for _ in range(60):
            assert await client.next_text() == {"type": "pong"}
        for _ in range(200):  # over burst + refill
            try:
                await client.ws.send(ping)
            except websockets.ConnectionClosed:
                break
        texts = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                frame = await asyncio.wait_for(client.ws.recv(), 10)
                if isinstance(frame, str):
                    texts.append(json.loads(frame))
        assert closed.value.rcvd.code == 1008
        assert "rate limit" in closed.value.rcvd.reason
        errors = [t for t in texts if t["type"] == "error"]
        assert len(errors) == 1 and "message rate limit exceeded (50/s, burst 100)" in errors[0]["message"]
        assert all(t == {"type": "pong"} for t in texts if t["type"] != "error")
    finally:
        await client.ws.close()


async def test_a_client_under_the_rate_is_never_cut(strict):
    client = await RawPeer.connect(strict.url)
    try:
        for _ in range(40):  # 40 frames at ~100/s: the bucket refills at 50/s from 100
            await client.ws.send(json.dumps({"type": "ping"}))
            assert await client.next_text() == {"type": "pong"}
            await asyncio.sleep(0.01)
    finally:
        await client.ws.close()


async def test_services_per_client_limit(strict):
    client = await RawPeer.connect(strict.url)
    try:
        replies = [
            await call_manager(client, "register_service", {"id": f"svc{i}", "type": "functions"}) for i in range(4)
        ]
        assert [r["method"].rsplit(".", 1)[1] for r in replies] == ["resolve"] * 3 + ["reject"]
        assert "limit of 3 services" in replies[3]["args"][0]["_rvalue"]
        # Re-registering an existing id is an update, not a new service.
        assert (await call_manager(client, "register_service", {"id": "svc0"}))["method"].endswith(".resolve")
    finally:
        await client.ws.close()


async def test_services_per_client_limit_reaches_a_hypha_rpc_caller(strict):
    from hypha_rpc import connect_to_server

    server = await connect_to_server({"server_url": strict.url, "method_timeout": 20})
    try:
        errors = []
        for i in range(4):
            try:
                await server.register_service({"id": f"svc{i}", "hello": lambda: "hi"})
            except Exception as exc:
                errors.append(str(exc))
        # hypha-rpc's own built-in service is registered too; it counts here (Hypha leaves it out).
        assert errors and all("limit of 3 services" in e for e in errors), errors
    finally:
        await server.disconnect()


# -- connection cap ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(ray_runtime):
    """A router whose only worker takes two connections."""
    deployment = _deploy(max_connections_per_worker=2)
    yield deployment
    deployment.stop()


async def test_max_connections_per_worker_refuses_with_1013(tiny, raw_peers):
    first = await RawPeer.connect(tiny.url)
    second = await RawPeer.connect(tiny.url)
    try:
        async with websockets.connect(tiny.url) as ws:
            await ws.send(json.dumps({}))
            reason = await expect_refusal(ws, code=1013, error="too many connections")
            assert "try again later" in reason

        from hypha_rpc import connect_to_server

        with pytest.raises(ConnectionAbortedError, match="too many connections"):
            await connect_to_server({"server_url": tiny.url, "method_timeout": 10})

        # A client replacing its own live socket is not a new connection: allowed when full.
        replacement = await raw_peers(tiny.url, reconnection_token=second.info["reconnection_token"])
        await expect_refusal(second.ws, code=4000, error=None)
        second = replacement

        # A reconnecting client is refused with a bare 1013 (an error frame would make
        # hypha-rpc give up reconnecting): first leaves, someone takes its place, first returns.
        token = first.info["reconnection_token"]
        await first.ws.close()
        await _wait_connections(tiny, 1)
        newcomer = await raw_peers(tiny.url)
        async with websockets.connect(tiny.url) as ws:
            await ws.send(json.dumps({"reconnection_token": token}))
            await expect_refusal(ws, code=1013, error=None)
        await newcomer.ws.close()
        await _wait_connections(tiny, 1)
        back = await raw_peers(tiny.url, reconnection_token=token)  # room again: welcome back
        assert back.address == first.address
        await back.ws.close()
    finally:
        await first.ws.close()
        await second.ws.close()


async def _wait_connections(deployment: Deployment, count: int) -> None:
    async def settled() -> bool:
        return await _connections(deployment) == count

    await eventually(settled, timeout=10)


# -- idle timeout ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sleepy(ray_runtime):
    """A router that closes connections silent for 1 s."""
    deployment = _deploy(idle_timeout=1.0)
    yield deployment
    deployment.stop()


async def test_idle_connection_is_closed_1001_with_an_error(sleepy, raw_peers):
    client = await raw_peers(sleepy.url)
    started = time.monotonic()
    reason = await expect_refusal(client.ws, code=1001, error="idle timeout (1 s without a message)")
    assert "idle timeout" in reason
    assert 0.8 < time.monotonic() - started < 5
    await _wait_connections(sleepy, 0)


async def test_any_data_frame_keeps_a_connection_alive(sleepy):
    client = await RawPeer.connect(sleepy.url)
    try:
        for _ in range(8):  # 2.4 s of text pings every 0.3 s: more than twice the timeout
            await asyncio.sleep(0.3)
            await client.ws.send(json.dumps({"type": "ping"}))
            assert await client.next_text() == {"type": "pong"}
        await asyncio.sleep(0.3)
        await client.ws.send(encode({"type": "method", "to": client.info["client_id"], "method": "still-here"}))
        assert (await client.next_binary())["method"] == "still-here"
    finally:
        await client.ws.close()
