"""The router of one worker with fakes at its edges: fake sockets, a fake registry and fake peer
actors behind the real peer links. No Ray, no network."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest

from rhizomorph.actors import peers as peers_module
from rhizomorph.actors.peers import CONTROL, SOCKET_LOST, interest_item
from rhizomorph.config import Config
from rhizomorph.gateway.connection import ClientConnection
from rhizomorph.gateway.delivery import WRITES
from rhizomorph.gateway.manager import ManagerError
from rhizomorph.gateway.router import Router
from rhizomorph.protocol import envelope, frames
from rhizomorph.protocol.close_codes import CloseCode
from rhizomorph.protocol.handshake import Identity
from rhizomorph.protocol.interest import InterestUpdate


class FakeSocket:
    """The websocket end of a client: records what the router writes; ``block`` stalls writes."""

    def __init__(self) -> None:
        self.sent: list[bytes | str] = []
        self.close_code: int | None = None
        self.transport = None
        self.block: asyncio.Event | None = None

    async def send(self, data: bytes | str) -> None:
        if self.block is not None:
            await self.block.wait()
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.close_code = code

    def headers(self) -> list[dict[str, Any]]:
        return [next(iter(_unpacker(f))) for f in self.sent if isinstance(f, bytes) and not frames.is_v4(f)]

    def messages(self) -> list[dict[str, Any]]:
        """Whole messages (header and the second segment), as a client decodes them."""
        return [envelope.decode(f) for f in self.sent if isinstance(f, bytes) and not frames.is_v4(f)]

    def texts(self) -> list[str]:
        return [f for f in self.sent if isinstance(f, str)]


def _unpacker(frame: bytes) -> msgpack.Unpacker:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(frame)
    return unpacker


class FakeRegistry:
    def __init__(self, owners: dict[str, str] | None = None) -> None:
        self.owners = owners or {}
        self.lookups: list[str] = []
        self.released: list[str] = []

    async def claim_client(self, address, worker_id, generation, user_id, supersede):
        return None

    async def release_client(self, address, generation):
        self.released.append(address)
        return [{"id": f"{address}:svc", "type": "echo"}]

    async def locate(self, address):
        self.lookups.append(address)
        await asyncio.sleep(0)
        return self.owners.get(address)


class FakeRemote:
    def __init__(self, call) -> None:
        self.remote = call


class PeerDied(Exception):
    """Stands for Ray's ``ActorDiedError`` (``Peers.dead_peer_errors``)."""


class FakePeer:
    """A peer worker's actor handle as the links call it: ``deliver.remote(items)``. Control
    items (interest updates) are kept apart from the frames."""

    def __init__(self, fail: bool = False) -> None:
        self.delivered: list[tuple[str, str | None, bytes]] = []
        self.control: list[InterestUpdate] = []
        self.lost: list[str] = []  # SOCKET_LOST control items: the addresses
        self.closed: list[str] = []
        self.fail = fail
        self.dead = False  # close_client raises as a dead actor's call does
        self.deliver = FakeRemote(self._deliver)
        self.close_client = FakeRemote(self._close_client)

    async def _deliver(self, items):
        if self.fail:
            raise ConnectionError("peer died")
        for target, event_type, frame in items:
            if target == CONTROL and event_type == SOCKET_LOST:
                self.lost.append(frame.decode())
            elif target == CONTROL:
                self.control.append(InterestUpdate.decode(frame))
            else:
                self.delivered.append((target, event_type, frame))

    async def _close_client(self, address, code, generation):
        if self.dead:
            raise PeerDied("the actor died")
        self.closed.append(address)
        return True


async def settle(rounds: int = 10) -> None:
    for _ in range(rounds):
        await asyncio.sleep(0)


def make_router(registry: FakeRegistry | None = None, **config: Any) -> Router:
    return Router(Config(port=0, **config), "w1", registry or FakeRegistry())


async def join(
    router: Router, client_id: str, *, wire_v4: bool = False, is_reconnect: bool = False
) -> tuple[ClientConnection, FakeSocket]:
    socket = FakeSocket()
    identity = Identity(
        workspace="ws", client_id=client_id, user_id=f"u-{client_id}", is_anonymous=True, workspaces={"ws": "rw"}
    )
    conn = ClientConnection(
        socket,
        identity,
        router.batch_policy,
        wire_v4=wire_v4,
        max_queue_bytes=router.config.max_queue_bytes,
        on_evicted=router.on_evicted,
    )
    await router.admit(conn, is_reconnect=is_reconnect)
    return conn, socket


