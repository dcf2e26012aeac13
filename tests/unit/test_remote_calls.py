"""The v4 client's session ids (rhizomorph/remote_calls.py) have the form of hypha-rpc's
(``shortuuid.uuid()``): the same encoding of a version-4 UUID, 22 base-57 digits."""

from __future__ import annotations

import random
import uuid
from typing import Any

import shortuuid

from rhizomorph.remote_calls import ExpandedPromise, LazyPromise, base57, short_id


def test_base57_is_shortuuids_encoding():
    rng = random.Random(12)
    numbers = [0, 1, 56, 57, 2**64, 2**128 - 1, *(rng.getrandbits(128) for _ in range(2000))]
    for number in numbers:
        assert base57(number) == shortuuid.encode(uuid.UUID(int=number))


def test_short_ids_are_random_version_4_uuids():
    ids = [short_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    alphabet = set(shortuuid.get_alphabet())
    for value in ids:
        assert len(value) == len(shortuuid.uuid()) == 22
        assert set(value) <= alphabet
        decoded = shortuuid.decode(value)
        assert decoded.version == 4 and decoded.variant == uuid.RFC_4122


def test_a_lazy_promise_decodes_each_callback_once_when_looked_up():
    decoded: list[Any] = []

    def decode(value: Any) -> Any:
        decoded.append(value)
        return ("made", value)

    expanded = ExpandedPromise(heartbeat={"_rmethod": "s.heartbeat"}, resolve={"_rmethod": "s.resolve"}, interval=5)
    promise = LazyPromise(expanded, decode)
    assert "heartbeat" in promise and "interval" in promise and decoded == []
    assert promise["resolve"] == ("made", {"_rmethod": "s.resolve"})
    assert promise["resolve"] == ("made", {"_rmethod": "s.resolve"})
    assert promise.get("interval") == ("made", 5) and promise.get("reject") is None
    assert decoded == [{"_rmethod": "s.resolve"}, 5]
