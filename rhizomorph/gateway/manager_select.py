"""``get_service`` modes that look past the service table: one provider among many.

- ``select:<criteria>:<function>`` (Hypha's load balancing): each candidate's ``function`` is
  called, all at once, with ``select_timeout``; ``min``/``max`` take the lowest/highest number
  (ties at random), ``first_success`` the first candidate, in id order, that answered.
  Candidates that fail, time out, lack the function or answer no number are skipped; when none
  answers, one is picked at random (as Hypha does).
- ``min_load`` is ``select:min:get_load``.
- ``native:random``: at random among the candidates on the caller's gateway worker (a call to
  them skips the worker hop), else among all.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from rhizomorph.protocol.service_table import MISSING, Selection, pick_by_values

#: ``call(owner, method, timeout)``: the manager's call to a client.
Call = Callable[[str, str, float], Awaitable[Any]]


async def select(
    candidates: list[dict[str, Any]], selection: Selection, *, worker_id: str, call: Call, timeout: float
) -> dict[str, Any]:
    """One of ``candidates`` (the registry's ``find_services`` entries, ordered by id)."""
    if len(candidates) == 1:
        return candidates[0]
    if selection.kind == "native:random":
        near = [c for c in candidates if c.get("worker_id") == worker_id]
        return random.choice(near or candidates)
    assert selection.function is not None and selection.criteria is not None

    async def probe(candidate: dict[str, Any]) -> Any:
        name = str(candidate["info"]["id"]).rsplit(":", 1)[-1]
        try:
            return await call(candidate["owner"], f"services.{name}.{selection.function}", timeout)
        except Exception:  # skipped, as Hypha skips a provider that does not answer
            return MISSING

    values = await asyncio.gather(*(probe(c) for c in candidates))
    chosen = pick_by_values(values, selection.criteria)
    return candidates[chosen] if chosen is not None else random.choice(candidates)