def call(to: str, session: str | None = "s1", **extra: Any) -> bytes:
    header = {"type": "method", "to": to, "method": "services.svc.f", **extra}
    if session is not None:
        header["session"] = session
    return envelope.encode(header, {"args": [1]})


# -- local delivery ----------------------------------------------------------------------------


async def test_a_call_to_a_local_client_is_stamped_and_queued():
    router = make_router()
    a, _ = await join(router, "a")
    _, b_socket = await join(router, "b")

    router.route(a, call("b", from_="forged"))
    await settle()

    [header] = b_socket.headers()
    assert (header["from"], header["to"], header["ws"]) == ("ws/a", "ws/b", "ws")
    assert header["user"]["id"] == "u-a"


async def test_unreadable_input_gets_an_error_frame_and_routes_nothing():
    router = make_router()
    a, a_socket = await join(router, "a")

    router.route(a, b"\xc1 not msgpack")
    await settle()

    [text] = a_socket.texts()
    assert "unroutable frame" in text
    assert router.counters.dropped == 1


# -- the registry ------------------------------------------------------------------------------


async def test_a_burst_to_an_unknown_target_makes_one_lookup_and_every_call_is_rejected_in_order():
    registry = FakeRegistry()
    router = make_router(registry)
    a, a_socket = await join(router, "a")

    for session in ("s1", "s2", "s3"):
        router.route(a, call("nobody", session=session))
    await settle()

    assert registry.lookups == ["ws/nobody"]
    assert [h["method"] for h in a_socket.headers()] == ["s1.reject", "s2.reject", "s3.reject"]
    assert router.stats()["refused"] == {"reject": 3}


async def test_a_lookup_that_finds_a_peer_sends_what_waited_there_in_order():
    registry = FakeRegistry({"ws/c": "w2"})
    router = make_router(registry)
    peer = FakePeer()
    router.peers.set_peers({"w1": object(), "w2": peer})
    a, _ = await join(router, "a")

    router.route(a, call("c", session="s1"))
    router.route(a, call("c", session="s2"))
    await settle()

    assert [(t, e) for t, e, _ in peer.delivered] == [("ws/c", None), ("ws/c", None)]
    assert [envelope.parse(f).header["session"] for _, _, f in peer.delivered] == ["s1", "s2"]
    assert router.replica.owner("ws/c") == "w2"
    router.route(a, call("c", session="s3"))  # now known: no second lookup
    await settle()
    assert registry.lookups == ["ws/c"] and len(peer.delivered) == 3


# -- peers -------------------------------------------------------------------------------------


async def test_a_client_of_a_peer_is_reached_over_its_link():
    router = make_router()
    peer = FakePeer()
    router.peers.set_peers({"w2": peer})
    router.update_directory([("ws/c", "w2")])
    a, _ = await join(router, "a")

    router.route(a, call("c"))
    await settle()

    [(target, event_type, frame)] = peer.delivered
    assert (target, event_type, envelope.parse(frame).header["from"]) == ("ws/c", None, "ws/a")


async def test_calls_lost_with_a_peer_are_rejected_to_their_senders():
    router = make_router()
    router.peers.set_peers({"w2": FakePeer(fail=True)})
    router.update_directory([("ws/c", "w2")])
    a, a_socket = await join(router, "a")

    router.route(a, call("c", session="s9"))
    await settle()

    [header] = a_socket.headers()
    assert header["method"] == "s9.reject" and header["from"] == "ws/c"


async def test_a_frame_forwarded_by_a_peer_for_a_client_that_is_gone_is_answered_to_its_remote_sender():
    router = make_router()
    peer = FakePeer()
    router.peers.set_peers({"w2": peer})
    router.update_directory([("ws/remote", "w2")])
    frame = envelope.encode({"type": "method", "to": "ws/gone", "from": "ws/remote", "session": "s1"})

    router.deliver([("ws/gone", None, frame)])
    await settle()

    [(target, _, answer)] = peer.delivered
    assert target == "ws/remote" and envelope.parse(answer).header["method"] == "s1.reject"


