"""The routing decision, the directory replica, chunk-stream state and refusals: pure code."""

from __future__ import annotations

import random

import msgpack
import pytest

from rhizomorph.protocol import frames, refusals, routing
from rhizomorph.protocol.directory import DirectoryReplica
from rhizomorph.protocol.routing import Route, Via
from rhizomorph.protocol.streams import OpenStream, ReceivingStreams, SendingStreams, StreamIds, Verdict

PEERS = {"w2", "w3"}


def decide(**overrides) -> Route:
    facts = dict(local=False, owner=None, self_id="w1", reachable=PEERS, forwarded=False, locating=False)
    facts.update(overrides)
    return routing.to_client(**facts)


# -- to_client ---------------------------------------------------------------------------------


def test_a_local_target_takes_its_queue():
    assert decide(local=True) == Route(Via.LOCAL)


def test_a_target_owned_by_a_linked_peer_goes_to_that_peer():
    assert decide(owner="w2") == Route(Via.PEER, "w2")


@pytest.mark.parametrize("owner", [None, "w1", "w9"], ids=["unknown", "stale-self", "peer-without-link"])
def test_without_a_usable_owner_the_registry_is_asked(owner):
    assert decide(owner=owner) == Route(Via.LOCATE)


def test_a_forwarded_frame_is_never_forwarded_again():
    assert decide(owner="w2", forwarded=True) == Route(Via.LOCATE)


def test_frames_behind_a_lookup_wait_even_for_a_target_that_became_local():
    # Order: a frame sent after one that waits for the registry must not overtake it.
    assert decide(local=True, locating=True) == Route(Via.WAIT)


def test_a_frame_for_a_client_awaited_back_is_kept_unless_it_is_reachable_now():
    assert decide(awaited=True) == Route(Via.KEEP)
    assert decide(awaited=True, forwarded=True, owner="w2") == Route(Via.KEEP)
    assert decide(awaited=True, owner="w2") == Route(Via.PEER, "w2")  # it reconnected there
    assert decide(awaited=True, local=True) == Route(Via.LOCAL)
    assert decide(awaited=True, locating=True) == Route(Via.WAIT)  # behind the frames before it


# -- after_locate ------------------------------------------------------------------------------


def after(**overrides) -> Route:
    facts = dict(local=False, owner=None, self_id="w1", reachable=PEERS, forwarded=False)
    facts.update(overrides)
    return routing.after_locate(**facts)


def test_after_a_lookup_a_local_target_is_delivered():
    assert after(local=True, owner="w2") == Route(Via.LOCAL)


def test_after_a_lookup_a_peer_owner_is_used():
    assert after(owner="w3") == Route(Via.PEER, "w3")


@pytest.mark.parametrize(
    "facts", [dict(owner=None), dict(owner="w1"), dict(owner="w9"), dict(owner="w2", forwarded=True)]
)
def test_after_a_lookup_nobody_usable_means_refuse(facts):
    assert after(**facts) == Route(Via.REFUSE)


def test_after_a_lookup_that_found_nobody_a_frame_for_a_client_awaited_back_is_kept():
    assert after(awaited=True) == Route(Via.KEEP)
    assert after(awaited=True, owner="w3") == Route(Via.PEER, "w3")
    assert after(awaited=True, local=True) == Route(Via.LOCAL)


# -- to_manager --------------------------------------------------------------------------------


def test_a_reply_to_another_workers_manager_goes_there():
    assert routing.to_manager("w2", self_id="w1", reachable=PEERS) == Route(Via.PEER, "w2")


@pytest.mark.parametrize("owner", [None, "w1", "w9"])
def test_other_manager_frames_are_handled_here(owner):
    assert routing.to_manager(owner, self_id="w1", reachable=PEERS) == Route(Via.LOCAL)


# -- directory replica -------------------------------------------------------------------------


def test_replica_tells_the_callers_of_a_client_that_left_once():
    replica = DirectoryReplica()
    replica.apply([("ws/a", "w1"), ("ws/b", "w2")])
    replica.note_call("ws/a", "ws/b")
    replica.note_call("ws/c", "ws/b")

    assert replica.apply([("ws/b", None)]) == [("ws/b", {"ws/a", "ws/c"})]
    assert replica.owner("ws/b") is None
    assert replica.apply([("ws/b", None)]) == [("ws/b", set())]


def test_replica_forget_keeps_an_entry_another_worker_took_over():
    replica = DirectoryReplica()
    replica.set_owner("ws/a", "w2")
    replica.forget("ws/a", "w1")
    assert replica.owner("ws/a") == "w2"
    replica.forget("ws/a", "w2")
    assert "ws/a" not in replica


