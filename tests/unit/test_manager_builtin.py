"""The manager's built-in service and its probing modes with a fake host: no Ray, no network."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from rhizomorph.gateway import manager_select
from rhizomorph.gateway.manager_builtin import BuiltinService
from rhizomorph.protocol import envelope
from rhizomorph.protocol.message_cache import CHUNK_SIZE, CacheError, split
from rhizomorph.protocol.service_table import parse_mode

MANAGER = "*/manager-test"
USER = {"id": "alice", "scope": {}}


class FakeHost:
    """The manager as the built-in service sees it: frames it sends, calls it makes."""

    address = MANAGER

    def __init__(self, fail_on: str | None = None) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.calls: list[tuple[str, str, list[Any]]] = []
        self.fail_on = fail_on

    def send(self, target: str, frame: bytes) -> None:
        self.sent.append((target, frame))

    async def call_client(self, target: str, method: str, args: list[Any], timeout: float | None = None) -> Any:
        self.calls.append((target, method, args))
        await asyncio.sleep(0)
        if self.fail_on and method.endswith(self.fail_on):
            raise RuntimeError("the client is gone")
        return None


def process_call(service: BuiltinService, caller: str, key: str) -> None:
    message = {"from": caller, "ws": caller.split("/")[0], "user": USER}
    service.call(message, caller, "message_cache.process", [key], {"heartbeat": True, "context": {}})


def test_a_chunked_call_comes_back_whole_with_the_callers_identity():
    host = FakeHost()
    service = BuiltinService(host, max_bytes_per_caller=10_000_000)
    # What the client would have sent in one frame, with fields it may not set itself.
    whole = envelope.encode(
        {"type": "method", "to": MANAGER, "from": "ws2/impostor", "ws": "ws2", "method": "services.default.echo"},
        {"args": [b"x" * 600_000], "session": "s1", "promise": "*"},
    )
    call = {"from": "ws1/alice-client", "ws": "ws1", "user": USER}
    service.call(call, "ws1/alice-client", "message_cache.create", ["k", True], {})
    chunks = split(whole, CHUNK_SIZE)
    for index in reversed(range(len(chunks))):
        service.call(call, "ws1/alice-client", "message_cache.set", ["k", index, chunks[index], True], {})
    process_call(service, "ws1/alice-client", "k")
    [(target, frame)] = host.sent
    assert target == MANAGER
    message = envelope.decode(frame)
    assert message["from"] == "ws1/alice-client" and message["ws"] == "ws1" and message["user"] == USER
    assert message["to"] == MANAGER and message["method"] == "services.default.echo"
    assert message["args"] == [b"x" * 600_000] and message["session"] == "s1"
    assert service.cache.callers == 0


def test_processing_what_does_not_decode_is_an_error_to_the_caller():
    service = BuiltinService(FakeHost(), max_bytes_per_caller=1000)
    call = {"from": "ws1/a", "ws": "ws1", "user": USER}
    service.call(call, "ws1/a", "message_cache.create", ["k"], {})
    service.call(call, "ws1/a", "message_cache.append", ["k", b"\xc1 not msgpack"], {})
    with pytest.raises(CacheError, match="does not decode"):
        process_call(service, "ws1/a", "k")


@pytest.mark.parametrize(
    ("path", "args", "message"),
    [
        ("message_cache.explode", ["k"], "Method not found"),
        ("message_cache.set", ["k"], "bad arguments for message_cache.set"),
        ("message_cache.remove", ["unknown"], "does not exist"),
    ],
)
def test_bad_builtin_calls(path, args, message):
    service = BuiltinService(FakeHost(), max_bytes_per_caller=1000)
    with pytest.raises(CacheError, match=message):
        service.call({}, "ws1/a", path, args, {})


def test_the_builtin_service_advertises_api_version_3_and_every_verb():
    service = BuiltinService(FakeHost(), max_bytes_per_caller=1000).service_dict({"visibility": "public"})
    assert service["config"]["api_version"] == 3
    assert set(service["message_cache"]) == {"create", "append", "set", "process", "remove"}
    assert service["message_cache"]["set"]["_rmethod"] == "services.built-in.message_cache.set"
    assert service["message_cache"]["set"]["_rschema"]["name"] == "set"
    assert service["ping"]["_rtarget"] == MANAGER


async def test_a_large_reply_goes_to_the_callers_builtin_in_order():
    host = FakeHost()
    service = BuiltinService(host, max_bytes_per_caller=1000)
    frame = bytes(range(256)) * 4096  # 1 MiB: four chunks
    await service.send_in_chunks("ws1/a", frame, timeout=5)
    methods = [m.rsplit(".", 1)[1] for _, m, _ in host.calls]
    assert methods[0] == "create" and methods[-1] == "process" and methods.count("set") == 4
    sent = {args[1]: args[2] for _, m, args in host.calls if m.endswith(".set")}
    assert b"".join(sent[i] for i in range(4)) == frame
    assert host.sent == []  # nothing went as one frame


async def test_a_large_reply_that_fails_is_removed_and_raises():
    host = FakeHost(fail_on=".set")
    service = BuiltinService(host, max_bytes_per_caller=1000)
    with pytest.raises(RuntimeError, match="gone"):
        await service.send_in_chunks("ws1/a", b"z" * (CHUNK_SIZE * 2), timeout=5)
    assert host.calls[-1][1].endswith(".remove")
    assert not any(m.endswith(".process") for _, m, _ in host.calls)


# -- probing modes ----------------------------------------------------------------------------


def candidates(*owners: str, worker: str = "w1") -> list[dict[str, Any]]:
    return [{"info": {"id": f"{o}:pool"}, "owner": o, "worker_id": worker} for o in owners]


def fake_call(answers: dict[str, Any]):
    asked: list[tuple[str, str]] = []

    async def call(owner: str, method: str, timeout: float) -> Any:
        asked.append((owner, method))
        answer = answers.get(owner)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return call, asked


async def test_min_load_asks_every_provider_its_get_load_and_takes_the_lowest():
    call, asked = fake_call({"ws/a": 3, "ws/b": 0.5, "ws/c": RuntimeError("timeout")})
    chosen = await manager_select.select(
        candidates("ws/a", "ws/b", "ws/c"), parse_mode("min_load", "ws"), worker_id="w1", call=call, timeout=1
    )
    assert chosen["owner"] == "ws/b"
    assert sorted(asked) == [
        ("ws/a", "services.pool.get_load"),
        ("ws/b", "services.pool.get_load"),
        ("ws/c", "services.pool.get_load"),
    ]


async def test_select_max_and_fallback_to_random_when_nobody_answers():
    call, _ = fake_call({"ws/a": 1, "ws/b": 7})
    chosen = await manager_select.select(
        candidates("ws/a", "ws/b"), parse_mode("select:max:get_capacity", "ws"), worker_id="w1", call=call, timeout=1
    )
    assert chosen["owner"] == "ws/b"
    call, _ = fake_call({"ws/a": RuntimeError("no"), "ws/b": "not a number"})
    seen = {
        (
            await manager_select.select(
                candidates("ws/a", "ws/b"), parse_mode("min_load", "ws"), worker_id="w1", call=call, timeout=1
            )
        )["owner"]
        for _ in range(40)
    }
    assert seen == {"ws/a", "ws/b"}


async def test_one_candidate_is_taken_without_asking():
    call, asked = fake_call({})
    chosen = await manager_select.select(
        candidates("ws/a"), parse_mode("min_load", "ws"), worker_id="w1", call=call, timeout=1
    )
    assert chosen["owner"] == "ws/a" and asked == []


async def test_native_random_prefers_providers_on_the_callers_worker():
    call, asked = fake_call({})
    pool = candidates("ws/a", "ws/b", worker="w2") + candidates("ws/near", worker="w1")
    for _ in range(20):
        chosen = await manager_select.select(
            pool, parse_mode("native:random", "ws"), worker_id="w1", call=call, timeout=1
        )
        assert chosen["owner"] == "ws/near"
    far = {
        (await manager_select.select(pool, parse_mode("native:random", "ws"), worker_id="w9", call=call, timeout=1))[
            "owner"
        ]
        for _ in range(60)
    }
    assert far == {"ws/a", "ws/b", "ws/near"} and asked == []
