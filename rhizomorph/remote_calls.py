"""hypha-rpc's remote call (``RemoteFunction.__call__``) for the v4 client: the same messages, less work.

A call through hypha-rpc builds, besides its message: a ``shortuuid`` session id (a
``uuid.UUID`` and 22 ``divmod``\\s in Python), a ``Timer`` that is an ``asyncio`` task asleep
for the method timeout (created, woken and cancelled once per call), three closures for the
promise's callbacks, and a task that hands the message to the connection at the loop's next
turn. ``V4RemoteFunction`` sends the same bytes — the same two msgpack segments, keys in the
same order, session ids of the same form — with:

- ``short_id``: the session id from ``os.urandom`` (read 4 KiB at a time) and a table of digit pairs;
- ``PendingCall``: one object per call, whose bound methods are the promise's callbacks in the
  session store and which is the call's timer too (``Timer``'s interface on one
  ``loop.call_later`` handle);
- no session at all for a call without a promise whose arguments are plain values (a
  promise's ``resolve`` or ``heartbeat``): nothing would live in it, and its id is never sent;
- the message put into the batching socket's outbox by a ``call_soon`` callback when the
  connection is a v4 one and open — at the loop's next turn, as hypha-rpc's task would, so
  messages keep their order with those sent by other tasks (anything else: a reconnecting or
  closed socket, a message to be chunked, goes through hypha-rpc's ``emit_message`` or
  ``_send_chunks`` in a task, as there).

Calls it does not cover (end-to-end encryption, no method timeout, unusual promise modes) are
left to hypha-rpc's own ``__call__``. ``rhizomorph.client._V4RPC`` makes its remote methods
with it; ``tests/test_remote_calls.py`` compares the bytes with hypha-rpc's.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import msgpack
import shortuuid
from hypha_rpc.rpc import RemoteFunction
from websockets.protocol import State

log = logging.getLogger("rhizomorph.client")

_ALPHABET = shortuuid.get_alphabet()
_ID_LENGTH = shortuuid.ShortUUID()._length  # digits of a 128-bit number in base 57: 22
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
# uuid.UUID(version=4): the variant bits 10 and the version nibble 4, as uuid.uuid4() sets them.
_UUID4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_UUID4_SET = (0x8000 << 48) | (4 << 76)


def base57(number: int) -> str:
    """``shortuuid``'s encoding of a 128-bit number: ``_ID_LENGTH`` digits, most significant first."""
    pairs = []
    base = len(_PAIRS)
    for _ in range(_ID_LENGTH // 2):
        number, pair = divmod(number, base)
        pairs.append(_PAIRS[pair])
    return "".join(reversed(pairs))


class _RandomPool:
    """``os.urandom`` read 4 KiB at a time: one system call per 256 ids instead of one each."""

    SIZE = 4096

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._bytes, self._offset = b"", self.SIZE

    def take16(self) -> int:
        if self._offset >= len(self._bytes):
            self._bytes, self._offset = os.urandom(self.SIZE), 0
        offset = self._offset
        self._offset = offset + 16
        return int.from_bytes(self._bytes[offset : offset + 16], "big")


_random = _RandomPool()
# A child process must not repeat its parent's ids: it starts with a pool of its own.
os.register_at_fork(after_in_child=_random.reset)


def short_id() -> str:
    """What ``shortuuid.uuid()`` returns: a random UUID (version 4) in base 57."""
    return base57(_random.take16() & _UUID4_CLEAR | _UUID4_SET)


def _drop_session(rpc: Any, session_id: str) -> None:
    """Forget a top-level session: its entry in the object store and in the target index."""
    rpc._remove_from_target_id_index(session_id)
    del rpc._object_store[session_id]


class PromiseState:
    """What hypha-rpc's RPC asks of a call's promise manager: settled once, and which callbacks
    end the call's session (``RPC._create_promise_manager`` defines a class for it per call)."""

    __slots__ = ("settled",)

    def __init__(self) -> None:
        self.settled = False

    def settle(self) -> None:
        self.settled = True

    def is_settled(self) -> bool:
        return self.settled

    def should_cleanup_on_callback(self, callback_name: str) -> bool:
        return callback_name in ("resolve", "reject")


class PendingCall:
    """One call's state: its future, its promise's callbacks as hypha-rpc wraps them
    (``RPC._encode_callback``: errors logged, the timer cleared, the session ended after
    ``resolve`` or ``reject``), and its timeout as hypha-rpc's ``Timer`` (``start``, ``reset``,
    ``clear``, ``started``; a heartbeat calls ``reset``) on one ``call_later`` handle. One object
    for all of it: a timer object of its own that called back into it would make a reference
    cycle, and the call's result would wait for the garbage collector."""

    __slots__ = ("rpc", "future", "session_id", "description", "timeout", "label", "message", "_handle", "started")

    def __init__(self, rpc: Any, future: asyncio.Future[Any], session_id: str | None, description: str) -> None:
        self.rpc, self.future, self.session_id, self.description = rpc, future, session_id, description
        self.timeout: float | None = None  # a call without a promise has no timer
        self.label = self.message = ""
        self._handle: asyncio.TimerHandle | None = None
        self.started = False

    def time_after(self, timeout: float, label: str, message: str) -> None:
        """Give the call a timer (not started): it rejects the call with ``message`` when it fires."""
        self.timeout, self.label, self.message = timeout, label, message

    # The raw settlers (hypha-rpc's inner resolve / reject).
    def set_result(self, result: Any) -> None:
        if not self.future.done():
            self.future.set_result(result)

    def set_exception(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    # What the session store holds: the remote peer calls these.
    def resolve(self, *args: Any, **kwargs: Any) -> None:
        self._callback("resolve", self.set_result, args, kwargs)

    def reject(self, *args: Any, **kwargs: Any) -> None:
        self._callback("reject", self.set_exception, args, kwargs)

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        try:
            self.reset(*args, **kwargs)
        except asyncio.InvalidStateError:
            pass
        except Exception as exp:
            log.error("Error in callback: %s.heartbeat (context: None), error: %s", self.session_id, exp)

    def _callback(self, name: str, settle: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        try:
            settle(*args, **kwargs)
        except asyncio.InvalidStateError:
            pass  # the future was cancelled
        except Exception as exp:
            log.error(
                "Error in callback: %s.%s (context: %s (%s)), error: %s",
                self.session_id,
                name,
                name,
                self.description,
                exp,
            )
        finally:
            if self.started:
                self.clear()
            rpc = self.rpc
            if rpc._get_session_store(self.session_id, create=False):
                rpc._cleanup_session_if_needed(self.session_id, name)

    # The timer.
    def start(self) -> None:
        if self.started:
            self.reset()
        else:
            assert self.timeout is not None, "a call without a timer"
            self._handle = asyncio.get_running_loop().call_later(self.timeout, self.time_out)
            self.started = True

    def reset(self) -> None:
        if self._handle is None:
            self.start()
        else:
            assert self.timeout is not None
            self._handle.cancel()
            self._handle = asyncio.get_running_loop().call_later(self.timeout, self.time_out)

    def clear(self) -> None:
        if self._handle is not None and self.started:
            self._handle.cancel()
            self._handle = None
            self.started = False
        else:
            log.warning("Clearing a timer (%s) which is not started", self.label)

    def time_out(self) -> None:
        """The timer fired: reject with ``TimeoutError`` and drop the session (hypha-rpc's
        ``timeout_callback``, which looks the session up by its whole id at the top level)."""
        try:
            self.set_exception(TimeoutError(self.message))
        except Exception as exp:
            log.debug("Error rejecting timed-out call: %s", exp)
        rpc, session_id = self.rpc, self.session_id
        if session_id is None:  # a call without a session (no promise) has no timer
            return
        session = rpc._object_store.get(session_id)
        if isinstance(session, dict):
            heartbeat = session.get("heartbeat_task")
            if heartbeat and not getattr(heartbeat, "done", lambda: True)():
                heartbeat.cancel()
            timer = session.get("timer")
            if timer and getattr(timer, "started", False):
                try:
                    timer.clear()
                except Exception:
                    pass
            _drop_session(rpc, session_id)
        elif session_id in rpc._object_store:
            _drop_session(rpc, session_id)


class ExpandedPromise(dict[str, Any]):
    """The promise of a call to this client as ``RPC._expand_promise`` writes it out (the call
    said ``promise: "*"``), marked so that ``_decode`` makes a ``LazyPromise`` of it."""


class LazyPromise(dict[str, Any]):
    """An ``ExpandedPromise`` decoded as ``RPC._decode`` would (``heartbeat``, ``resolve`` and
    ``reject`` remote methods, the ``interval``), each value when first looked up: a method that
    returns at once never calls its heartbeat, whose remote method is then never made."""

    def __init__(self, expanded: ExpandedPromise, decode: Any) -> None:
        super().__init__(expanded)
        self._decode = decode
        self._decoded: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        value = dict.__getitem__(self, key)
        if key not in self._decoded:
            value = self._decode(value)
            dict.__setitem__(self, key, value)
            self._decoded.add(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default


def _outbox_of(rpc: Any) -> Any:
    """The open v4 socket's outbox that ``emit_message`` would reach, or ``None``."""
    connection = rpc._connection
    websocket: Any = getattr(connection, "_websocket", None)
    outbox = getattr(websocket, "_outbox", None)  # a BatchingWebSocket the router confirmed v4 on
    if outbox is None or connection._closed or websocket.state is not State.OPEN:
        return None
    if rpc._emit_message != connection.emit_message:
        return None
    return outbox


class V4RemoteFunction(RemoteFunction):
    """A remote method of the v4 client: hypha-rpc's, called with less work per call."""

    def __call__(self, *arguments: Any, **kwargs: Any) -> Any:
        rpc = self._rpc
        with_promise = self._with_promise
        if (
            rpc._emit_message is None
            or (rpc._encryption_enabled and self._target_encryption_pub)
            or not (with_promise is True or with_promise == "*" or not with_promise)
            or (with_promise and not rpc._method_timeout)
        ):
            return super().__call__(*arguments, **kwargs)
        values = list(arguments)
        if kwargs:
            values.append(kwargs)
        encoded_method = self._encoded_method
        target_id, method_id = encoded_method["_rtarget"], encoded_method["_rmethod"]
        session_id: str | None
        if not with_promise and type(values) is list and rpc._encodes_as_is(values):
            # Nothing of this call would live in its session (no promise, no callbacks): none is
            # made (hypha-rpc makes one and drops it once sent; its id never goes on the wire).
            session_id, args = None, values
        else:
            session_id = short_id()
            top_key = session_id
            if self._local_parent:
                top_key = self._local_parent.split(".")[0]
                session_id = self._local_parent + "." + session_id
            store = rpc._get_session_store(session_id, create=True)
            store["target_id"] = target_id
            index = rpc._target_id_index.get(target_id)
            if index is None:
                index = rpc._target_id_index[target_id] = set()
            index.add(top_key)
            args = rpc._encode(values, session_id=session_id, local_workspace=self._local_workspace)
        client_id = rpc._client_id
        main = {
            "type": "method",
            "from": client_id if rpc._local_workspace is None else rpc._local_workspace + "/" + client_id,
            "to": target_id,
            "method": method_id,
        }
        extra: dict[str, Any] = {}
        if args:
            extra["args"] = args
        if kwargs:
            extra["with_kwargs"] = True
        if self._remote_parent:
            main["parent"] = self._remote_parent
        loop = asyncio.get_running_loop()
        call = PendingCall(rpc, loop.create_future(), session_id, self._description)
        if with_promise:
            assert session_id is not None
            main["session"] = session_id
            method_name = f"{target_id}:{method_id}"
            timeout = rpc._rintf_timeout if "_rintf_" in method_id else rpc._method_timeout
            call.time_after(timeout, method_name, f"Method call timed out: {method_name}, context: {self._description}")
            store["_promise_manager"] = rpc._create_promise_manager()
            store["heartbeat"] = call.heartbeat
            store["timer"] = call
            store["resolve"] = call.resolve
            store["reject"] = call.reject
            if with_promise is True:
                extra["promise"] = self._promise_data(session_id)
            else:
                extra["promise"] = "*"
                extra["t"] = timeout / 2
        package = msgpack.packb(main)
        if extra:
            package += msgpack.packb(extra)
        if len(package) <= rpc._long_message_chunk_size + 1024 or self.__no_chunk__:
            # At the loop's next turn, as hypha-rpc's task would: messages keep their order
            # with those other tasks send (events, chunks).
            loop.call_soon(self._send_soon, package, call)
        else:
            self._send_in_task(rpc._send_chunks(package, target_id, self._remote_parent), call)
        return call.future

    def _send_soon(self, package: bytes, call: PendingCall) -> None:
        outbox = _outbox_of(self._rpc)
        if outbox is not None and outbox.put(package):
            self._sent(call)
        else:  # not an open v4 socket: hypha-rpc's emit_message waits for a reconnection, or fails
            self._send_in_task(self._rpc._emit_message(package), call)

    def _send_in_task(self, sending: Any, call: PendingCall) -> None:
        task = asyncio.ensure_future(sending)
        self._rpc._background_tasks.add(task)
        task.add_done_callback(lambda done: self._on_sent(done, call))

    def _promise_data(self, session_id: str) -> dict[str, Any]:
        """The promise as ``RPC._encode_promise`` encodes it (``_rpromise: True`` methods)."""
        rpc = self._rpc
        target = f"{self._local_workspace}/{rpc._client_id}" if self._local_workspace else rpc._client_id

        def callback(name: str) -> dict[str, Any]:
            return {"_rtype": "method", "_rtarget": target, "_rmethod": f"{session_id}.{name}", "_rpromise": False}

        heartbeat = callback("heartbeat")
        return {
            "heartbeat": heartbeat,
            "interval": rpc._method_timeout / 2,
            "resolve": callback("resolve"),
            "reject": callback("reject"),
        }

    def _on_sent(self, done: asyncio.Task[Any], call: PendingCall) -> None:
        self._rpc._background_tasks.discard(done)
        error = done.exception()
        if error is None:
            self._sent(call)
            return
        method = f"{self._encoded_method['_rtarget']}:{self._encoded_method['_rmethod']}"
        call.set_exception(Exception(f"Failed to send the request when calling method ({method}), error: {error}"))
        if call.started:
            call.clear()

    def _sent(self, call: PendingCall) -> None:
        """The message is on its way: the call's timeout runs from now; a call without a
        promise is done, and its session too unless something in it lives on."""
        if call.timeout is not None:
            call.start()
        if self._with_promise:
            return
        call.set_result(None)
        if self._local_parent or call.session_id is None:
            return
        rpc = self._rpc
        session = rpc._object_store.get(call.session_id)
        if isinstance(session, dict) and not any(
            callable(value) or isinstance(value, dict)
            for key, value in session.items()
            if not key.startswith("_") and key != "target_id"
        ):
            _drop_session(rpc, call.session_id)
