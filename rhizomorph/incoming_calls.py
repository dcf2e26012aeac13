"""hypha-rpc's handling of a call to this client (``RPC._handle_method``) for the v4 client: the
same effects, less work per call.

For each incoming call with a promise, hypha-rpc creates an ``asyncio`` task for the call's
heartbeat before it runs the method; a method that returns at once cancels it before it ever
ran (a task made, stepped once to deliver the cancellation, and dropped). It also decodes both
the ``resolve`` and the ``reject`` callbacks of the promise, though one of them is used.

``handle_method`` does what hypha-rpc's does for a plain call (no end-to-end encryption, an
expanded promise ``"*"`` or none, a method found and allowed by the simple rules) and leaves
anything else to hypha-rpc's own code, before it has done anything:

- ``Heartbeat``: the heartbeat as a ``call_soon`` handle in the place hypha-rpc's task would
  take its first step; a method that returns at once cancels the handle. A method still running
  at that turn gets what hypha-rpc's task does: a heartbeat at once, then one per interval
  until the method ends, the method cancelled if a heartbeat fails.
- ``reject`` is decoded when first called.

``rhizomorph.client._V4RPC._handle_method`` calls it; ``tests/test_remote_calls.py`` compares
the provider's bytes with hypha-rpc's.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

log = logging.getLogger("rhizomorph.client")

#: Object-store keys that are not call sessions (hypha-rpc skips them for session GC).
_SYSTEM_STORES = ("services", "message_cache")


class Heartbeat:
    """The heartbeat of one incoming call, with the parts of ``asyncio.Task``'s interface
    hypha-rpc uses on it (``cancel``, ``done``, ``cancelled``). Its first beat comes from a
    ``call_soon`` handle; only a method still running then gets a task for the later beats."""

    __slots__ = ("rpc", "promise", "method_path", "interval", "method_task", "_handle", "_task", "_over")

    def __init__(self, rpc: Any, promise: Any, method_path: str, interval: float) -> None:
        self.rpc, self.promise, self.method_path, self.interval = rpc, promise, method_path, interval
        self.method_task: Any = None  # what the method returned (its task, when it is async)
        self._task: asyncio.Task[None] | None = None
        self._over = False  # cancelled or ended without a task
        self._handle: asyncio.Handle | None = asyncio.get_running_loop().call_soon(self._begin)

    def cancel(self) -> bool:
        if self._task is not None:
            return self._task.cancel()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._over = True
            return True
        return False

    def done(self) -> bool:
        return self._task.done() if self._task is not None else self._over

    def cancelled(self) -> bool:
        return self._task.cancelled() if self._task is not None else self._over

    def _stop_method(self) -> None:
        method_task = self.method_task
        if method_task and not method_task.done():
            method_task.cancel()

    def _failed(self, error: Exception) -> None:
        log.error("Failed to reset the heartbeat timer: %s, error: %s", self.method_path, error)
        self._stop_method()

    def _begin(self) -> None:
        """hypha-rpc's heartbeat task, first step: beat at once."""
        self._handle = None
        try:
            beat = self.promise["heartbeat"]()
        except Exception as exp:
            self._over = True
            self._failed(exp)
            return
        task = self._task = asyncio.ensure_future(self._beating(beat))
        background = self.rpc._background_tasks  # cancelled when the client closes, as hypha-rpc's
        background.add(task)
        task.add_done_callback(background.discard)

    async def _beating(self, beat: Any) -> None:
        while True:
            try:
                await beat
            except asyncio.CancelledError:
                self._stop_method()
                break
            except Exception as exp:
                self._failed(exp)
                break
            method_task = self.method_task
            if method_task and method_task.done():
                break
            await asyncio.sleep(self.interval)
            try:
                beat = self.promise["heartbeat"]()
            except Exception as exp:
                self._failed(exp)
                break


class _LazyReject:
    """The promise's ``reject``, decoded when called (most calls resolve)."""

    __slots__ = ("promise",)

    def __init__(self, promise: Any) -> None:
        self.promise = promise

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.promise["reject"](*args, **kwargs)


