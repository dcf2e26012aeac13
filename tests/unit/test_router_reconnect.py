"""A router with fakes (tests/unit/test_router.py's): messages for a client between its socket's
close and its reconnect. The sequence of the JS reconnect suite: a client calls a service, the
router closes the client's socket, the reply comes before the client is back."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from rhizomorph.actors.peers import KEPT
from rhizomorph.gateway.router import Router
from rhizomorph.protocol import envelope, frames
from tests.unit.test_router import FakePeer, FakeRegistry, FakeSocket, call, join, make_router, settle


def reply(to: str, session: str = "s1") -> bytes:
    """The answer to call ``session``: a message without a session of its own."""
    return envelope.encode({"type": "method", "to": to, "method": f"{session}.resolve"}, {"args": ["done"]})


def methods(socket) -> list[str]:
    return [h["method"] for h in socket.headers() if h["type"] == "method"]


async def reply_while_away(router: Router) -> FakeSocket:
    """``ws/a`` loses its connection, then ``ws/c`` answers its call s1; returns c's socket."""
    a, _ = await join(router, "a")
    c, c_socket = await join(router, "c")
    await router.disconnect(a)
    router.route(c, reply("a"))
    await settle()
    return c_socket


async def test_a_reply_that_comes_while_its_caller_reconnects_reaches_the_new_socket():
    registry = FakeRegistry()
    router = make_router(registry)
    a, _ = await join(router, "a")
    c, c_socket = await join(router, "c")
    router.route(a, call("c", session="s1"))
    await settle()
    assert await router.close_client("ws/a")  # as the control service asks the worker to
    await router.disconnect(a)  # serve's cleanup after that close

    router.route(c, reply("a"))  # c answers before a is back
    await settle()
    assert registry.lookups == []  # kept, not looked up and refused
    assert [h["type"] for h in c_socket.headers() if h["type"] != "method"] == []  # c is not told

    a_new, a_again = await join(router, "a", is_reconnect=True)  # with its reconnection token
    await settle()
    assert a_again.sent == []  # it does not listen before it sends its first frame
    router.route(a_new, call("c", session="s2"))  # hypha-rpc's first call after a reconnect
    await settle()
    [header] = [h for h in a_again.headers() if h["type"] == "method"]
    assert (header["method"], header["from"]) == ("s1.resolve", "ws/c")
    assert "ws/a" not in router.reconnects.state and not router.reconnects.unheard


async def test_a_reconnected_client_that_sends_nothing_gets_what_was_kept_after_the_grace():
    router = make_router(reconnect_grace=0.05)
    await reply_while_away(router)
    _, a_again = await join(router, "a", is_reconnect=True)
    await settle()
    assert a_again.sent == []
    await asyncio.sleep(0.2)
    assert methods(a_again) == ["s1.resolve"]


async def test_frames_for_the_new_socket_wait_behind_what_was_kept():
    router = make_router(enable_message_batching=False)
    a, _ = await join(router, "a")
    c, _ = await join(router, "c")
    await router.disconnect(a)
    router.route(c, reply("a", "s1"))
    a_new, a_again = await join(router, "a", is_reconnect=True)
    router.route(c, reply("a", "s2"))  # after the reconnect: local, but behind s1
    await settle()
    assert a_again.sent == []
    router.route(a_new, call("c", session="s3"))
    await settle()
    assert methods(a_again) == ["s1.resolve", "s2.resolve"]


async def test_a_call_to_a_client_awaited_back_is_still_refused_at_once():
    router = make_router()
    a, _ = await join(router, "a")
    c, c_socket = await join(router, "c")
    await router.disconnect(a)  # its connection was lost

    router.route(c, call("a", session="s9"))
    await settle()
    assert methods(c_socket) == ["s9.reject"]
    # Nor is a chunk kept: its stream began on the socket that closed.
    assert not router.reconnects.awaits("ws/a", frames.encode_chunk(7, 3, False, b"x"), None)


