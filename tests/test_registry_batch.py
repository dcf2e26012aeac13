"""The registry actor's ``call_batch``: a worker's registry calls, several in one Ray call
(``RegistryCalls`` in rhizomorph/actors/registry_calls.py sends them so)."""

from __future__ import annotations

import ray

from rhizomorph.actors import actor_class
from rhizomorph.actors.registry import Registry
from rhizomorph.protocol.service_table import RegistryError


async def test_a_batch_runs_its_calls_in_order_and_answers_each_with_its_result_or_its_error(ray_runtime):
    registry = actor_class(Registry).remote()
    try:
        answers = await registry.call_batch.remote(
            [
                ("claim_client", ("ws/a", "w1", "g1", "user", False)),
                ("locate", ("ws/a",)),
                ("claim_client", ("ws/a", "w2", "g2", "user", False)),  # a live id: the owner is kept
                ("pid", ()),  # a method of the actor, but not one a worker may batch
                ("release_client", ("ws/a", "g1")),
                ("locate", ("ws/a",)),
            ]
        )
    finally:
        ray.kill(registry, no_restart=True)
    assert answers[:3] == [(True, None), (True, "w1"), (True, {"worker_id": "w1", "generation": "g1"})]
    ok, error = answers[3]
    assert not ok and isinstance(error, RegistryError) and "pid" in str(error)
    assert answers[4:] == [(True, []), (True, None)]