async def test_callers_of_a_client_that_leaves_for_good_are_told_at_once():
    router = make_router()
    router.peers.set_peers({"w2": FakePeer()})
    router.update_directory([("ws/c", "w2")])
    a, a_socket = await join(router, "a")
    router.route(a, call("c"))

    router.update_directory([("ws/c", None)])
    await settle()

    [header] = a_socket.headers()
    assert (header["type"], header["peer_id"]) == ("peer_not_found", "ws/c")


class MovingRegistry(FakeRegistry):
    """Claims of ``ws/c`` find its previous socket on worker w2 (a reconnect from there)."""

    async def claim_client(self, address, worker_id, generation, user_id, supersede):
        return {"worker_id": "w2", "generation": "old"} if address == "ws/c" else None


@pytest.mark.parametrize("old_worker_died", [True, False])
async def test_callers_are_told_when_a_client_reconnects_here_after_its_worker_died(old_worker_died):
    router = make_router(MovingRegistry())
    router.peers.dead_peer_errors = (PeerDied,)
    old_worker, other = FakePeer(), FakePeer()
    old_worker.dead = old_worker_died
    router.peers.set_peers({"w2": old_worker, "w3": other})
    router.update_directory([("ws/c", "w2")])
    a, a_socket = await join(router, "a")
    router.route(a, call("c", session="s1"))  # delivered to w2, which dies before c gets it
    await settle()

    await join(router, "c", is_reconnect=True)
    await settle()

    if old_worker_died:  # that call is lost: a is told now, and so are the callers on the peers
        [header] = a_socket.headers()
        assert (header["type"], header["peer_id"]) == ("peer_not_found", "ws/c")
        assert "gateway worker that was lost" in header["error"]
        assert other.lost == ["ws/c"]
    else:  # the old socket was closed as superseded; c answers what it had from its new one
        assert old_worker.closed == ["ws/c"]
        assert a_socket.headers() == [] and other.lost == []


@pytest.mark.parametrize("how", ["left", "socket lost"])
async def test_the_managers_own_call_to_a_client_that_is_lost_fails_at_once(how):
    router = make_router()  # manager_call_timeout: 30 s
    router.peers.set_peers({"w2": FakePeer()})
    router.update_directory([("ws/c", "w2")])
    asking = asyncio.ensure_future(router.manager.call_client("ws/c", "services.built-in.get_service", ["svc"]))
    await settle()

    if how == "left":
        router.update_directory([("ws/c", None)])
    else:
        router.deliver([(CONTROL, SOCKET_LOST, b"ws/c")])
    with pytest.raises(ManagerError, match="ws/c"):
        await asyncio.wait_for(asking, 1)


async def test_a_peer_saying_a_client_lost_its_socket_with_a_worker_tells_the_local_callers_only():
    router = make_router()
    peer = FakePeer()
    router.peers.set_peers({"w2": peer})
    router.update_directory([("ws/c", "w2")])
    a, a_socket = await join(router, "a")
    _, b_socket = await join(router, "b")
    router.route(a, call("c"))

    router.deliver([(CONTROL, SOCKET_LOST, b"ws/c")])
    await settle()

    [header] = a_socket.headers()
    assert (header["type"], header["peer_id"]) == ("peer_not_found", "ws/c")
    assert b_socket.headers() == [] and peer.lost == []  # not forwarded again


async def test_a_broadcast_reaches_subscribed_local_clients_and_only_the_peers_with_subscribers():
    router = make_router()
    interested, other_type, uninterested = FakePeer(), FakePeer(), FakePeer()
    router.peers.set_peers({"w2": interested, "w3": other_type, "w4": uninterested})
    router.deliver(
        [
            interest_item(InterestUpdate("w2", (("ws", "news"),), full=True)),
            interest_item(InterestUpdate("w3", (("ws", "weather"), ("elsewhere", "news")), full=True)),
        ]
    )
    a, _ = await join(router, "a")
    b, b_socket = await join(router, "b")
    _, c_socket = await join(router, "c")
    b.subscriptions.add("news")

    router.route(a, envelope.encode({"type": "news", "to": "*"}))
    await settle()

    assert [h["type"] for h in b_socket.headers()] == ["news"]
    assert c_socket.headers() == []
    assert [(t, e) for t, e, _ in interested.delivered] == [("ws/*", "news")]
    assert other_type.delivered == [] and uninterested.delivered == []
    assert router.stats()["peer_interest"] == {"w2": 1, "w3": 2}


