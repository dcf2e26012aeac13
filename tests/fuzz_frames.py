"""Frames and auth fields for fuzzing, from a seeded ``random.Random``: valid frames of the kinds
hypha-rpc sends, and malformed, truncated, mutated or random ones (``tests/wire_oracle.py`` says
what the router must answer to each). Used by the live flood (tests/test_fuzz.py) and by the
unit test that checks the oracle against the parser (tests/unit/test_fuzz_parsers.py)."""

from __future__ import annotations

import random

import msgpack

from rhizomorph.protocol import envelope
from rhizomorph.protocol.envelope import encode

#: The fields of the auth frame the router reads.
AUTH_KEYS = ["client_id", "workspace", "token", "reconnection_token", "wire_protocol"]

MAP_PREFIXES = set(range(0x80, 0x90)) | {0xDE, 0xDF}
NON_MAP_PREFIXES = [b for b in range(256) if b not in MAP_PREFIXES]


def template(rng: random.Random, tag: str) -> bytes:
    """A valid frame of the kinds hypha-rpc sends, addressed to nobody in particular."""
    kind = rng.randrange(3)
    if kind == 0:
        header = {"type": "fuzz-event", "to": "*", "data": rng.randbytes(rng.randrange(20))}
    elif kind == 1:
        header = {"type": "method", "to": f"{tag}-{rng.randrange(10**6)}", "method": "services.a.b"}
    else:
        header = {"type": "fuzz-event", "to": f"{tag}-{rng.randrange(10**6)}", "from": "forged/x", "ws": "forged"}
    extra = {"args": [rng.randrange(1000), rng.randbytes(rng.randrange(40))]} if rng.random() < 0.5 else None
    return encode(header, extra)


def garbage_frame(rng: random.Random, tag: str) -> bytes:
    """One malformed, truncated, mutated or random binary frame (classified by ``expects_error``)."""
    kind = rng.randrange(7)
    if kind == 0:  # random bytes that cannot start a map
        return bytes([rng.choice(NON_MAP_PREFIXES)]) + rng.randbytes(rng.randrange(64))
    if kind == 1:  # a valid header cut short
        frame = template(rng, tag)
        header_len = envelope.parse(frame).payload_offset
        return frame[: rng.randrange(header_len)]
    if kind == 2:  # well-formed msgpack that is not a map, maybe with junk after it
        value = rng.choice([[1, 2, 3], 7, -1, "to", b"\x81", None, True, 1.5, [{"to": "x"}]])
        return msgpack.packb(value) + rng.randbytes(rng.randrange(8))
    if kind == 3:  # a map with no usable 'to', or a non-string 'type'
        header = rng.choice(
            [
                {"type": "method"},
                {"to": 5},
                {"to": ""},
                {"to": ["a"]},
                {"to": None},
                {"to": "x", "type": 3},
                {"to": "x", "type": ["method"]},
                {1: "to"},
                {},
            ]
        )
        return msgpack.packb(header) + rng.randbytes(rng.randrange(8))
    if kind == 4:  # a map header with random contents
        return bytes([rng.choice(sorted(MAP_PREFIXES))]) + rng.randbytes(rng.randrange(48))
    if kind == 5:  # random empty, v4-looking or one-byte frames
        return rng.choice([b"", b"\xc1", b"\xc1B", b"\xc1B\x00\x00\x00\x05abc", bytes([rng.randrange(256)])])
    frame = bytearray(template(rng, tag))  # bit flips in a valid frame
    for _ in range(rng.randrange(1, 4)):
        frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
    return bytes(frame)


def v4_frame(rng: random.Random) -> bytes:
    """A v4 frame for a v4 connection: batches of garbage, cut batches, unknown v4 kinds."""
    roll = rng.random()
    if roll < 0.1:  # not a batch (and not a chunk frame: streams keep state, they are not fuzzed here)
        return (
            b"\xc1" + bytes([rng.choice([b for b in range(256) if b not in b"BS"])]) + rng.randbytes(rng.randrange(16))
        )
    if roll < 0.2:
        return garbage_frame(rng, "nowhere")
    messages = [
        garbage_frame(rng, "nowhere") if rng.random() < 0.7 else template(rng, "nowhere")
        for _ in range(rng.randrange(0, 12))
    ]
    batch = b"\xc1B" + b"".join(len(m).to_bytes(4, "big") + m for m in messages)
    if roll < 0.4:  # cut short, sometimes (harmlessly) on a message boundary
        return batch[: rng.randrange(2, len(batch) + 1)]
    return batch