def handle_method(rpc: Any, data: dict[str, Any], fallback: Any) -> None:
    """``RPC._handle_method`` for a plain call; ``fallback(data)`` (hypha-rpc's) for the rest."""
    ctx = data.get("ctx")
    promise_mode = data.get("promise", False)
    source, method_path, to = data.get("from"), data.get("method"), data.get("to")
    if (
        type(ctx) is not dict
        or "_enc" in data
        or not (promise_mode is False or (promise_mode == "*" and "session" in data and "t" in data))
        or type(source) is not str
        or type(method_path) is not str
        or type(to) is not str
    ):
        return fallback(data)
    remote_workspace, slash, _ = source.partition("/")
    if not slash:
        return fallback(data)
    if "/" not in to:
        to = data["to"] = remote_workspace + "/" + to
    ctx["to"] = to
    local_workspace = rpc._local_workspace
    if local_workspace is None:
        local_workspace = to.split("/")[0]
    elif local_workspace == "*" or to.split("/")[0] != local_workspace:
        return fallback(data)

    store = rpc._object_store
    parts = method_path.split(".")
    method: Any = store
    for part in parts:
        if not isinstance(method, dict) or part not in method:
            return fallback(data)  # not found (hypha-rpc rejects or ignores), or not in a dict
        method = method[part]
    if not callable(method):
        return fallback(data)
    annotations = rpc._method_annotations
    try:
        annotation = annotations[method] if method in annotations else None
    except TypeError:  # an unhashable callable: hypha-rpc's error
        return fallback(data)
    require_context = False
    if annotation is not None:
        if (
            (annotation.get("visibility", "protected") == "protected" and local_workspace != remote_workspace)
            or annotation.get("trusted_keys") is not None
            or annotation.get("run_in_executor")
        ):
            return fallback(data)
        require_context = annotation.get("require_context")
    else:  # a session's method: only the peer the session was made for may call it
        session = store.get(parts[0])
        target = session.get("target_id") if isinstance(session, dict) else None
        if local_workspace == remote_workspace and target and "/" not in target:
            target = local_workspace + "/" + target
        if target != source:
            return fallback(data)
    local_parent = data.get("parent")
    if local_parent and not method_path.startswith("services.") and rpc._get_session_store(local_parent) is None:
        return fallback(data)  # the parent session was closed: hypha-rpc's error

    # As hypha-rpc, from here on: the promise, its heartbeat, the method.
    remote_parent = data.get("session")
    heartbeat: Heartbeat | None = None
    resolve: Any = None
    reject: Any = None
    try:
        if promise_mode:
            promise = rpc._decode(
                rpc._expand_promise(data),
                remote_parent=remote_parent,
                local_parent=local_parent,
                remote_workspace=remote_workspace,
                local_workspace=local_workspace,
            )
            resolve, reject = promise["resolve"], _LazyReject(promise)
            heartbeat = Heartbeat(rpc, promise, method_path, promise["interval"])
            session_store = rpc._get_session_store(remote_parent)
            if session_store:
                session_store["heartbeat_task"] = heartbeat
        if len(parts) > 1 and parts[0] not in _SYSTEM_STORES:
            top_session = store.get(parts[0])
            if isinstance(top_session, dict):
                top_session["_last_activity_at"] = time.time()  # for hypha-rpc's session GC
        if data.get("args"):
            args = rpc._decode(data["args"], remote_parent=remote_parent, remote_workspace=remote_workspace)
        else:
            args = []
        kwargs = args.pop() if data.get("with_kwargs") else {}
        if require_context:
            kwargs["context"] = ctx
        method_name = f"{source}:{method_path}"
        method_task = rpc._call_method(
            method, args, kwargs, resolve, reject, heartbeat_task=heartbeat, method_name=method_name
        )
        if heartbeat is not None:
            heartbeat.method_task = method_task
        session_store = rpc._get_session_store(remote_parent)
        if session_store and "heartbeat_task" in session_store:
            del session_store["heartbeat_task"]
    except Exception as err:
        if heartbeat is not None and not heartbeat.cancelled() and not heartbeat.done():
            heartbeat.cancel()
        if callable(reject):
            reject(err)
        rpc._log.debug("Error during calling method: %s", err)