async def test_what_its_queue_never_wrote_waits_too_but_calls_in_it_are_refused():
    router = make_router(enable_message_batching=False)
    a, a_socket = await join(router, "a")
    c, c_socket = await join(router, "c")
    a_socket.block = asyncio.Event()  # a's socket takes no writes: the first frame stays in flight
    router.route(c, reply("a", "s0"))
    router.route(c, call("a", session="s2"))
    router.route(c, reply("a", "s3"))
    await settle()
    await router.disconnect(a)
    await settle()
    assert methods(c_socket) == ["s2.reject"]

    a_new, a_again = await join(router, "a", is_reconnect=True)
    router.route(a_new, call("c", session="s4"))
    await settle()
    assert methods(a_again) == ["s3.resolve"]


async def test_a_reply_kept_for_a_client_that_never_comes_back_is_answered_after_the_grace():
    router = make_router(reconnect_grace=0.05)
    c_socket = await reply_while_away(router)
    assert c_socket.headers() == []

    await asyncio.sleep(0.2)
    [header] = c_socket.headers()
    assert (header["type"], header["peer_id"]) == ("peer_not_found", "ws/a")
    assert len(router.reconnects.state) == 0


async def test_a_client_that_closed_its_own_socket_is_not_waited_for():
    router = make_router()
    a, a_socket = await join(router, "a")
    c, c_socket = await join(router, "c")
    a_socket.protocol = SimpleNamespace(close_rcvd_then_sent=True)  # its close frame came first
    await router.disconnect(a)
    router.route(c, reply("a"))
    await settle()
    [header] = c_socket.headers()
    assert (header["type"], header["peer_id"]) == ("peer_not_found", "ws/a")


async def test_what_was_kept_follows_a_client_that_reconnected_on_another_worker():
    router = make_router()
    peer = FakePeer()
    router.peers.set_peers({"w2": peer})
    await reply_while_away(router)

    router.update_directory([("ws/a", "w2")])  # its claim on w2, pushed by the registry
    await settle()
    [(target, kind, frame)] = peer.delivered
    assert (target, kind) == ("ws/a", KEPT) and envelope.parse(frame).header["method"] == "s1.resolve"
    assert "ws/a" not in router.reconnects.state


async def test_what_another_worker_kept_waits_until_the_reconnected_client_listens():
    router = make_router()  # the worker the client reconnected on
    a, a_socket = await join(router, "a", is_reconnect=True)
    router.deliver([("ws/a", KEPT, envelope.encode({"type": "method", "to": "ws/a", "method": "s1.resolve"}))])
    await settle()
    assert a_socket.sent == []
    router.route(a, call("ws/a", session="s2"))  # its first frame
    await settle()
    assert methods(a_socket) == ["s1.resolve", "services.svc.f"]


async def test_a_reject_for_a_client_awaited_back_waits_for_it_too():
    router = make_router()
    a, _ = await join(router, "a")
    router.route(a, call("ws/nobody", session="s5"))  # the lookup is under way when a leaves
    await router.disconnect(a)
    await settle()

    a_new, a_again = await join(router, "a", is_reconnect=True)
    router.route(a_new, envelope.encode({"type": "method", "to": "ws/a", "method": "hello"}))
    await settle()
    assert methods(a_again) == ["s5.reject", "hello"]


async def test_what_another_worker_kept_waits_here_for_an_admission_not_done_yet():
    router = make_router()
    router.deliver([("ws/a", KEPT, envelope.encode({"type": "method", "to": "ws/a", "method": "s1.resolve"}))])
    await settle()
    assert "ws/a" in router.reconnects.state  # its claim reached the registry, its admission here is not done

    a, a_socket = await join(router, "a", is_reconnect=True)
    router.route(a, call("ws/a", session="s2"))
    await settle()
    assert methods(a_socket) == ["s1.resolve", "services.svc.f"]
