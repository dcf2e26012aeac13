"""The manager's ``message_cache`` (sans-I/O): messages that arrive in chunks, per caller.

hypha-rpc sends a message larger than its chunk size (256 KiB) as calls to the receiver's
``built-in`` service: ``message_cache.create(key)``, ``set(key, index, chunk)`` (or
``append(key, chunk)``) per chunk, then ``process(key)``, which joins the chunks in index order
into one message. Each caller's messages are kept apart (a key names a message of that caller
only) and bounded: in bytes held and in messages open. Going over a bound refuses the call;
what the caller had sent before stays until it removes it, processes it or disconnects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: What one chunk costs beyond its bytes (its slot in the table), so that empty chunks are bounded too.
CHUNK_OVERHEAD = 64
MAX_KEY_LENGTH = 256


class CacheError(Exception):
    """A refused ``message_cache`` call; the message goes back to the caller."""


@dataclass(slots=True)
class _Message:
    chunks: dict[int, bytes] = field(default_factory=dict)
    cost: int = 0


class MessageCache:
    def __init__(self, max_bytes_per_caller: int, max_messages_per_caller: int = 64) -> None:
        self.max_bytes = max_bytes_per_caller
        self.max_messages = max_messages_per_caller
        self._callers: dict[str, dict[str, _Message]] = {}
        self._cost: dict[str, int] = {}

    def create(self, caller: str, key: str, overwrite: bool = False) -> None:
        _check_key(key)
        messages = self._callers.get(caller, {})
        if key in messages:
            if not overwrite:
                raise CacheError(f"a message with key {key} is already open; remove it or pass overwrite")
            self._drop(caller, key)
        elif len(messages) >= self.max_messages:
            raise CacheError(f"message cache: at most {self.max_messages} messages may be open at once")
        self._callers.setdefault(caller, {})[key] = _Message()

    def append(self, caller: str, key: str, data: bytes) -> None:
        message = self._message(caller, key)
        self.set(caller, key, len(message.chunks), data)

    def set(self, caller: str, key: str, index: int, data: bytes) -> None:
        message = self._message(caller, key)
        if not isinstance(data, bytes):
            raise CacheError("a chunk must be bytes")
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise CacheError("a chunk index must be an integer >= 0")
        old = message.chunks.get(index)
        change = len(data) + CHUNK_OVERHEAD - (len(old) + CHUNK_OVERHEAD if old is not None else 0)
        held = self._cost.get(caller, 0)
        if held + change > self.max_bytes:
            raise CacheError(
                f"message cache limit: a caller may hold at most {self.max_bytes} bytes of unprocessed chunks"
            )
        message.chunks[index] = data
        message.cost += change
        self._cost[caller] = held + change

    def remove(self, caller: str, key: str) -> None:
        self._message(caller, key)
        self._drop(caller, key)

    def take(self, caller: str, key: str) -> bytes:
        """The whole message, chunks joined in index order; it leaves the cache either way."""
        message = self._message(caller, key)
        self._drop(caller, key)
        count = len(message.chunks)
        missing = [i for i in range(count) if i not in message.chunks]
        if missing:  # some index is at or past ``count``: the ones below it that never came
            raise CacheError(f"message {key} is missing chunks {missing[:10]}")
        return b"".join(message.chunks[i] for i in range(count))

    def forget(self, caller: str) -> None:
        """The caller is gone: drop what it left."""
        self._callers.pop(caller, None)
        self._cost.pop(caller, None)

    def held(self, caller: str) -> int:
        """Bytes (with per-chunk overhead) the caller holds."""
        return self._cost.get(caller, 0)

    def open_messages(self, caller: str) -> int:
        return len(self._callers.get(caller, {}))

    @property
    def callers(self) -> int:
        return len(self._callers)

    @property
    def total(self) -> int:
        """Bytes (with per-chunk overhead) held for all callers."""
        return sum(self._cost.values())

    def _message(self, caller: str, key: str) -> _Message:
        message = self._callers.get(caller, {}).get(key) if isinstance(key, str) else None
        if message is None:
            raise CacheError(f"Message with key {key} does not exist")
        return message

    def _drop(self, caller: str, key: str) -> None:
        messages = self._callers[caller]
        message = messages.pop(key)
        left = self._cost.get(caller, 0) - message.cost
        if messages:
            self._cost[caller] = left
        else:
            del self._callers[caller]
            self._cost.pop(caller, None)


def _check_key(key: object) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise CacheError(f"a message key must be a non-empty string of at most {MAX_KEY_LENGTH} characters")


def split(data: bytes, size: int) -> list[bytes]:
    """``data`` in chunks of ``size`` bytes (the last may be shorter), as a sender cuts them."""
    if size <= 0:
        raise ValueError("chunk size must be positive")
    return [data[i : i + size] for i in range(0, len(data), size)] or [b""]


#: hypha-rpc's chunk size (``long_message_chunk_size``): a message over it plus 1 KiB goes in chunks.
CHUNK_SIZE = 256 * 1024


def needs_chunks(size: int) -> bool:
    """Whether a message of ``size`` bytes is sent in chunks, by hypha-rpc's rule; a Python
    client drops a single frame over about 500 KB."""
    return size > CHUNK_SIZE + 1024
