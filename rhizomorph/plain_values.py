"""hypha-rpc's fast paths for plain values, with the same results at a fraction of the cost.

A "plain" value is what hypha-rpc's ``RPC._all_primitives_dict`` / ``_all_primitives_list``
accept: ``None``, ints, floats, bools, strings and bytes, in exact ``dict``\\s (without
``_rtype``) and exact ``list``\\s, nested. hypha-rpc encodes a plain value as it is and decodes
a plain dict with ``ObjectProxy.fromDict``, i.e. munch's generic ``munchify``, which visits every
element with several Python calls and an ABC ``isinstance`` each. In a dashboard message with a
few thousand floats that is most of a client's CPU per call (py-spy: ``benchmarks/mixed.md``).

Here the same checks and the same conversion run with the element types tested in C
(``set.issuperset(map(type, ...))``) and one Python step per container: lists of scalars are
checked and copied without a Python call per element. ``rhizomorph.client._V4RPC`` uses them;
the bytes on the wire do not change, so v3 peers see no difference.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypha_rpc.utils import ObjectProxy

#: The exact types hypha-rpc counts as primitive (it also accepts their subclasses: checked apart).
SCALAR_TYPES = frozenset((int, float, bool, str, bytes, type(None)))
_PRIMITIVES = (int, float, bool, str, bytes)


def is_plain_list(values: list[Any]) -> bool:
    """``RPC._all_primitives_list(values)``: only primitives, plain lists and plain dicts, nested."""
    return _all_plain(values, True)


def is_plain_dict(mapping: dict[Any, Any]) -> bool:
    """``RPC._all_primitives_dict(mapping)``: its values as ``is_plain_list`` (the dict's own
    ``_rtype`` is the caller's business, as in hypha-rpc)."""
    return _all_plain(mapping.values(), True)


def is_scalar_list(values: list[Any]) -> bool:
    """``RPC._all_scalars_list(values)``: primitives and lists of them, nested; no dicts."""
    return _all_plain(values, False)


def _all_plain(values: Iterable[Any], dicts: bool) -> bool:
    if SCALAR_TYPES.issuperset(map(type, values)):
        return True
    for value in values:
        kind = type(value)
        if kind in SCALAR_TYPES:
            continue
        if kind is list:
            if not _all_plain(value, dicts):
                return False
        elif kind is dict and dicts:
            if "_rtype" in value or not _all_plain(value.values(), True):
                return False
        elif not isinstance(value, _PRIMITIVES):
            return False
    return True


class _NotPlain(Exception):
    pass


def proxy_plain(mapping: dict[Any, Any]) -> ObjectProxy | None:
    """``ObjectProxy.fromDict(mapping)`` if ``is_plain_dict(mapping)``, else ``None`` (in one pass).

    Nested dicts become ``ObjectProxy``, lists new lists, scalars stay the objects they are; a
    container met twice becomes one converted object, as with ``munchify``.
    """
    try:
        return _proxy_dict(mapping, {})
    except _NotPlain:
        return None


def _proxy_dict(mapping: dict[Any, Any], seen: dict[int, Any]) -> ObjectProxy:
    done = seen.get(id(mapping))
    if done is not None:
        return done
    proxy = seen[id(mapping)] = ObjectProxy()
    # ObjectProxy (a Munch) has no __setitem__ of its own: dict.update stores what Munch.update would.
    dict.update(proxy, {key: _proxy_value(value, seen) for key, value in mapping.items()})
    return proxy


def _proxy_list(values: list[Any], seen: dict[int, Any]) -> list[Any]:
    done = seen.get(id(values))
    if done is not None:
        return done
    if SCALAR_TYPES.issuperset(map(type, values)):
        copy = seen[id(values)] = list(values)
        return copy
    copy = seen[id(values)] = []
    copy.extend(_proxy_value(value, seen) for value in values)
    return copy


def _proxy_value(value: Any, seen: dict[int, Any]) -> Any:
    kind = type(value)
    if kind in SCALAR_TYPES:
        return value
    if kind is list:
        return _proxy_list(value, seen)
    if kind is dict:
        if "_rtype" in value:
            raise _NotPlain
        return _proxy_dict(value, seen)
    if isinstance(value, _PRIMITIVES):
        return value
    raise _NotPlain
