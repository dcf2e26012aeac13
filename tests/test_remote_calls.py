"""The v4 client's remote calls (rhizomorph/remote_calls.py) put the same bytes on the wire as
hypha-rpc's ``RemoteFunction.__call__`` and keep its semantics: results, errors, keyword
arguments, callbacks, generators, timeouts and heartbeats, sessions cleaned up, a closed
connection. Real router, real clients; the bytes are compared with session ids drawn from one
counter for both implementations."""

from __future__ import annotations

import asyncio
import functools
import gc
import io
import itertools
import re
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import shortuuid
from hypha_rpc.rpc import RemoteFunction

from benchmarks.scenarios import mixed_messages
from rhizomorph import client, remote_calls
from rhizomorph.remote_calls import PendingCall, V4RemoteFunction

#: Session-store keys that are not call sessions.
STORES = {"services", "message_cache"}


def sessions(server: Any) -> list[str]:
    return [key for key in server.rpc._object_store if key not in STORES]


async def no_sessions(client: Any) -> list[str]:
    """The client's sessions once the calls its connect left in flight have settled (hypha-rpc's
    connect sends its ``subscribe`` from a task: its session may still wait for the answer)."""
    for _ in range(100):
        if not (left := sessions(client)):
            break
        await asyncio.sleep(0.05)
    return left


async def provider_service(connect: Any, v4: bool = True) -> tuple[Any, str]:
    provider = await connect(v4=v4)

    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return "done"

    def fail(message: str) -> None:
        raise ValueError(message)

    async def count(n: int) -> Any:
        for i in range(n):
            yield i

    await provider.register_service(
        {
            "id": "calls",
            "config": {"visibility": "public"},
            "echo": lambda x: x,
            "join": lambda a, b="-", c="": f"{a}{b}{c}",
            "apply": lambda fn, value: fn(value),
            "slow": slow,
            "fail": fail,
            "count": count,
        }
    )
    return provider, f"{provider.config.workspace}/{provider.config.client_id}:calls"


async def scenario(service: Any) -> list[Any]:
    """Calls of every kind the bytes test compares, in a fixed order."""
    results: list[Any] = [await service.echo(b"\x01" * 256), await service.echo(mixed_messages(3)[2])]
    results.append(await service.join("a", c="!"))
    results.append(await service.apply(lambda v: v * 2, 21))
    results.append([item async for item in await service.count(3)])
    results.append(await service.slow(0.01))  # a method still running a turn later: it beats at once
    with pytest.raises(Exception, match="bad input"):
        await service.fail("bad input")
    return results


def _counted(ids: Iterator[int]) -> str:
    """Session ids from a counter, of the length of hypha-rpc's, easy to find in a message."""
    return f"id{next(ids):020d}"


def renumbered(messages: list[bytes]) -> list[bytes]:
    """The messages with each counted session id replaced by its rank of first appearance: the
    v4 client draws no id for a call that needs no session (hypha-rpc draws one and never sends
    it), so the ids it sends come from other counts than hypha-rpc's. Same length: the msgpack
    stays as it was."""
    ranks: dict[bytes, bytes] = {}

    def rank(match: re.Match[bytes]) -> bytes:
        return ranks.setdefault(match.group(), b"id%020d" % len(ranks))

    return [_without_handler_frame(re.sub(rb"id[0-9]{20}", rank, message)) for message in messages]


def _without_handler_frame(message: bytes) -> bytes:
    """An error's traceback names the function that handled the call: hypha-rpc's
    ``RPC._handle_method`` or ``rhizomorph.incoming_calls.handle_method``. That frame is taken
    out; every other byte of the message is compared."""
    if b"_rtrace" not in message:
        return message
    unpacker = msgpack.Unpacker(io.BytesIO(message))
    main, extra = unpacker.unpack(), unpacker.unpack()
    for value in extra.get("args", []):
        if isinstance(value, dict) and "_rtrace" in value:
            value["_rtrace"] = re.sub(
                r'  File "[^"]*", line \d+, in _?handle_method\n(    .*\n)*?(?=  File)', "", value["_rtrace"]
            )
    return msgpack.packb(main) + msgpack.packb(extra)


def record(server: Any) -> list[bytes]:
    """Every message the client hands to its batching socket's outbox, in order."""
    outbox = server.rpc._connection._websocket._outbox
    assert outbox is not None, "not a v4 connection"
    sent: list[bytes] = []
    put = outbox.put

    def recording_put(data: bytes) -> bool:
        sent.append(bytes(data))
        return put(data)

    outbox.put = recording_put
    return sent


