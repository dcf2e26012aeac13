"""Tasks started from callbacks, kept alive until they finish.

The event loop holds only a weak reference to a task: one that nobody keeps may be collected
before it runs to the end. ``spawn`` keeps a strong one until the task is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    task = asyncio.ensure_future(coro)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
