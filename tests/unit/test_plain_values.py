"""rhizomorph/plain_values.py gives hypha-rpc's answers: the same checks, the same decoded objects."""

from __future__ import annotations

import enum
from typing import Any

import pytest

pytest.importorskip("hypha_rpc")

from hypha_rpc.rpc import RPC
from hypha_rpc.utils import ObjectProxy

from benchmarks.scenarios import mixed_messages
from rhizomorph import plain_values


class Level(enum.IntEnum):
    LOW = 1


class Name(str):
    pass


def _callback() -> None:
    pass


SHARED = [1, 2, 3]

#: Values hypha-rpc counts as plain, and values it does not (at some depth).
VALUES: list[Any] = [
    *mixed_messages(40),
    {},
    [],
    {"a": None, "b": True, "c": 1.5, "d": "x", "e": b"\x00", "f": []},
    {"nested": {"deeper": {"list": [1, [2, [3, {"k": "v"}]]]}}},
    {"enum": Level.LOW, "text": Name("sub"), "flag": False},
    [Level.LOW, Name("s"), None, [Level.LOW]],
    {"twice": SHARED, "again": SHARED, "inner": {"same": SHARED}},
    {"encoded": {"_rtype": "method", "_rmethod": "x"}},
    {"list": [1, {"_rtype": "ndarray"}]},
    {"proxy": ObjectProxy(a=1)},
    {"tuple": (1, 2)},
    {"set": {1, 2}},
    {"call": _callback},
    [1, 2, {"a": 1}],
    [1, (2,)],
    [[1.0] * 100, ["a", b"b"]],
    {"dict_in_list": [{"a": [{"b": 1}]}]},
    {1: "int key", "ok": [0.5] * 10},
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
def test_the_checks_answer_as_hypha_rpc(value: Any) -> None:
    if isinstance(value, dict):
        assert plain_values.is_plain_dict(value) == RPC._all_primitives_dict(value)
    else:
        assert plain_values.is_plain_list(value) == RPC._all_primitives_list(value)
        assert plain_values.is_scalar_list(value) == RPC._all_scalars_list(value)


def _shape(value: Any) -> Any:
    """Types and values all the way down (== alone would not tell an ObjectProxy from a dict)."""
    if isinstance(value, dict):
        return (type(value), [(k, _shape(v)) for k, v in value.items()])
    if isinstance(value, (list, tuple)):
        return (type(value), [_shape(v) for v in value])
    return (type(value), value)


def _containers(value: Any, into: dict[int, Any]) -> dict[int, Any]:
    """Each container by id (``munchify`` converts a container met twice to one object)."""
    if isinstance(value, (dict, list)):
        into[id(value)] = value
        for item in value.values() if isinstance(value, dict) else value:
            _containers(item, into)
    return into


@pytest.mark.parametrize("value", [v for v in VALUES if isinstance(v, dict)], ids=lambda v: str(v)[:30])
def test_a_plain_dict_decodes_to_what_hypha_rpc_makes_of_it(value: dict) -> None:
    proxy = plain_values.proxy_plain(value)
    if not RPC._all_primitives_dict(value):
        assert proxy is None
        return
    expected = ObjectProxy.fromDict(value)
    assert proxy is not None
    assert _shape(proxy) == _shape(expected)
    assert proxy is not value
    assert len(_containers(proxy, {})) == len(_containers(expected, {}))  # sharing kept alike
    # new containers, the same scalar objects (bytes are not copied)
    assert not set(_containers(proxy, {})) & set(_containers(value, {}))


def test_a_shared_list_stays_shared() -> None:
    proxy = plain_values.proxy_plain({"twice": SHARED, "again": SHARED, "inner": {"same": SHARED}})
    assert proxy is not None
    assert proxy.twice is proxy.again is proxy.inner.same
    assert proxy.twice is not SHARED


def test_the_v4_rpc_uses_them() -> None:
    from rhizomorph.client import _V4RPC

    assert _V4RPC._all_primitives_list is plain_values.is_plain_list
    assert _V4RPC._all_primitives_dict is plain_values.is_plain_dict
    assert _V4RPC._all_scalars_list is plain_values.is_scalar_list
