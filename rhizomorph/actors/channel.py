"""A direct channel between two gateway workers of one node: batches over a Unix socket.

Ray stays the control plane (placement, discovery, restarts): a worker learns its peers'
socket paths through Ray calls, and only peers on its own node are reached this way. The
socket takes the per-message path off Ray, whose actor calls cost far more per batch
(benchmarks/bench_peer_channel.py measures both). Peers on other nodes keep Ray calls.

Wire: ``u32 length`` + ``msgpack([[target, event_type, frame], ...])``, one batch per write.
The socket lives in a private directory (mode 0700) of the worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import struct
import tempfile
from collections.abc import Callable

import msgpack

from rhizomorph.actors.peer_link import Item

log = logging.getLogger("rhizomorph.channel")

_LENGTH = struct.Struct(">I")
MAX_BATCH_BYTES = 256 * 1024 * 1024
#: A batch is written without waiting (no task, no drain) while the socket's unsent bytes stay
#: under this; beyond it the link waits for the drain, which is the back-pressure.
SYNC_WRITE_LIMIT = 1 << 20


def encode_batch(items: list[Item]) -> bytes:
    return b"".join(batch_parts(items))


#: A frame at least this long is a piece of its own in the batch's ``writelines``, written from
#: where it is: packed, it would be copied into msgpack's buffer and out of it again.
LARGE_FRAME = 65536


def batch_parts(items: list[Item]) -> list[bytes]:
    """A batch as pieces for ``writelines``: its length prefix, then its body (the bytes of
    ``msgpack.packb(items)``), large frames apart, so that no frame is copied to make it."""
    if all(len(item[2]) < LARGE_FRAME for item in items):
        body = msgpack.packb(items, use_bin_type=True)  # tuples pack as arrays
        return [_LENGTH.pack(len(body)), body]
    parts = [b"", _array_header(len(items))]
    for item in items:
        target, event_type, frame = item
        if len(frame) < LARGE_FRAME:
            parts.append(msgpack.packb(item, use_bin_type=True))
        else:  # what packb writes for the item: its 3-array header, the strings, then bin 32 (>= 64 KiB)
            head = b"\xc6" + len(frame).to_bytes(4, "big")
            parts.append(b"\x93" + msgpack.packb(target) + msgpack.packb(event_type) + head)
            parts.append(frame)
    parts[0] = _LENGTH.pack(sum(map(len, parts)))
    return parts


def _array_header(count: int) -> bytes:
    """A msgpack array header for ``count`` entries (fixarray, array 16 or array 32)."""
    if count < 16:
        return bytes((0x90 | count,))
    if count < 65536:
        return b"\xdc" + count.to_bytes(2, "big")
    return b"\xdd" + count.to_bytes(4, "big")


def decode_batch(body: bytes | memoryview) -> list[Item]:
    return list(msgpack.unpackb(body, raw=False, use_list=False))  # items come back as tuples


class ChannelServer:
    """Accepts peers' channels and hands every batch to ``deliver``, in order per peer."""

    def __init__(self, deliver: Callable[[list[Item]], None]) -> None:
        self._deliver = deliver
        self._dir = tempfile.mkdtemp(prefix="rhizomorph-")  # 0700: only this user can connect
        self.path = os.path.join(self._dir, "peer.sock")
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: _BatchReader(self._deliver), path=self.path)
        return self.path

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        shutil.rmtree(self._dir, ignore_errors=True)


class _BatchReader(asyncio.Protocol):
    """One peer's end: batches are cut out of the byte stream and delivered as they complete,
    from ``data_received`` (no reading coroutine to wake per batch)."""

    def __init__(self, deliver: Callable[[list[Item]], None]) -> None:
        self._deliver = deliver
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer: bytearray | memoryview = self._buffer
        if self._buffer:
            self._buffer += data
        else:  # batches whole in this read are decoded from it: only a batch's start is buffered
            buffer = memoryview(data)
        offset, end = 0, len(buffer)
        try:
            while end - offset >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(buffer, offset)
                if length > MAX_BATCH_BYTES:
                    raise ValueError(f"batch of {length} bytes")
                if end - offset - _LENGTH.size < length:
                    break
                start = offset + _LENGTH.size
                self._deliver(decode_batch(memoryview(buffer)[start : start + length]))
                offset = start + length
        except Exception:
            log.exception("peer channel failed")
            self._buffer = bytearray()  # not resized in place: the traceback may still view it
            if self._transport is not None:
                self._transport.close()
            return
        if isinstance(buffer, memoryview):
            if offset < end:
                self._buffer = bytearray(buffer[offset:])
        else:
            del buffer[:offset]  # the decoded batches hold copies, no view of the buffer


class Channel:
    """The sending end: ``send(items)`` writes one batch and waits for the socket to drain;
    ``try_send(items)`` writes it at once if the socket is connected and not backed up."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Lock = asyncio.Lock()

    def try_send(self, items: list[Item]) -> bool:
        writer = self._writer
        if writer is None or writer.is_closing() or writer.transport.get_write_buffer_size() > SYNC_WRITE_LIMIT:
            return False
        writer.writelines(batch_parts(items))
        return True

    async def send(self, items: list[Item]) -> None:
        writer = self._writer
        if writer is None or writer.is_closing():
            writer = await self._connect()
        writer.writelines(batch_parts(items))
        await writer.drain()

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._connecting:
            if self._writer is None or self._writer.is_closing():
                _, self._writer = await asyncio.open_unix_connection(self.path)
            return self._writer

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
