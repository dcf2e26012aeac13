"""The Ray actors of a router and the links between them: gateway worker shell, registry,
chunking actor, peer links and channels."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar, cast

if TYPE_CHECKING:
    from ray.actor import ActorClass

_T = TypeVar("_T")


def actor_class(decorated: type[_T]) -> ActorClass[_T]:
    """A ``@ray.remote`` class as the ``ActorClass`` it is, for ``.options(...)`` and ``.remote(...)``.

    Ray types its decorator correctly, but mypy does not apply what a class decorator returns
    (python/mypy#3135) and so sees the plain class. This is the one place that says so, rather
    than a ``type: ignore`` at every actor creation. It returns its argument unchanged.
    """
    return cast("ActorClass[_T]", decorated)
