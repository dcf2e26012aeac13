"""v4 chunk streams through a worker: large messages sent as numbered chunks (docs/protocol-v4.md).

From a client, chunk 0 is stamped like any message and opens the stream; every chunk is
renamed to a stream id unique at the receiver and sent on: to the target's queue, the peer's
ordered link (same node) or its bulk link through the chunking actor (other nodes). To a
client, each chunk is checked to keep the stream whole (``rhizomorph/protocol/streams.py``).
"""

from __future__ import annotations

from typing import Any, Protocol

from rhizomorph.actors.peer_link import Item
from rhizomorph.actors.peers import Peers
from rhizomorph.gateway.connection import ClientConnection
from rhizomorph.gateway.undeliverable import Undeliverable
from rhizomorph.protocol import envelope, frames
from rhizomorph.protocol.streams import OpenStream, ReceivingStreams, StreamIds, Verdict

STREAM_CUT = "the chunk stream was cut before its end: its sender left, or chunks were lost between gateway workers"


class StreamHost(Undeliverable, Protocol):
    """What the streams need from the router."""

    def stamp(self, conn: ClientConnection, frame: bytes | memoryview) -> tuple[str, bytes, dict[str, Any]] | None: ...

    def unroutable(self, conn: ClientConnection, reason: str) -> None: ...

    def remote_owner(self, target: str) -> str | None: ...

    def to_client(self, target: str, frame: bytes, header: dict[str, Any] | None) -> None: ...


class ChunkStreams:
    def __init__(self, host: StreamHost, peers: Peers) -> None:
        self._host = host
        self._peers = peers
        self.ids = StreamIds()
        self.receiving = ReceivingStreams()

    def route(self, conn: ClientConnection, frame: bytes) -> None:
        """One chunk of a large message. Chunk 0 starts with the message header, which is
        stamped like any header; the stream id is renamed so it is unique at the receiver."""
        try:
            stream_id, index, flags, data = frames.decode_chunk(frame)
        except frames.FrameError as exc:
            self._host.unroutable(conn, str(exc))
            return
        last = bool(flags & frames.LAST)
        payload: bytes | memoryview = data
        stream: OpenStream | None
        if index == 0:
            if conn.streams.is_open(stream_id):
                self._host.unroutable(conn, f"stream {stream_id} is already open")
                return
            stamped = self._host.stamp(conn, data)
            if stamped is None:
                return
            target, payload, header = stamped
            if envelope.is_manager(target) or envelope.is_broadcast(target):
                self._host.undeliverable(
                    target, None, header, "a chunk stream must go to one client", sender=conn.address
                )
                return
            stream = OpenStream(target, self.ids.next(), header)
            if not last:
                conn.streams.begin(stream_id, stream)
        else:
            stream = conn.streams.chunk(stream_id, last=last)
            if stream is None:
                self._host.unroutable(conn, f"chunk {index} of unknown stream {stream_id}")
                return
        if stream.out_id in self.ids.failed:
            if last:  # the caller was told when the loss was noticed (here or at the receiving worker)
                self.ids.failed.discard(stream.out_id)
            return
        chunk = frames.encode_chunk(stream.out_id, index, last, payload)
        owner = self._host.remote_owner(stream.target)
        if owner is not None and self._peers.has_bulk_link(owner):
            self._peers.send_chunk(owner, (stream.target, None, chunk), last=last)
        else:  # a local target, or a same-node peer: chunks take their turn with small messages
            self._host.to_client(stream.target, chunk, stream.header if index == 0 or last else None)

    def accept(self, conn: ClientConnection, frame: bytes) -> bool:
        """Keep a delivered stream whole: a chunk out of sequence, or an abort, ends the stream
        for the receiving client (it gets the abort) and for the caller (a reject)."""
        stream_id, index, flags, data = frames.decode_chunk(frame)
        verdict, header = self.receiving.accept(stream_id, index, flags, data)
        if verdict is Verdict.BROKEN and header is not None:
            conn.queue.put(abort_frame(stream_id))
            self._host.undeliverable(conn.address, None, header, STREAM_CUT)
        return verdict is Verdict.DELIVER

    def bulk_failed(self, items: list[Item]) -> None:
        """Chunks lost with the chunking actor (or their target's worker): each stream they
        belong to fails on both ends. Its later chunks are dropped here; the receiving worker is
        told to abort it, and rejects the caller (it holds the header) — unless the header was
        in the lost chunk 0, then the caller is rejected from here."""
        for target, _, frame in items:
            stream_id, index, _, _ = frames.decode_chunk(frame)
            if index == 0:
                self._host.undeliverable(target, frame, None, STREAM_CUT)
            if stream_id not in self.ids.failed:
                self.ids.failed.add(stream_id)
                self._host.to_client(target, abort_frame(stream_id), None)

    def sender_left(self, conn: ClientConnection) -> None:
        """The sender left mid-stream: each receiver drops what it has. A receiver that left
        takes its streams with it."""
        for stream in conn.streams.close_all():
            self._host.to_client(stream.target, abort_frame(stream.out_id), None)
        self.receiving.forget_target(conn.address)


def abort_frame(stream_id: int) -> bytes:
    return frames.encode_chunk(stream_id, 0, True, b"", abort=True)