async def test_a_peer_that_says_it_lost_its_subscribers_gets_no_more_broadcasts():
    router = make_router()
    peer = FakePeer()
    router.peers.set_peers({"w2": peer})
    router.deliver([interest_item(InterestUpdate("w2", (("ws", "news"),), full=True))])
    a, _ = await join(router, "a")

    router.route(a, envelope.encode({"type": "news", "to": "*", "n": 1}))
    router.deliver([interest_item(InterestUpdate("w2", removed=(("ws", "news"),)))])
    router.route(a, envelope.encode({"type": "news", "to": "*", "n": 2}))
    await settle()

    assert [envelope.parse(f).header["n"] for _, _, f in peer.delivered] == [1]


async def test_local_subscriptions_are_announced_to_peers_and_a_new_peer_gets_the_whole_set():
    router = make_router()
    early = FakePeer()
    router.peers.set_peers({"w2": early})
    b, _ = await join(router, "b")
    c, _ = await join(router, "c")

    b.subscriptions.update({"news", "weather"})
    await router.subscriptions_changed(b.address)
    c.subscriptions.add("news")  # a second subscriber of a pair the peers know: nothing new
    await router.subscriptions_changed(c.address)
    b.subscriptions.discard("weather")
    await router.subscriptions_changed(b.address)
    late = FakePeer()
    router.peers.set_peers({"w2": early, "w3": late})
    await router.disconnect(b)  # c still subscribes to news: still nothing to say
    await router.disconnect(c)
    await settle()

    assert early.control == [
        InterestUpdate("w1", full=True),
        InterestUpdate("w1", added=(("ws", "news"), ("ws", "weather"))),
        InterestUpdate("w1", removed=(("ws", "weather"),)),
        InterestUpdate("w1", removed=(("ws", "news"),)),
    ]
    assert late.control == [
        InterestUpdate("w1", (("ws", "news"),), full=True),
        InterestUpdate("w1", removed=(("ws", "news"),)),
    ]


async def test_a_peer_that_missed_an_interest_update_gets_the_whole_set_again(monkeypatch):
    monkeypatch.setattr(peers_module, "RESEND_INTEREST_AFTER", 0.01)
    router = make_router()
    peer = FakePeer(fail=True)  # unreachable for a moment: the greeting and the update are lost
    router.peers.set_peers({"w2": peer})
    b, _ = await join(router, "b")
    b.subscriptions.add("news")
    await router.subscriptions_changed(b.address)
    assert peer.control == []

    peer.fail = False
    await asyncio.sleep(0.1)
    assert peer.control == [InterestUpdate("w1", (("ws", "news"),), full=True)]


async def test_subscribe_returns_once_the_peer_links_carried_the_update():
    router = make_router()
    gate = asyncio.Event()
    peer = FakePeer()
    slow = peer._deliver

    async def deliver_after_the_gate(items):
        await gate.wait()
        await slow(items)

    peer.deliver = FakeRemote(deliver_after_the_gate)
    router.peers.set_peers({"w2": peer})
    b, _ = await join(router, "b")
    b.subscriptions.add("news")

    announced = asyncio.ensure_future(router.subscriptions_changed(b.address))
    await settle()
    assert not announced.done()
    gate.set()
    await asyncio.wait_for(announced, 1)
    assert InterestUpdate("w1", added=(("ws", "news"),)) in peer.control


async def test_a_broadcast_to_another_workspace_is_refused():
    router = make_router()
    a, a_socket = await join(router, "a")

    router.route(a, envelope.encode({"type": "method", "to": "other/*", "session": "s1"}))
    await settle()

    [header] = a_socket.headers()
    assert header["method"] == "s1.reject"


# -- lifecycle ---------------------------------------------------------------------------------


