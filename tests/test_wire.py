"""Wire-level behaviour of the gateway, checked with raw WebSocket clients (``benchmarks.wire.RawPeer``,
through the ``raw`` fixture of conftest.py)."""

from __future__ import annotations

import asyncio
import json

import msgpack
import pytest
import websockets

from rhizomorph.protocol.envelope import encode


async def test_upgrade_on_slash_ws_and_query_parameters_ignored(raw):
    for path in ("/", "/ws", "/ws?client_id=x&workspace=y"):
        client = await raw(path)
        assert client.info["manager_id"].startswith("manager-")
        assert client.info["workspace"].startswith("ws-user-anonymouz-")
        assert client.info["reconnection_token"]


async def test_text_ping_and_refresh_token(raw):
    client = await raw()
    await client.ws.send(json.dumps({"type": "ping"}))
    assert await client.next_text() == {"type": "pong"}
    await client.ws.send(json.dumps({"type": "refresh_token"}))
    reply = await client.next_text()
    assert reply["type"] == "reconnection_token" and reply["reconnection_token"]


async def test_bad_auth_frame_gets_error_and_policy_close(router):
    for first in (
        "not json",
        json.dumps([1, 2]),
        json.dumps({"client_id": "a/b"}),
        json.dumps({"reconnection_token": "forged"}),
    ):
        async with websockets.connect(router.url) as ws:
            await ws.send(first)
            reply = json.loads(await asyncio.wait_for(ws.recv(), 5))
            assert reply["type"] == "error" and reply["message"]
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 5)
            assert closed.value.rcvd.code == 1008


async def test_stamping_overwrites_forged_from_ws_user_and_keeps_payload(raw):
    alice = await raw()
    bob = await raw()
    payload = {"args": [b"\x00\x01payload" * 100], "promise": "*"}
    forged = {
        "type": "method",
        "to": bob.address,
        "method": "services.x.y",
        "session": "s1",
        "from": "victim-ws/victim",
        "ws": "victim-ws",
        "user": {"id": "root"},
    }
    await alice.ws.send(encode(forged, payload))
    got = await bob.next_binary()
    assert got["from"] == alice.address
    assert got["ws"] == alice.info["workspace"]
    assert got["user"]["id"] == alice.info["user"]["id"]
    assert got["args"] == payload["args"]


async def test_fragmented_binary_message_is_routed_whole_and_in_order(raw):
    # Binary messages are routed straight from the socket's data callback (rhizomorph/gateway/connection.py);
    # a message sent in fragments must still arrive whole, before the message sent after it.
    alice = await raw()
    bob = await raw()
    frame = encode({"type": "method", "to": bob.address, "method": "one"}, {"args": [b"f" * 30000]})
    await alice.ws.send([frame[:10], frame[10:20000], frame[20000:]])  # an iterable: one fragment each
    await alice.ws.send(encode({"type": "method", "to": bob.address, "method": "two"}))
    first, second = await bob.next_binary(), await bob.next_binary()
    assert (first["method"], first["args"], second["method"]) == ("one", [b"f" * 30000], "two")


async def test_too_many_fragments_close_the_connection_with_1009(raw):
    alice = await raw()
    with pytest.raises(websockets.ConnectionClosed):
        await alice.ws.send([b""] * 5000)
        await asyncio.wait_for(alice.ws.recv(), 10)
    assert alice.ws.close_code == 1009


async def test_bare_target_is_resolved_in_the_senders_workspace(raw, router):
    alice = await raw()
    # A second client in alice's workspace needs a token from the manager; use a raw call.
    token = await alice.call_manager("generate_token")
    bob = await raw(token=token, workspace=alice.info["workspace"])
    await alice.ws.send(encode({"type": "method", "to": bob.info["client_id"], "method": "hello"}))
    got = await bob.next_binary()
    assert got["to"] == bob.address and got["from"] == alice.address