async def test_the_bytes_on_the_wire_are_hypha_rpcs(connect, monkeypatch):
    provider, service_id = await provider_service(connect)
    caller = await connect(v4=True)
    service = await caller.get_service(service_id)
    assert isinstance(service.echo, V4RemoteFunction)
    await service.echo(b"")  # the first call opens the session: both runs below start alike
    caller_sent, provider_sent = record(caller), record(provider)
    runs = {}
    for implementation in ("hypha-rpc", "v4"):
        fixed = functools.partial(_counted, itertools.count())
        monkeypatch.setattr(shortuuid, "uuid", fixed)
        monkeypatch.setattr(remote_calls, "short_id", fixed)
        with monkeypatch.context() as patch:
            if implementation == "hypha-rpc":
                patch.setattr(V4RemoteFunction, "__call__", RemoteFunction.__call__)
                patch.setattr(client, "handle_method", lambda rpc, data, fallback: fallback(data))
            results = await scenario(service)
            await asyncio.sleep(0.05)  # the generator's close call, answered after the last item
        runs[implementation] = results, list(caller_sent), list(provider_sent)
        caller_sent.clear()
        provider_sent.clear()
    expected = [b"\x01" * 256, mixed_messages(3)[2], "a-!", 42, [0, 1, 2], "done"]
    assert runs["v4"][0] == runs["hypha-rpc"][0] == expected
    assert len(runs["v4"][1]) >= 7 and len(runs["v4"][2]) >= 8
    assert renumbered(runs["v4"][1]) == renumbered(runs["hypha-rpc"][1]), "the caller's messages differ"
    assert renumbered(runs["v4"][2]) == renumbered(runs["hypha-rpc"][2]), "the provider's messages differ"
    # The provider's heartbeats (for the methods still running a turn later) were among them.
    assert any(b".heartbeat" in message for message in runs["v4"][2])


async def test_a_call_keeps_its_place_among_messages_other_tasks_send(connect):
    provider, service_id = await provider_service(connect)
    caller = await connect(v4=True)
    service = await caller.get_service(service_id)
    await service.echo(0)
    sent = record(caller)
    to = f"{provider.config.workspace}/{provider.config.client_id}"
    caller.rpc.emit({"type": "first", "to": to})  # hypha-rpc sends it from a task
    echoed = service.echo(b"second")
    caller.rpc.emit({"type": "third", "to": to})
    assert await echoed == b"second"
    kinds = [msgpack.Unpacker(io.BytesIO(message)).unpack()["type"] for message in sent[:3]]
    assert kinds == ["first", "method", "third"]


@pytest.mark.parametrize("provider_v4", [False, True], ids=["v3-provider", "v4-provider"])
async def test_calls_settle_and_leave_no_session_behind(connect, provider_v4):
    _, service_id = await provider_service(connect, v4=provider_v4)
    caller = await connect(v4=True)
    service = await caller.get_service(service_id)
    before = await no_sessions(caller)
    results = await asyncio.gather(*(service.echo(i) for i in range(50)))
    assert results == list(range(50))
    assert await scenario(service)
    await asyncio.sleep(0.2)  # the generator's close call, answered after the last item
    assert sessions(caller) == before
    assert not caller.rpc._target_id_index.get(service_id.split(":")[0])


async def test_a_call_times_out_and_its_session_is_dropped(connect, raw):
    silent = await raw()  # a raw client that never reads: nothing answers, nothing beats
    caller = await connect(v4=True, method_timeout=0.5)
    method = caller.rpc._generate_remote_method(
        {"_rtype": "method", "_rtarget": silent.address, "_rmethod": "services.nothing.echo", "_rpromise": "*"}
    )
    assert isinstance(method, V4RemoteFunction)
    before = await no_sessions(caller)
    with pytest.raises(TimeoutError, match="Method call timed out"):
        await asyncio.wait_for(method(1), 10)
    assert sessions(caller) == before


async def test_heartbeats_keep_a_long_call_alive(connect):
    _, service_id = await provider_service(connect)
    caller = await connect(v4=True, method_timeout=0.6)
    service = await caller.get_service(service_id)
    assert await service.slow(1.5) == "done"


async def test_a_call_on_a_closed_connection_fails_at_once(connect):
    _, service_id = await provider_service(connect)
    caller = await connect(v4=True)
    service = await caller.get_service(service_id)
    await caller.disconnect()
    with pytest.raises(Exception, match="[Cc]losed"):
        await asyncio.wait_for(service.echo(1), 5)


