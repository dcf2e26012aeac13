"""A v4 client decodes values as hypha-rpc does (rhizomorph/plain_values.py): the same types all
the way down, on either side of a call, with v3 and v4 peers; values with callables still go
through hypha-rpc's own decoding."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.scenarios import mixed_messages

PAYLOADS = [*mixed_messages(12), {"nested": {"list": [1, [2.5, {"deep": b"\x00"}]], "none": None}}, [1, {"a": [2]}]]


def shape(value: Any) -> Any:
    """Type names and values, nested (an ObjectProxy and a dict compare equal with ==)."""
    if isinstance(value, dict):
        return [type(value).__name__, [[k, shape(v)] for k, v in value.items()]]
    if isinstance(value, (list, tuple)):
        return [type(value).__name__, [shape(v) for v in value]]
    return [type(value).__name__, value]


@pytest.mark.parametrize("provider_v4", [False, True], ids=["v3-provider", "v4-provider"])
async def test_values_arrive_and_return_as_with_hypha_rpc(connect, provider_v4):
    provider = await connect(v4=provider_v4)
    await provider.register_service(
        {"id": "values", "config": {"visibility": "public"}, "shape": shape, "echo": lambda x: x}
    )
    service_id = f"{provider.config.workspace}/{provider.config.client_id}:values"
    v3_caller, v4_caller = await connect(v4=False), await connect(v4=True)
    v3, v4 = await v3_caller.get_service(service_id), await v4_caller.get_service(service_id)
    for payload in PAYLOADS:
        seen = await v3.shape(payload)
        assert await v4.shape(payload) == seen
        assert shape(await v4.echo(payload)) == shape(await v3.echo(payload))
    assert (await v4.echo(PAYLOADS[0])).kind == PAYLOADS[0]["kind"]  # attribute access, as an ObjectProxy


async def test_a_dict_with_a_callback_is_decoded_by_hypha_rpc(connect):
    provider = await connect(v4=True)
    await provider.register_service(
        {
            "id": "calls-back",
            "config": {"visibility": "public"},
            "apply": lambda job: job["fn"](sum(job["values"])),
        }
    )
    caller = await connect(v4=True)
    service = await caller.get_service(f"{provider.config.workspace}/{provider.config.client_id}:calls-back")
    assert await service.apply({"values": [1, 2, 3], "fn": lambda total: total * 10}) == 60