async def test_disconnect_rejects_what_was_never_written_and_announces_the_departure():
    registry = FakeRegistry()
    router = make_router(registry, enable_message_batching=False)
    a, a_socket = await join(router, "a")
    a.subscriptions.update({"client_disconnected", "service_removed"})
    b, b_socket = await join(router, "b")
    b_socket.block = asyncio.Event()  # b's socket does not take writes

    for session in ("s1", "s2", "s3"):
        router.route(a, call("b", session=session))
    await settle()
    await router.disconnect(b)
    await settle()

    headers = a_socket.headers()
    # s1 was being written when b left; s2 and s3 were still queued: their callers are told.
    assert [h["method"] for h in headers if h["type"] == "method"] == ["s2.reject", "s3.reject"]
    assert [h["type"] for h in headers if h["type"] != "method"] == ["service_removed", "client_disconnected"]
    assert registry.released == ["ws/b"]
    assert not router.holds("ws/b") and router.replica.owner("ws/b") is None


async def test_a_consumer_over_its_queue_bound_is_evicted_with_4001():
    router = make_router(max_queue_bytes=4096, enable_message_batching=False)
    a, a_socket = await join(router, "a")
    b, b_socket = await join(router, "b")
    b_socket.block = asyncio.Event()

    for i in range(4):
        router.route(a, call("b", session=f"s{i}", blob="x" * 2000))
    await settle()

    assert b_socket.close_code == CloseCode.SLOW_CONSUMER
    assert router.counters.evicted == 1
    # s0 fits the bound, s1 would pass it: the queue closes, and s1 and every later call are
    # rejected (s0 is answered by the disconnect cleanup that follows the close).
    assert [h["method"] for h in a_socket.headers()] == ["s1.reject", "s2.reject", "s3.reject"]


# -- v4 chunk streams --------------------------------------------------------------------------


async def test_a_chunk_stream_is_renamed_and_delivered_whole_and_a_gap_breaks_it():
    router = make_router(enable_message_batching=False)
    a, a_socket = await join(router, "a", wire_v4=True)
    _, b_socket = await join(router, "b", wire_v4=True)
    message = call("b", session="s1")

    router.route(a, frames.encode_chunk(7, 0, False, message))
    router.route(a, frames.encode_chunk(7, 1, False, b"more"))
    await settle()
    ids = {frames.decode_chunk(f)[0] for f in b_socket.sent}
    assert len(b_socket.sent) == 2 and len(ids) == 1 and ids != {7}

    # The receiver's view of the stream breaks: a chunk out of sequence reaches it.
    (out_id,) = ids
    router.to_client("ws/b", frames.encode_chunk(out_id, 5, False, b"gap"), None)
    await settle()
    _, _, flags, _ = frames.decode_chunk(b_socket.sent[-1])
    assert flags & frames.ABORT
    assert [h["method"] for h in a_socket.headers()] == ["s1.reject"]


async def test_a_chunk_of_an_unknown_stream_is_unroutable():
    router = make_router()
    a, a_socket = await join(router, "a", wire_v4=True)

    router.route(a, frames.encode_chunk(3, 2, False, b"x"))
    await settle()

    assert "chunk 2 of unknown stream 3" in a_socket.texts()[0]


@pytest.mark.parametrize("wire_v4", [False, True])
async def test_a_v4_frame_never_reaches_a_v3_client(wire_v4):
    router = make_router()
    a, a_socket = await join(router, "a", wire_v4=wire_v4)

    router.route(a, frames.encode_batch([call("a")]))
    await settle()

    if wire_v4:
        assert [h["from"] for h in a_socket.headers()] == ["ws/a"]  # a batch of one call to itself
    else:
        assert "v4 frame on a v3 connection" in a_socket.texts()[0]


async def test_the_messages_of_a_v4_batch_frame_are_routed_as_one_read_group():
    router = make_router()
    a, _ = await join(router, "a", wire_v4=True)
    b, _ = await join(router, "b", wire_v4=True)
    depths: list[int] = []
    put = b.queue.put
    b.queue.put = lambda frame: depths.append(WRITES.depth) or put(frame)  # type: ignore[method-assign]

    router.route(a, frames.encode_batch([call("b", session="s1"), call("b", session="s2")]))
    router.route(a, call("b", session="s3"))  # one message: no group

    assert depths == [1, 1, 0] and WRITES.depth == 0 and not WRITES.queues


# -- bounded work per client -------------------------------------------------------------------


