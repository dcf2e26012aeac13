"""The actors' side of the controller's death watch (``rhizomorph.actors.Held``): a held call
stays unanswered until the next one takes its place, so at most one is left waiting."""

from __future__ import annotations

import asyncio

from rhizomorph.actors import Held


async def test_a_held_call_waits_until_the_next_one_takes_its_place():
    held = Held()
    first = asyncio.ensure_future(held.hold())
    await asyncio.sleep(0.05)
    assert not first.done()
    second = asyncio.ensure_future(held.hold())
    await asyncio.wait_for(first, 1)  # answered: the second one is held now
    await asyncio.sleep(0.05)
    assert not second.done()
    second.cancel()
