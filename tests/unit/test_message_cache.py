"""Unit tests for rhizomorph/protocol/message_cache.py: the manager's chunked messages, per caller."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhizomorph.protocol.message_cache import (
    CHUNK_OVERHEAD,
    CHUNK_SIZE,
    CacheError,
    MessageCache,
    needs_chunks,
    split,
)


def test_set_out_of_order_then_take_joins_in_index_order():
    cache = MessageCache(10_000)
    cache.create("ws/a", "k")
    cache.set("ws/a", "k", 2, b"cc")
    cache.set("ws/a", "k", 0, b"a")
    cache.set("ws/a", "k", 1, b"bb")
    assert cache.held("ws/a") == 5 + 3 * CHUNK_OVERHEAD
    assert cache.take("ws/a", "k") == b"abbcc"
    assert cache.held("ws/a") == 0 and cache.callers == 0


def test_append_adds_the_next_chunk():
    cache = MessageCache(10_000)
    cache.create("ws/a", "k")
    for part in (b"x", b"y", b"z"):
        cache.append("ws/a", "k", part)
    assert cache.take("ws/a", "k") == b"xyz"


def test_callers_are_kept_apart():
    cache = MessageCache(10_000)
    cache.create("ws/a", "k")
    cache.create("ws/b", "k")
    cache.set("ws/a", "k", 0, b"from a")
    cache.set("ws/b", "k", 0, b"from b")
    assert cache.take("ws/b", "k") == b"from b"
    with pytest.raises(CacheError, match="does not exist"):
        cache.remove("ws/b", "k")
    assert cache.take("ws/a", "k") == b"from a"


def test_a_missing_chunk_fails_the_message_and_frees_it():
    cache = MessageCache(10_000)
    cache.create("ws/a", "k")
    cache.set("ws/a", "k", 0, b"a")
    cache.set("ws/a", "k", 2, b"c")
    with pytest.raises(CacheError, match=r"missing chunks \[1\]"):
        cache.take("ws/a", "k")
    assert cache.held("ws/a") == 0


def test_a_far_index_is_reported_without_listing_every_gap():
    cache = MessageCache(10_000)
    cache.create("ws/a", "k")
    cache.set("ws/a", "k", 10**12, b"x")
    with pytest.raises(CacheError, match=r"missing chunks \[0\]"):
        cache.take("ws/a", "k")


def test_the_byte_bound_refuses_the_chunk_that_goes_over():
    cache = MessageCache(1000 + 2 * CHUNK_OVERHEAD)
    cache.create("ws/a", "k")
    cache.set("ws/a", "k", 0, b"x" * 600)
    with pytest.raises(CacheError, match="at most 1128 bytes"):
        cache.set("ws/a", "k", 1, b"x" * 401)
    cache.set("ws/a", "k", 1, b"x" * 400)  # exactly at the bound is fine
    # Replacing a chunk counts only the difference.
    cache.set("ws/a", "k", 1, b"y" * 400)
    assert cache.take("ws/a", "k") == b"x" * 600 + b"y" * 400


def test_empty_chunks_cost_their_overhead():
    cache = MessageCache(10 * CHUNK_OVERHEAD)
    cache.create("ws/a", "k")
    for i in range(10):
        cache.set("ws/a", "k", i, b"")
    with pytest.raises(CacheError, match="limit"):
        cache.set("ws/a", "k", 10, b"")


def test_the_bound_is_per_caller():
    cache = MessageCache(100 + CHUNK_OVERHEAD)
    for caller in ("ws/a", "ws/b"):
        cache.create(caller, "k")
        cache.set(caller, "k", 0, b"x" * 100)
    assert cache.held("ws/a") == cache.held("ws/b") == 100 + CHUNK_OVERHEAD


def test_open_messages_are_bounded():
    cache = MessageCache(10_000, max_messages_per_caller=2)
    cache.create("ws/a", "k1")
    cache.create("ws/a", "k2")
    with pytest.raises(CacheError, match="at most 2 messages"):
        cache.create("ws/a", "k3")
    cache.remove("ws/a", "k1")
    cache.create("ws/a", "k3")
    assert cache.open_messages("ws/a") == 2


def test_create_twice_needs_overwrite():
    cache = MessageCache(10_000)
    cache.create("ws/a", "k")
    cache.set("ws/a", "k", 0, b"old")
    with pytest.raises(CacheError, match="already open"):
        cache.create("ws/a", "k")
    cache.create("ws/a", "k", overwrite=True)
    assert cache.held("ws/a") == 0
    cache.set("ws/a", "k", 0, b"new")
    assert cache.take("ws/a", "k") == b"new"


def test_forget_drops_everything_of_a_caller():
    cache = MessageCache(10_000)
    cache.create("ws/a", "k1")
    cache.set("ws/a", "k1", 0, b"x" * 50)
    cache.create("ws/a", "k2")
    cache.create("ws/b", "k")
    cache.forget("ws/a")
    assert cache.held("ws/a") == 0 and cache.open_messages("ws/a") == 0 and cache.callers == 1
    cache.forget("ws/nobody")  # harmless


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda c: c.create("ws/a", ""), "non-empty string"),
        (lambda c: c.create("ws/a", 5), "non-empty string"),
        (lambda c: c.create("ws/a", "k" * 257), "at most 256"),
        (lambda c: c.set("ws/a", "nope", 0, b"x"), "does not exist"),
        (lambda c: c.set("ws/a", "open", -1, b"x"), "index must be an integer"),
        (lambda c: c.set("ws/a", "open", True, b"x"), "index must be an integer"),
        (lambda c: c.set("ws/a", "open", "0", b"x"), "index must be an integer"),
        (lambda c: c.set("ws/a", "open", 0, "text"), "must be bytes"),
        (lambda c: c.take("ws/a", "nope"), "does not exist"),
        (lambda c: c.remove("ws/a", ["k"]), "does not exist"),
    ],
)
def test_bad_calls_are_refused(call, message):
    cache = MessageCache(10_000)
    cache.create("ws/a", "open")
    with pytest.raises(CacheError, match=message):
        call(cache)


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
def test_split_then_set_in_any_order_round_trips(data, size):
    chunks = split(data, size)
    assert all(len(c) == size for c in chunks[:-1]) and 0 < len(chunks[-1]) <= size or data == b""
    cache = MessageCache(10**6)
    cache.create("ws/a", "k")
    for index in reversed(range(len(chunks))):
        cache.set("ws/a", "k", index, chunks[index])
    assert cache.take("ws/a", "k") == data


def test_needs_chunks_follows_hypha_rpc():
    assert not needs_chunks(CHUNK_SIZE + 1024)
    assert needs_chunks(CHUNK_SIZE + 1025)
