"""RegistryCalls (rhizomorph/actors/registry_calls.py) with a fake registry handle: it records a
worker's share of the registry from the answers, and reports a registry that cannot answer. Not a
unit test of pure code: the module reads Ray's exception types (no Ray runtime is started)."""

from __future__ import annotations

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
    def __init__(self, **answers):
        for name, answer in answers.items():
            setattr(self, name, Remote(answer))


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