# -- chunk streams -----------------------------------------------------------------------------


def header_frame(**header) -> bytes:
    return msgpack.packb({"type": "method", "to": "ws/b", "from": "ws/a", **header})


def test_stream_ids_are_unique_and_share_a_random_high_half():
    ids = StreamIds(random.Random(7))
    first, second = ids.next(), ids.next()
    assert first != second and first >> 32 == second >> 32
    assert ids.issued == 2


def test_sending_streams_open_continue_and_close():
    streams = SendingStreams()
    stream = OpenStream("ws/b", 5, {"to": "ws/b"})
    streams.begin(1, stream)
    assert streams.is_open(1)
    assert streams.chunk(1, last=False) is stream
    assert streams.chunk(1, last=True) is stream
    assert streams.chunk(1, last=False) is None
    streams.begin(2, stream)
    assert streams.close_all() == [stream] and len(streams) == 0


def test_receiving_streams_deliver_chunks_in_sequence():
    streams = ReceivingStreams()
    assert streams.accept(9, 0, 0, header_frame()) == (Verdict.DELIVER, None)
    assert streams.accept(9, 1, 0, b"x") == (Verdict.DELIVER, None)
    assert streams.accept(9, 2, frames.LAST, b"y") == (Verdict.DELIVER, None)
    assert len(streams) == 0
    assert streams.accept(9, 3, 0, b"z") == (Verdict.DROP, None)  # finished: nothing to deliver


def test_a_gap_breaks_the_stream_and_names_its_caller():
    streams = ReceivingStreams()
    streams.accept(9, 0, 0, header_frame(session="s1"))
    verdict, header = streams.accept(9, 2, 0, b"late")
    assert verdict is Verdict.BROKEN and header["session"] == "s1" and header["from"] == "ws/a"
    assert len(streams) == 0


def test_an_abort_breaks_an_open_stream():
    streams = ReceivingStreams()
    streams.accept(9, 0, 0, header_frame())
    assert streams.accept(9, 0, frames.LAST | frames.ABORT, b"")[0] is Verdict.BROKEN


def test_an_unreadable_first_chunk_is_dropped():
    assert ReceivingStreams().accept(9, 0, 0, b"\xc1 not msgpack")[0] is Verdict.DROP


def test_a_receiver_that_left_takes_its_streams():
    streams = ReceivingStreams()
    streams.accept(9, 0, 0, header_frame())
    streams.forget_target("ws/b")
    assert len(streams) == 0


# -- refusals ----------------------------------------------------------------------------------

USER = {"id": "router"}


def test_a_call_with_a_session_gets_a_reject():
    header = {"type": "method", "to": "ws/b", "session": "s1"}
    told = refusals.answer(header, "ws/b", "gone", sender="ws/a", manager="*/m", server_user=USER)
    assert told is not None and told.to == "ws/a" and told.kind == "reject"
    reply = msgpack.Unpacker(raw=False)
    reply.feed(told.frame)
    head, body = next(reply), next(reply)
    assert (head["to"], head["from"], head["method"], head["ws"]) == ("ws/a", "ws/b", "s1.reject", "ws")
    assert body["args"][0]["_rvalue"] == "gone"


def test_a_call_without_a_session_gets_peer_not_found():
    told = refusals.answer({"type": "method"}, "ws/b", "gone", sender="ws/a", manager="*/m", server_user=USER)
    assert told is not None and told.kind == "peer_not_found"
    assert msgpack.unpackb(told.frame) == {"type": "peer_not_found", "to": "ws/a", "peer_id": "ws/b", "error": "gone"}


@pytest.mark.parametrize(
    "header, sender",
    [
        ({"type": "event"}, "ws/a"),  # events are fire-and-forget
        ({"type": "method"}, None),  # nobody to tell
        ({"type": "method"}, "*/m"),  # the manager's own reply to a caller that left
    ],
)
def test_nobody_is_told(header, sender):
    assert refusals.answer(header, "ws/b", "gone", sender=sender, manager="*/m", server_user=USER) is None


def test_header_of_a_later_chunk_is_none_and_of_chunk_zero_is_the_message_header():
    message = header_frame(session="s1")
    assert refusals.header_of(frames.encode_chunk(3, 0, False, message))["session"] == "s1"
    assert refusals.header_of(frames.encode_chunk(3, 1, False, b"rest")) is None
    assert refusals.header_of(b"\xc1") is None
    assert refusals.header_of(None) is None
