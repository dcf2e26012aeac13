"""RegistryCalls (rhizomorph/actors/registry_calls.py) with a fake registry handle: it records a
worker's share of the registry from the answers, and reports a registry that cannot answer. Not a
unit test of pure code: the module reads Ray's exception types (no Ray runtime is started)."""

from __future__ import annotations

import asyncio
import gc

import pytest
from ray.exceptions import ActorDiedError

from rhizomorph.actors.registry_calls import RegistryCalls, RegistryUnavailable
from tests.unit.test_ownership import info


class Remote:
    def __init__(self, answer):
        self.answer = answer
        self.calls: list[tuple] = []

    def remote(self, *args):
        self.calls.append(args)

        async def reply():
            if isinstance(self.answer, BaseException):
                raise self.answer
            return self.answer(*args) if callable(self.answer) else self.answer

        return reply()


class FakeRegistryHandle:
    """Answers each call by name; the calls come in batches (``call_batch``), as to the actor. A
    Ray error as an answer fails the whole batch, as a dead actor fails its Ray call."""

    def __init__(self, **answers):
        for name, answer in answers.items():
            setattr(self, name, Remote(answer))
        self.call_batch = Remote(self._batch)
        self.batches: list[list[str]] = []

    def _batch(self, calls):
        self.batches.append([name for name, _ in calls])
        answers = []
        for name, args in calls:
            remote = getattr(self, name)
            remote.calls.append(args)
            if isinstance(remote.answer, BaseException):
                raise remote.answer
            answers.append((True, remote.answer(*args) if callable(remote.answer) else remote.answer))
        return answers


async def test_registry_calls_record_what_the_answers_say():
    stored = info("ws/a", "echo")
    handle = FakeRegistryHandle(
        claim_client=lambda address, worker, generation, user, supersede: (
            {"worker_id": "w0", "generation": "g0", "services": [info("ws/a", "kept")]} if supersede else None
        ),
        register_service={"info": stored, "replaced": None},
        unregister_service={"info": stored},
        release_client=[],
        locate="w1",
    )
    calls = RegistryCalls(handle, clock=lambda: 7.0)
    assert await calls.claim_client("ws/a", "w1", "g1", "u", True) == {"worker_id": "w0", "generation": "g0"}
    assert calls.owned.snapshot({})["clients"] == [("ws/a", "g1", "u", 7.0, [info("ws/a", "kept")])]
    await calls.register_service("ws/a", {"id": "echo"})
    assert stored in calls.owned.snapshot({})["clients"][0][4]
    await calls.unregister_service("ws/a", "echo")
    assert stored not in calls.owned.snapshot({})["clients"][0][4]
    assert await calls.locate("ws/a") == "w1"  # any other call passes through
    assert await calls.release_client("ws/a", "g1") == []
    assert calls.owned.clients == {}


async def test_a_registry_that_cannot_answer_is_reported_briefly_and_the_release_stays_a_departure():
    calls = RegistryCalls(FakeRegistryHandle(claim_client=None, release_client=ActorDiedError()))
    await calls.claim_client("ws/a", "w1", "g", "u", False)
    with pytest.raises(RegistryUnavailable, match="did not answer release_client"):
        await calls.release_client("ws/a", "g")
    assert list(calls.owned.snapshot({})["departed"]) == ["ws/a"]


async def test_calls_made_while_a_batch_is_in_flight_leave_together_in_order():
    handle = FakeRegistryHandle(locate=lambda address: f"owner of {address}")
    calls = RegistryCalls(handle)
    first = asyncio.ensure_future(calls.locate("ws/0"))
    await asyncio.sleep(0)  # the first batch leaves alone, at once
    rest = [asyncio.ensure_future(calls.locate(f"ws/{i}")) for i in range(1, 6)]
    assert await asyncio.gather(first, *rest) == [f"owner of ws/{i}" for i in range(6)]
    assert [len(batch) for batch in handle.batches] == [1, 5]
    assert handle.locate.calls == [(f"ws/{i}",) for i in range(6)]
    assert (calls.batches, calls.calls) == (2, 6)


async def test_a_burst_of_calls_leaves_no_object_of_its_own_behind_in_the_caller():
    # A wave of departures' releases: a pending list or a count made by the last of them would
    # sit in the wave's memory and keep it (gateway/memory.py).
    handle = FakeRegistryHandle(locate=lambda address: address)
    calls = RegistryCalls(handle)
    pending = calls._pending
    await asyncio.gather(*(calls.locate(f"ws/{i}") for i in range(600)))
    await asyncio.sleep(0)
    assert calls._pending is pending and pending == []
    assert calls.calls == 600 and calls.batches == len(handle.batches) >= 2
    assert not any(type(o) is int for o in gc.get_referents(calls))  # the counts are unboxed


async def test_an_error_of_one_call_in_a_batch_is_its_own():
    answers = [(True, "w1"), (False, RegistryUnavailable("the registry is rebuilding; try again"))]
    handle = FakeRegistryHandle(locate=None)
    handle.call_batch = Remote(lambda batch: answers[: len(batch)])
    calls = RegistryCalls(handle)
    located, failed = await asyncio.gather(calls.locate("ws/a"), calls.locate("ws/b"), return_exceptions=True)
    assert located == "w1"
    assert isinstance(failed, RegistryUnavailable) and "rebuilding" in str(failed)
