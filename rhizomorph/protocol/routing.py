"""Where a stamped frame goes: the routing decision, as pure functions of what a worker knows.

A gateway worker knows its own clients, a replica of the directory (which worker owns each
client elsewhere), the peers it has links to, and which targets it is asking the registry
about. From that, a frame for one client goes to the local queue, to one peer, waits behind a
registry lookup, or is refused. The router (``rhizomorph/gateway/router.py``) carries the
decision out.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from enum import Enum


class Via(Enum):
    #: The target's socket is on this worker: its delivery queue.
    LOCAL = "local"
    #: Another worker owns the target: the link to that peer.
    PEER = "peer"
    #: Nobody known owns the target: ask the registry once, then decide again.
    LOCATE = "locate"
    #: A registry lookup for the target is under way: queue behind it, in order.
    WAIT = "wait"
    #: The target lost its socket here a moment ago and may reconnect: keep it for the target
    #: (``rhizomorph/protocol/reconnecting.py``).
    KEEP = "keep"
    #: The target is gone: tell the sender.
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Route:
    via: Via
    #: The peer worker, for ``Via.PEER``.
    owner: str | None = None


LOCAL = Route(Via.LOCAL)
LOCATE = Route(Via.LOCATE)
WAIT = Route(Via.WAIT)
KEEP = Route(Via.KEEP)
REFUSE = Route(Via.REFUSE)


def remote_owner(owner: str | None, *, self_id: str, reachable: Container[str]) -> str | None:
    """The peer to send to, if the directory names another worker this one has a link to."""
    return owner if owner is not None and owner != self_id and owner in reachable else None


def to_client(
    *,
    local: bool,
    owner: str | None,
    self_id: str,
    reachable: Container[str],
    forwarded: bool,
    locating: bool,
    awaited: bool = False,
) -> Route:
    """A frame for one client. ``owner`` is the directory replica's entry for the target;
    ``forwarded``: the frame came from a peer worker (it is never forwarded again);
    ``locating``: earlier frames for the target wait for the registry (this one queues behind);
    ``awaited``: the target lost its socket here a moment ago, and the frame is one to keep
    for its reconnect."""
    if locating:
        return WAIT
    if local:
        return LOCAL
    peer = None if forwarded else remote_owner(owner, self_id=self_id, reachable=reachable)
    if peer is not None:
        return Route(Via.PEER, peer)
    # Not in the replica, or a stale entry: the registry is asked once before giving up.
    return KEEP if awaited else LOCATE


def after_locate(
    *, local: bool, owner: str | None, self_id: str, reachable: Container[str], forwarded: bool, awaited: bool = False
) -> Route:
    """A frame that waited for the registry, which answered ``owner`` (``None``: unknown)."""
    if local:
        return LOCAL
    peer = None if forwarded else remote_owner(owner, self_id=self_id, reachable=reachable)
    if peer is not None:
        return Route(Via.PEER, peer)
    return KEEP if awaited else REFUSE


def to_manager(session_owner: str | None, *, self_id: str, reachable: Container[str]) -> Route:
    """A frame for the manager: a reply to a call the manager of another worker made goes
    there (``session_owner`` is the worker id in its session), anything else is handled here."""
    peer = remote_owner(session_owner, self_id=self_id, reachable=reachable)
    return Route(Via.PEER, peer) if peer is not None else LOCAL
