"""rhizomorph/protocol/interest.py: which workers have subscribers for which broadcasts."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhizomorph.protocol.interest import InterestUpdate, LocalInterest, PeerInterest


def test_a_pair_is_announced_when_its_first_subscriber_comes_and_its_last_goes():
    local = LocalInterest("w1")

    assert local.set("ws/a", "ws", {"news"}) == InterestUpdate("w1", added=(("ws", "news"),))
    assert not local.set("ws/b", "ws", {"news"})  # a second subscriber: nothing new for the peers
    assert local.set("ws/a", "ws", {"weather"}) == InterestUpdate("w1", added=(("ws", "weather"),))
    assert local.drop("ws/b") == InterestUpdate("w1", removed=(("ws", "news"),))
    assert local.pairs() == [("ws", "weather")]
    assert local.drop("ws/a") == InterestUpdate("w1", removed=(("ws", "weather"),))
    assert local.pairs() == [] and "ws/a" not in local
    assert not local.drop("ws/a")


def test_the_full_set_is_an_update_even_when_empty():
    local = LocalInterest("w1")
    assert local.full() == InterestUpdate("w1", full=True) and bool(local.full())
    local.set("ws/a", "ws", {"b", "a"})
    local.set("other/c", "other", {"a"})
    assert local.full().added == (("other", "a"), ("ws", "a"), ("ws", "b"))


def test_peers_are_found_by_workspace_and_event_type():
    peers = PeerInterest()
    peers.apply(InterestUpdate("w2", (("ws", "news"), ("ws", "weather")), full=True))
    peers.apply(InterestUpdate("w3", (("ws", "news"),), full=True))

    assert set(peers.peers_for("ws", "news")) == {"w2", "w3"}
    assert set(peers.peers_for("ws", "weather")) == {"w2"}
    assert not peers.peers_for("ws", "sports") and not peers.peers_for("elsewhere", "news")

    peers.apply(InterestUpdate("w2", removed=(("ws", "news"),)))
    assert set(peers.peers_for("ws", "news")) == {"w3"}


def test_a_full_update_replaces_what_a_peer_said_before():
    peers = PeerInterest()
    peers.apply(InterestUpdate("w2", (("ws", "news"),), full=True))
    peers.apply(InterestUpdate("w2", (("ws", "weather"),), full=True))  # it came back fresh

    assert not peers.peers_for("ws", "news")
    assert peers.pairs_of("w2") == {("ws", "weather")}


def test_a_peer_that_is_forgotten_gets_nothing():
    peers = PeerInterest()
    peers.apply(InterestUpdate("w2", (("ws", "news"),), full=True))
    peers.forget("w2")
    assert not peers.peers_for("ws", "news") and peers.stats() == {}


def test_an_update_survives_its_encoding():
    update = InterestUpdate("w1", (("ws", "a"),), (("ws", "b"), ("x", "y")), full=False)
    assert InterestUpdate.decode(update.encode()) == update
    assert InterestUpdate.decode(InterestUpdate("w1", full=True).encode()) == InterestUpdate("w1", full=True)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\x01\x02\x03", b"\x94\xa1w\xc3\x91\x91\x01\x90"])
def test_anything_else_is_refused_by_the_decoder(data):
    with pytest.raises(ValueError):
        InterestUpdate.decode(data)


@given(
    st.lists(
        st.tuples(st.sampled_from(["ws/a", "ws/b", "x/c"]), st.sets(st.sampled_from(["e1", "e2", "e3"]))),
        max_size=30,
    )
)
def test_a_peer_applying_the_updates_knows_exactly_the_local_pairs(changes):
    local = LocalInterest("w1")
    peer_view = PeerInterest()
    peer_view.apply(local.full())
    for address, types in changes:
        peer_view.apply(local.set(address, address.split("/")[0], types))
    assert peer_view.pairs_of("w1") == set(local.pairs())
    for address in ("ws/a", "ws/b", "x/c"):
        peer_view.apply(local.drop(address))
    assert peer_view.pairs_of("w1") == set() and local.pairs() == []
