"""The peer channel's framing (rhizomorph/actors/channel.py): length-prefixed msgpack batches, cut out of a
byte stream however it is split."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rhizomorph.actors.channel import (
    LARGE_FRAME,
    MAX_BATCH_BYTES,
    _BatchReader,
    batch_parts,
    decode_batch,
    encode_batch,
)

ITEMS = st.tuples(st.text(max_size=20), st.none() | st.text(max_size=8), st.binary(max_size=300))
BATCHES = st.lists(st.lists(ITEMS, min_size=1, max_size=5), min_size=1, max_size=6)


@given(
    st.lists(
        st.tuples(st.text(max_size=30), st.one_of(st.none(), st.text(max_size=10)), st.binary(max_size=500)),
        max_size=20,
    )
)
def test_channel_batches_round_trip(items):
    data = encode_batch(items)
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert decode_batch(data[4:]) == items


SIZES = [0, 5, LARGE_FRAME - 1, LARGE_FRAME, 65535, 65536, 300_000]


@pytest.mark.parametrize("count", [1, 3, 17])
def test_a_batch_with_large_frames_is_the_bytes_of_its_msgpack_pieces_apart(count):
    """Large frames are written as pieces of their own: the pieces are msgpack's bytes, in order."""
    items = [(f"ws/c{i}", None if i % 2 else "evt", bytes([i]) * SIZES[i % len(SIZES)]) for i in range(count)]
    items.append(("ws/big", None, b"b" * 70_000))
    body = msgpack.packb(items, use_bin_type=True)
    parts = batch_parts(items)
    assert b"".join(parts) == len(body).to_bytes(4, "big") + body
    assert any(part is items[-1][2] for part in parts)  # written from where it is, not copied


class _Transport:
    closed = False

    def close(self) -> None:
        self.closed = True


@given(batches=BATCHES, cuts=st.lists(st.integers(min_value=0), max_size=10))
def test_batches_arrive_whole_and_in_order_however_the_stream_is_split(batches, cuts):
    delivered: list[list[tuple]] = []
    reader = _BatchReader(delivered.append)
    stream = b"".join(encode_batch(batch) for batch in batches)
    points = sorted({cut % (len(stream) + 1) for cut in cuts} | {0, len(stream)})
    for start, end in zip(points, points[1:]):
        reader.data_received(stream[start:end])
    assert delivered == batches


def test_an_oversized_batch_length_closes_the_channel():
    delivered: list = []
    reader = _BatchReader(delivered.append)
    transport = _Transport()
    reader.connection_made(transport)
    reader.data_received((MAX_BATCH_BYTES + 1).to_bytes(4, "big") + b"xx")
    assert transport.closed and delivered == []