async def test_session_call_to_absent_target_gets_synthetic_reject(raw):
    alice = await raw()
    ghost = f"{alice.info['workspace']}/never-was"
    await alice.ws.send(
        encode(
            {"type": "method", "to": ghost, "method": "services.a.b", "session": "S42"}, {"args": [1], "promise": "*"}
        )
    )
    reply = await alice.next_binary()
    assert reply["method"] == "S42.reject"
    assert reply["from"] == ghost
    assert reply["args"][0]["_rtype"] == "error"
    assert "not connected" in reply["args"][0]["_rvalue"]


async def test_burst_to_absent_target_asks_the_registry_once_and_answers_in_order(raw, router):
    # Frames for a target missing from the worker's replica wait behind one registry lookup,
    # in order; they do not each make a Ray call.
    alice = await raw()
    ghost = f"{alice.info['workspace']}/not-yet"
    before = sum(s["registry_lookups"] for s in router.stats())
    for i in range(50):
        await alice.ws.send(
            encode(
                {"type": "method", "to": ghost, "method": "services.a.b", "session": f"S{i}"},
                {"args": [i], "promise": "*"},
            )
        )
    replies = [await alice.next_binary() for _ in range(50)]
    assert [r["method"] for r in replies] == [f"S{i}.reject" for i in range(50)]
    lookups = sum(s["registry_lookups"] for s in router.stats()) - before
    assert 1 <= lookups <= 5, lookups  # one per burst that found no lookup under way


async def test_sessionless_message_to_absent_target_tells_the_sender(raw):
    alice = await raw()
    ghost = "some-ws/gone"
    await alice.ws.send(encode({"type": "method", "to": ghost, "method": "S1.resolve"}, {"args": [1]}))
    reply = await alice.next_binary()
    assert reply["type"] == "peer_not_found"
    assert reply["peer_id"] == ghost


async def test_malformed_binary_frames_get_an_error_and_the_connection_lives(raw):
    alice = await raw()
    for junk in (b"", b"\xc1", msgpack.packb([1, 2, 3]), msgpack.packb({"type": "method"}), msgpack.packb({"to": 5})):
        await alice.ws.send(junk)
        error = await alice.next_text()
        assert error["type"] == "error" and "unroutable" in error["message"]
    await alice.ws.send(json.dumps({"type": "ping"}))
    assert await alice.next_text() == {"type": "pong"}


async def test_broadcast_to_another_workspace_is_refused(raw):
    alice = await raw()
    bob = await raw()
    await bob.ws.send(
        encode(
            {
                "type": "method",
                "to": f"*/{bob.info['manager_id']}",
                "method": "services.default.subscribe",
                "session": "sub",
            },
            {"args": ["news"], "promise": "*"},
        )
    )
    assert (await bob.next_binary())["method"] == "sub.resolve"
    await alice.ws.send(encode({"type": "news", "to": f"{bob.info['workspace']}/*", "data": 1}))
    with pytest.raises(asyncio.TimeoutError):
        await bob.next_binary(timeout=0.5)


async def test_reconnection_token_restores_identity_and_supersedes_old_socket(raw, router):
    first = await raw()
    again = await raw(reconnection_token=first.info["reconnection_token"])
    assert again.info["workspace"] == first.info["workspace"]
    assert again.info["client_id"] == first.info["client_id"]
    with pytest.raises(websockets.ConnectionClosed) as closed:
        while True:
            await asyncio.wait_for(first.ws.recv(), 5)
    assert closed.value.rcvd.code == 4000


async def test_duplicate_live_client_id_is_refused(raw, router):
    alice = await raw()
    token = await alice.call_manager("generate_token")
    async with websockets.connect(router.url) as ws:
        await ws.send(
            json.dumps({"client_id": alice.info["client_id"], "workspace": alice.info["workspace"], "token": token})
        )
        reply = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply == {"type": "error", "message": "Client already exists and is active"}


async def test_plain_http_health_check(router):
    import urllib.request

    url = router.url.replace("ws://", "http://") + "/health"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read())
    assert body == b"ok\n"