async def test_a_flood_of_calls_to_unknown_targets_costs_a_bounded_number_of_lookups_and_each_is_rejected():
    registry = FakeRegistry()
    router = make_router(registry, unknown_target_lookup_rate=1.0, unknown_target_lookup_burst=20)
    flooder, flooder_socket = await join(router, "flooder")
    other, other_socket = await join(router, "other")

    for i in range(2000):
        router.route(flooder, call(f"nobody-{i}", session=f"s{i}"))
    router.route(other, call("nobody-else", session="mine"))  # not held up by the flooder's backlog
    await settle()
    assert [h["method"] for h in other_socket.headers()] == ["mine.reject"]
    assert len(router.throttle.backlogs[flooder]) > 1900  # held: routed later, in slices
    while router.throttle.backlogs:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)  # the last batch's timer

    assert 20 <= len(registry.lookups) <= 23  # the burst, and what the rate refilled meanwhile
    assert "ws/nobody-else" in registry.lookups  # another connection's budget is its own
    methods = [h["method"] for h in flooder_socket.headers()]
    assert sorted(methods) == sorted(f"s{i}.reject" for i in range(2000))  # nobody left unanswered
    assert [h["method"] for h in other_socket.headers()] == ["mine.reject"]
    stats = router.stats()
    assert stats["lookups_denied"] == 2000 - (len(registry.lookups) - 1)
    assert router.replica.callers_of == {} and router.replica.targets_of == {}  # refused: nothing kept
    budgeted = [m for m in flooder_socket.messages() if "budget of lookups" in m["args"][0]["_rvalue"]]
    assert budgeted and len(budgeted) == stats["lookups_denied"]


async def test_a_target_the_registry_does_not_know_is_not_asked_about_again_for_a_while():
    registry = FakeRegistry()
    router = make_router(registry)
    a, a_socket = await join(router, "a")

    router.route(a, call("nobody", session="s1"))
    await settle()
    router.route(a, call("nobody", session="s2"))
    router.route(a, call("nobody", session="s3"))
    await settle()

    assert registry.lookups == ["ws/nobody"]
    assert [h["method"] for h in a_socket.headers()] == ["s1.reject", "s2.reject", "s3.reject"]
    assert router.stats()["lookups_cached"] == 2


async def test_a_target_that_connects_after_a_negative_answer_is_reached_at_once():
    registry = FakeRegistry()
    router = make_router(registry, unknown_target_cache_ttl=60.0)
    a, _ = await join(router, "a")
    router.route(a, call("late", session="s1"))
    await settle()

    _, late_socket = await join(router, "late")
    router.route(a, call("late", session="s2"))
    await settle()

    assert [h["session"] for h in late_socket.headers()] == ["s2"]


async def test_frames_behind_one_lookup_are_bounded():
    registry = FakeRegistry()
    router = make_router(registry, unknown_target_lookup_burst=10)
    a, a_socket = await join(router, "a")

    for i in range(1005):
        router.route(a, call("nobody", session=f"s{i}"))
    await settle()

    assert registry.lookups == ["ws/nobody"]
    assert len(a_socket.headers()) == 1005
    assert "too many messages wait" in a_socket.messages()[0]["args"][0]["_rvalue"]


async def test_the_targets_a_client_called_are_forgotten_when_it_leaves_and_bounded_meanwhile():
    router = make_router(max_tracked_targets_per_client=5)
    router.peers.set_peers({"w2": FakePeer()})
    router.update_directory([(f"ws/t{i}", "w2") for i in range(8)])
    a, _ = await join(router, "a")
    b, _ = await join(router, "b")

    for i in range(8):
        router.route(a, call(f"t{i}"))
    router.route(b, call("t0"))
    assert len(router.replica.targets_of["ws/a"]) == 5

    await router.disconnect(a)

    assert router.replica.targets_of == {"ws/b": {"ws/t0": None}}
    assert router.replica.callers_of == {"ws/t0": {"ws/b"}}
    assert router.unknown.senders == 0


class FailingSocket(FakeSocket):
    """A socket that breaks: every write raises, as a write to a connection that went away."""

    async def send(self, data: bytes | str) -> None:
        await asyncio.sleep(0)
        raise ConnectionResetError("the socket went away")


