"""The state of v4 chunk streams (large messages sent in chunks, docs/protocol-v4.md).

Two ends in a worker:

- ``SendingStreams`` (one per connection): the streams a client is sending. Chunk 0 opens a
  stream with its target and the header of the message; later chunks must name an open
  stream; the last one closes it. The router renames each stream (``StreamIds``) so ids are
  unique at the receiver whatever the senders chose.
- ``ReceivingStreams`` (one per worker): the streams being delivered to its clients. A chunk
  out of sequence, or an abort, ends the stream for the receiver and for the caller.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import Enum
from typing import Any

from rhizomorph.protocol import envelope, frames


@dataclass(frozen=True, slots=True)
class OpenStream:
    """A stream a client is sending: where it goes, the id it travels under, its header."""

    target: str
    out_id: int
    header: dict[str, Any]


class StreamIds:
    """Stream ids one worker hands out: a random high half, a counter low half."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._base = (rng or random.Random()).getrandbits(31) << 32
        self.issued = 0
        #: Outbound streams whose chunks were lost between workers: later chunks are dropped.
        self.failed: set[int] = set()

    def next(self) -> int:
        self.issued += 1
        return self._base | self.issued


class SendingStreams:
    def __init__(self) -> None:
        self._open: dict[int, OpenStream] = {}

    def __len__(self) -> int:
        return len(self._open)

    def is_open(self, stream_id: int) -> bool:
        return stream_id in self._open

    def begin(self, stream_id: int, stream: OpenStream) -> None:
        self._open[stream_id] = stream

    def chunk(self, stream_id: int, *, last: bool) -> OpenStream | None:
        """The stream a later chunk belongs to (``None``: unknown); the last one closes it."""
        return self._open.pop(stream_id, None) if last else self._open.get(stream_id)

    def close_all(self) -> list[OpenStream]:
        """The sender left: every stream it had open (their receivers must be told)."""
        streams = list(self._open.values())
        self._open.clear()
        return streams


class Verdict(Enum):
    #: Hand the chunk to the receiving client.
    DELIVER = "deliver"
    #: Nothing to deliver: a finished or unknown stream, or an unreadable first chunk.
    DROP = "drop"
    #: The stream broke: the receiver gets an abort, the caller is told (``header``).
    BROKEN = "broken"


class ReceivingStreams:
    def __init__(self) -> None:
        #: stream id -> (header of the message, index of the next chunk)
        self._open: dict[int, tuple[dict[str, Any], int]] = {}

    def __len__(self) -> int:
        return len(self._open)

    def accept(
        self, stream_id: int, index: int, flags: int, data: bytes | memoryview
    ) -> tuple[Verdict, dict[str, Any] | None]:
        """Check one chunk on its way to the receiving client. With ``Verdict.BROKEN`` comes
        the header of the message, whose sender is to be told."""
        known = self._open.get(stream_id)
        aborted = bool(flags & frames.ABORT)
        if index == 0 and not aborted:
            try:
                header = envelope.parse(data).header
            except envelope.EnvelopeError:
                return Verdict.DROP, None
            if not flags & frames.LAST:
                self._open[stream_id] = (header, 1)
            return Verdict.DELIVER, None
        if known is not None and index == known[1] and not aborted:
            if flags & frames.LAST:
                del self._open[stream_id]
            else:
                self._open[stream_id] = (known[0], index + 1)
            return Verdict.DELIVER, None
        if known is not None:  # a gap, or the sender's worker lost chunks on the way
            del self._open[stream_id]
            return Verdict.BROKEN, known[0]
        return Verdict.DROP, None

    def forget_target(self, address: str) -> None:
        """The receiving client left: its streams are gone with it."""
        for stream_id in [i for i, (header, _) in self._open.items() if header.get("to") == address]:
            del self._open[stream_id]
