"""Every WebSocket close code the router sends, in one place (documented in docs/protocol.md)."""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    #: Frames out of order (a new binary message before the last one's final fragment, or a
    #: continuation with none begun), sent by websockets itself or by the gateway's own reader.
    PROTOCOL_ERROR = 1002
    #: The router closed the socket: idle timeout (as Hypha), ``close_client``, shutdown.
    GOING_AWAY = 1001
    #: Handshake refused (bad auth frame, bad token, permission, duplicate client) or message
    #: rate exceeded (as Hypha).
    POLICY_VIOLATION = 1008
    #: A message over ``max_message_size`` (sent by websockets itself) or in too many fragments.
    MESSAGE_TOO_BIG = 1009
    #: The worker is at ``max_connections_per_worker``: try again later.
    TRY_AGAIN_LATER = 1013
    #: The same client reconnected on a newer socket.
    SUPERSEDED = 4000
    #: The client does not read: its queue passed ``max_queue_bytes`` or a write stalled.
    SLOW_CONSUMER = 4001