async def test_a_call_is_its_own_timer_and_can_be_freed_by_reference_counting(connect):
    """The call's timer lives on the call (``PendingCall``): no reference cycle keeps a settled
    call's result alive (a windowed generator left early is closed when dropped, not at the
    next garbage collection)."""
    _, service_id = await provider_service(connect)
    caller = await connect(v4=True)
    service = await caller.get_service(service_id)
    before = set(sessions(caller))
    gc.disable()
    try:
        future = service.echo(b"x")
        (session,) = set(sessions(caller)) - before
        call = caller.rpc._object_store[session]["timer"]
        await asyncio.sleep(0)  # the message leaves at the loop's next turn, and the timer starts
        assert isinstance(call, PendingCall) and call.started
        call_id = id(call)
        del call
        assert await future == b"x"
        # Freed when its session went, without a collection:
        assert not any(id(o) == call_id for o in gc.get_objects() if type(o) is PendingCall)
    finally:
        gc.enable()


async def test_the_timer_starts_resets_and_clears():
    fired: list[str] = []

    class Store:  # what the timer touches of the RPC when it fires
        def __init__(self) -> None:
            self._object_store: dict[str, Any] = {"s1": {"target_id": "someone"}}

        def _remove_from_target_id_index(self, session_id: str) -> None:
            fired.append(session_id)

    rpc = Store()
    call = PendingCall(rpc, asyncio.get_running_loop().create_future(), "s1", "a test")
    call.time_after(60, "label", "too late")
    call.start()
    assert call.started and call._handle is not None
    first = call._handle.when()
    await asyncio.sleep(0.01)
    call.reset()  # as a heartbeat does: the timeout starts again
    assert call.started and call._handle.when() > first
    call.clear()
    assert not call.started and call._handle is None
    call.time_after(0.01, "label", "too late")
    call.start()
    with pytest.raises(TimeoutError, match="too late"):
        await asyncio.wait_for(call.future, 10)
    assert fired == ["s1"] and rpc._object_store == {}  # its session went too
    quiet = PendingCall(Store(), asyncio.get_running_loop().create_future(), "s2", "a test")
    quiet.time_after(0.01, "label", "too late")
    quiet.start()
    quiet.clear()
    await asyncio.sleep(0.03)
    assert not quiet.future.done()


def _method_of(caller: Any, provider: Any, method: str) -> Any:
    """A remote method of ``provider``'s made by hand, as a call from a peer that knows its path."""
    target = f"{provider.config.workspace}/{provider.config.client_id}"
    encoded = {"_rtype": "method", "_rtarget": target, "_rmethod": method, "_rpromise": "*"}
    return caller.rpc._generate_remote_method(encoded)


async def test_calls_the_v4_provider_leaves_to_hypha_rpc_are_answered_as_there(connect):
    """A missing method, a protected one called from another workspace: hypha-rpc's handler
    answers them (rhizomorph/incoming_calls.py hands them over before doing anything)."""
    provider, service_id = await provider_service(connect)
    await provider.register_service({"id": "hidden", "echo": lambda x: x})  # protected by default
    caller = await connect(v4=True)
    before = await no_sessions(caller)
    with pytest.raises(Exception, match="Method expired or not found"):
        await asyncio.wait_for(_method_of(caller, provider, "services.calls.nothing")(1), 10)
    with pytest.raises(Exception, match="Permission denied for invoking protected method"):
        await asyncio.wait_for(_method_of(caller, provider, "services.hidden.echo")(1), 10)
    assert await asyncio.wait_for(_method_of(caller, provider, "services.calls.echo")(7), 10) == 7
    assert sessions(caller) == before


async def test_a_provider_whose_heartbeat_fails_cancels_the_method(connect):
    """hypha-rpc's rule, kept: a heartbeat that cannot be sent stops the method it was for."""
    provider = await connect(v4=True)
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def wait_forever() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await provider.register_service({"id": "forever", "config": {"visibility": "public"}, "run": wait_forever})
    caller = await connect(v4=True, method_timeout=0.4)
    service = await caller.get_service(f"{provider.config.workspace}/{provider.config.client_id}:forever")
    running = asyncio.ensure_future(service.run())
    await asyncio.wait_for(started.wait(), 10)

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("no way to the caller")

    provider.rpc._emit_message = broken  # the next heartbeat (0.2 s on) fails to go out
    await asyncio.wait_for(cancelled.wait(), 10)
    running.cancel()
