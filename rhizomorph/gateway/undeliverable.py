"""What the router's helpers call when a message cannot be delivered: ``Router.undeliverable``.

The lookups (``locating.py``), the reconnect waits (``reconnecting.py``) and the chunk streams
(``streams.py``) each hand such a message back to the router, the one place that tells its
sender; this is the signature they share.
"""

from __future__ import annotations

from typing import Any, Protocol


class Undeliverable(Protocol):
    def undeliverable(
        self,
        target: str,
        frame: bytes | None,
        header: dict[str, Any] | None = None,
        reason: str | None = None,
        *,
        sender: str | None = None,
    ) -> None:
        """Tell the sender of ``frame`` (a call's: a reject) that ``target`` cannot have it;
        ``reason`` replaces "not connected", ``sender`` the header's ``from``."""
