"""``RouterServerConnection`` over a fake transport (``benchmarks/route_cpu.py``'s): its one-pass
write of binary messages (``write_binary``) against ``queue_binary`` + ``send_data``, and its own
reader when websockets' parser has been fed part of a frame (no sockets, no network)."""

from __future__ import annotations

from typing import Any

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from benchmarks import route_cpu
from rhizomorph.gateway.connection import COALESCE_LIMIT, RouterServerConnection


class Transport(route_cpu.Transport):
    """Records each write call: the bytes of a ``write``, the pieces of a ``writelines``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, bytes]] = []

    def write(self, data: Any) -> None:
        self.calls.append(("write", bytes(data)))

    def writelines(self, list_of_data: Any) -> None:
        self.calls.append(("writelines", b"".join(bytes(d) for d in list_of_data)))

    def write_eof(self) -> None:
        self.calls.append(("eof", b""))


def open_connection() -> tuple[RouterServerConnection, Transport]:
    transport = Transport()
    return route_cpu.server_connection(transport), transport


MESSAGES = [
    [b"a"],
    [b"x" * 125, b"y" * 126, b"z" * 65535],
    [b"s" * 300] * 10,
    [b"m" * (COALESCE_LIMIT - 10)],  # header and message exactly at the limit: joined
    [b"m" * (COALESCE_LIMIT - 9)],  # one byte over: header and message in one writelines
    [b"b" * 70_000, b"tail"],
    [b"", b"after-empty"],  # an empty message: websockets' path, as before
]


@pytest.mark.parametrize("messages", MESSAGES, ids=range(len(MESSAGES)))
async def test_write_binary_writes_what_queue_binary_and_send_data_write(messages: list[bytes]) -> None:
    fast, fast_transport = open_connection()
    fast.write_binary(messages)
    old, old_transport = open_connection()
    old.queue_binary(messages)
    old.send_data()
    assert fast_transport.calls == old_transport.calls
    expected = b"".join(Frame(Opcode.BINARY, m).serialize(mask=False, extensions=[]) for m in messages)
    assert b"".join(data for _, data in fast_transport.calls) == expected


async def test_write_binary_keeps_what_already_waits_in_the_protocol_first() -> None:
    connection, transport = open_connection()
    connection.protocol.send_text(b"first")
    connection.write_binary([b"second"])
    sent = b"".join(data for _, data in transport.calls)
    first = Frame(Opcode.TEXT, b"first").serialize(mask=False, extensions=[])
    assert sent == first + Frame(Opcode.BINARY, b"second").serialize(mask=False, extensions=[])


def masked(opcode: Opcode, data: bytes, fin: bool = True) -> bytes:
    return Frame(opcode, data, fin=fin).serialize(mask=True, extensions=[])


async def test_a_frame_split_over_reads_into_websockets_keeps_its_reads_there() -> None:
    """A text frame whose first half went to websockets' parser: the next read starts mid-frame,
    so it is websockets' too (the gateway's reader would take its middle for a header)."""
    connection, _ = open_connection()
    got: list[bytes] = []
    connection.on_binary = lambda message: got.append(bytes(message))
    # A zero mask leaves the text as it is; where the read splits it, it reads as a masked binary
    # frame (0x82 0x82: FIN, binary, masked, 2 bytes; "₂" is e2 82 82 in UTF-8).
    text = "t" * 149 + "₂" + "abcdef" + "t" * 140
    payload = text.encode()
    frame = bytes((0x81, 0x80 | 126)) + len(payload).to_bytes(2, "big") + b"\0\0\0\0" + payload
    split = 8 + payload.index(b"\x82\x82")
    reads = [
        masked(Opcode.BINARY, b"one"),
        frame[:split],
        frame[split:] + masked(Opcode.BINARY, b"two"),
        masked(Opcode.BINARY, b"three"),
    ]
    for data in reads:
        connection.data_received(data)
    assert got == [b"one", b"two", b"three"]
    assert connection.protocol.state is State.OPEN
    assert await connection.recv() == text


@pytest.mark.parametrize("read", [1, 7, 1000, 65_536, 70_010, 256_000])
async def test_frames_kept_over_reads_arrive_whole_however_the_stream_is_cut(read: int) -> None:
    """A frame kept over reads is joined from its own bytes only; the frames after it in the
    read that completes it are read from that read: every message arrives as it was sent."""
    connection, _ = open_connection()
    got: list[bytes] = []
    connection.on_binary = lambda message: got.append(bytes(message))
    big, other = bytes(range(256)) * 300, b"o" * 130_000
    stream = b"".join(
        [
            masked(Opcode.BINARY, big),
            masked(Opcode.BINARY, b"small"),
            masked(Opcode.BINARY, other[:70_000], fin=False),  # a fragmented message
            masked(Opcode.CONT, other[70_000:]),
            masked(Opcode.BINARY, big[::-1]),
            masked(Opcode.BINARY, b"last"),
        ]
    )
    for start in range(0, len(stream), read):
        connection.data_received(stream[start : start + read])
    assert got == [big, b"small", other, big[::-1], b"last"]
    assert connection.protocol.state is State.OPEN


#: Frames that no other frame can share a flush with, arriving over several reads of the
#: caller's socket: a v4 caller's 2 MB chunk stream (256000-byte reads, as uvloop reads), a
#: hypha-rpc ``message_cache`` chunk call (~256 KiB) and 100 KB calls (mixed's blobs) to v3
#: and v4 targets.
UNSHAREABLE = {
    "v4-stream-2MB": {"stream": True, "wire": "v4", "size": 2_000_000, "read": 256_000},
    "v3-chunk-call": {"wire": "v3", "size": 262_200, "read": 256_000},
    "v3-100KB": {"wire": "v3", "size": 100_000, "read": 65_536},
    "v4-100KB": {"wire": "v4", "size": 100_000, "read": 65_536},
}


@pytest.mark.parametrize("slow", [False, True], ids=["ready", "slow-target"])
@pytest.mark.parametrize("case", list(UNSHAREABLE))
async def test_frames_that_cannot_share_a_flush_reach_the_target_in_the_writes_of_batching_off(
    case: str, slow: bool
) -> None:
    """Batching on gives such frames the socket writes batching off gives them: the same bytes
    in the same writes, whether the target's socket takes every write or pauses after each big
    one (then its writer task sends them)."""
    on = await route_cpu.run(messages=2, batching=True, slow=slow, **UNSHAREABLE[case])  # type: ignore[arg-type]
    off = await route_cpu.run(messages=2, batching=False, slow=slow, **UNSHAREABLE[case])  # type: ignore[arg-type]
    for key in ("writes_of_one_call", "writes", "bytes_out_per_message", "warmup_digest"):
        assert on[key] == off[key], key
    assert on["writes_of_one_call"], "the recorded call wrote nothing"


def test_the_benchmarks_chunk_size_is_the_v4_clients() -> None:
    from rhizomorph import client

    assert route_cpu.CHUNK_SIZE == client.CHUNK_SIZE