async def test_the_frames_of_a_failed_write_are_answered_to_their_senders():
    router = make_router()
    a, a_socket = await join(router, "a")
    b, b_socket = await join(router, "b")
    b.queue._send = FailingSocket().send

    router.route(a, call("b", session="s1"))
    router.route(a, call("b", session="s2"))
    router.route(a, envelope.encode({"type": "method", "to": "b", "method": "s0.resolve"}))  # no session
    await settle()
    router.route(a, call("b", session="s3"))  # after the failure: refused at once
    await settle()

    headers = a_socket.headers()
    assert [h["method"] for h in headers if h["type"] == "method"] == ["s1.reject", "s2.reject", "s3.reject"]
    assert [(h["type"], h["peer_id"]) for h in headers if h["type"] != "method"] == [("peer_not_found", "ws/b")]
    assert router.stats()["refused"] == {"reject": 3, "peer_not_found": 1}
    await router.disconnect(b)
    await settle()
    assert [h["method"] for h in a_socket.headers() if h["type"] == "method"] == ["s1.reject", "s2.reject", "s3.reject"]


async def test_a_write_that_fails_after_the_disconnect_cleanup_is_still_answered():
    router = make_router(enable_message_batching=False)
    a, a_socket = await join(router, "a")
    b, _ = await join(router, "b")
    broken = asyncio.Event()

    async def send_until_it_breaks(data: bytes | str) -> None:
        await broken.wait()
        raise ConnectionResetError("the socket went away")

    b.queue._send = send_until_it_breaks
    router.route(a, call("b", session="s1"))
    router.route(a, call("b", session="s2"))
    await settle()  # s1 is being written, s2 waits behind it
    await router.disconnect(b)
    await settle()
    assert [h["method"] for h in a_socket.headers() if h["type"] == "method"] == ["s2.reject"]

    broken.set()  # the write under way fails now
    await settle()
    assert [h["method"] for h in a_socket.headers() if h["type"] == "method"] == ["s2.reject", "s1.reject"]


# -- the manager ---------------------------------------------------------------------------------


def manager_call(to: str, method: str, args: list[Any], session: str = "m1") -> bytes:
    return envelope.encode(
        {"type": "method", "to": to, "method": method, "session": session, "promise": "*"}, {"args": args}
    )


async def test_a_call_to_the_manager_id_of_an_earlier_start_is_answered_by_this_manager():
    """After a restart hypha-rpc keeps calling the manager id it first got (it skips the first
    manager_refreshed event): the router is still its manager."""
    router = make_router(server_id="now")
    a, a_socket = await join(router, "a")

    router.route(a, manager_call("*/manager-before", "services.default.echo", ["hello"]))
    router.route(a, manager_call("*/manager-now", "services.default.echo", ["again"], session="m2"))
    await settle(50)

    answers = {m["method"]: m for m in a_socket.messages()}
    assert answers["m1.resolve"]["args"] == ["hello"] and answers["m2.resolve"]["args"] == ["again"]
    # hypha-rpc takes a session's answers only from the peer it called
    assert answers["m1.resolve"]["from"] == "*/manager-before"
    assert answers["m2.resolve"]["from"] == "*/manager-now"
    assert router.counters.dropped == 0


async def test_the_login_service_is_the_managers_own_and_finds_no_registry():
    router = make_router(login_local_user="alice")
    a, a_socket = await join(router, "a")

    router.route(a, manager_call(router.manager.address, "services.default.get_service", ["public/hypha-login"]))
    await settle(50)
    [answer] = a_socket.messages()
    service = answer["args"][0]
    assert answer["method"] == "m1.resolve" and service["id"].startswith("public/manager-")
    assert service["start"]["_rtarget"] == router.manager.address

    router.route(a, manager_call(router.manager.address, "services.hypha-login.start", [], session="m2"))
    await settle(50)
    started = a_socket.messages()[-1]["args"][0]
    assert started["key"].startswith("w1-") and started["login_url"].endswith(f"?key={started['key']}")


async def test_without_a_login_provider_there_is_no_login_service():
    router = make_router(login_provider="none")
    assert router.manager.login is None
    a, a_socket = await join(router, "a")
    router.route(a, manager_call(router.manager.address, "services.hypha-login.start", []))
    await settle(50)
    [answer] = a_socket.messages()
    assert answer["method"] == "m1.reject" and "Method not found" in answer["args"][0]["_rvalue"]
