"""What a gateway worker's clients own in the registry, and a restarted registry rebuilt from it.

The registry actor keeps the directory and the service table in memory. Each worker keeps its
own clients' share of that state, learned from the registry's answers to its own calls
(``OwnedState``, fed by ``RegistryCalls`` in rhizomorph/actors/registry.py): the claim of each
client and the services it registered. A registry that starts again (restarted by Ray after a
crash, or on another node after its node was lost) asks every worker for its share
(``OwnedState.snapshot``) and merges them (``merge``). Pure: no Ray, tested in
tests/unit/test_ownership.py; docs/deploy.md says why the workers hold this copy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

#: One client in a worker's share: address, generation, user id, claimed at (wall clock),
#: services (the registry's stored infos).
ClientShare = tuple[str, str, str, float, list[dict[str, Any]]]


@dataclass(slots=True)
class Owned:
    """One client as its worker knows it from the registry's answers."""

    generation: str
    user_id: str
    #: Wall-clock time of the claim: of two workers claiming one address, the later one won.
    claimed_at: float
    #: Full service id -> the info the registry stored.
    services: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Its release was sent (and may have failed, or been lost with a crashed registry).
    leaving: bool = False


class OwnedState:
    """One worker's share of the registry: the clients it claimed and their services."""

    def __init__(self) -> None:
        self.clients: dict[str, Owned] = {}

    # -- fed by the registry's answers --------------------------------------------------------
    def claimed(
        self, address: str, generation: str, user_id: str, now: float, services: Iterable[dict[str, Any]] = ()
    ) -> None:
        """A claim took effect; ``services`` are those the address already had (a reconnect)."""
        self.clients[address] = Owned(generation, user_id, now, {info["id"]: info for info in services})

    def releasing(self, address: str, generation: str) -> None:
        owned = self.clients.get(address)
        if owned is not None and owned.generation == generation:
            owned.leaving = True

    def released(self, address: str, generation: str) -> None:
        """The registry answered a release: that generation is gone from it either way."""
        owned = self.clients.get(address)
        if owned is not None and owned.generation == generation:
            del self.clients[address]

    def registered(self, owner: str, info: dict[str, Any]) -> None:
        owned = self.clients.get(owner)
        if owned is not None:
            owned.services[info["id"]] = info

    def unregistered(self, owner: str, info: dict[str, Any]) -> None:
        owned = self.clients.get(owner)
        if owned is not None:
            owned.services.pop(info["id"], None)

    def forget(self, addresses: Iterable[str]) -> None:
        """Departures that were announced: drop them unless claimed again since."""
        for address in addresses:
            owned = self.clients.get(address)
            if owned is not None and owned.leaving:
                del self.clients[address]

    # -- for a registry that starts again -----------------------------------------------------
    def snapshot(self, held: Mapping[str, tuple[str, str]]) -> dict[str, Any]:
        """This worker's share: ``held`` maps the addresses whose sockets the worker holds to
        ``(generation, user id)``.

        A held socket is a client. So is a claim whose socket is not in the table yet (its
        admission is finishing). A client whose release was sent has left, whatever the
        registry did with the release: it goes under ``departed`` with its services, to be
        announced once (a release retried on the new registry finds nothing and announces
        nothing).
        """
        clients: list[ClientShare] = []
        departed: dict[str, list[dict[str, Any]]] = {}
        for address, owned in self.clients.items():
            if owned.leaving and held.get(address, ("",))[0] != owned.generation:
                departed[address] = list(owned.services.values())
            else:
                clients.append(
                    (address, owned.generation, owned.user_id, owned.claimed_at, list(owned.services.values()))
                )
        for address, (generation, user_id) in held.items():
            if address not in self.clients:  # admitted before anything was recorded: no services known
                clients.append((address, generation, user_id, 0.0, []))
        return {"clients": clients, "departed": departed}


@dataclass
class Rebuild:
    """The registry's state merged from the workers' shares."""

    epoch: int
    #: address -> (worker id, generation, user id, services).
    clients: dict[str, tuple[str, str, str, list[dict[str, Any]]]]
    #: (worker id, address, generation) of sockets that lost their address to a later claim.
    superseded: list[tuple[str, str, str]]
    #: Clients that left while the registry was down: address -> their services.
    departed: dict[str, list[dict[str, Any]]]


def merge(shares: Iterable[Mapping[str, Any]]) -> Rebuild:
    """Merge ``{"worker_id", "epoch", "clients", "departed"}`` shares (``OwnedState.snapshot``
    plus the worker's id and the registry epoch it last saw).

    The new epoch is above every epoch a worker has seen, so directory updates still on their
    way from the previous registry lose to the new one's. An address two workers claim goes to
    the later claim; the other socket is superseded, as a reconnect supersedes it. A departure
    is dropped if another worker holds the address (the client came back there).
    """
    epoch = 0
    #: address -> (claimed at, worker id, generation, user id, services) of the winning claim.
    best: dict[str, tuple[float, str, str, str, list[dict[str, Any]]]] = {}
    superseded: list[tuple[str, str, str]] = []
    departed: dict[str, list[dict[str, Any]]] = {}
    for share in shares:
        worker_id = share["worker_id"]
        epoch = max(epoch, int(share.get("epoch", 0)))
        for address, generation, user_id, claimed_at, services in share["clients"]:
            current = best.get(address)
            if current is None or (claimed_at, worker_id) > current[:2]:
                if current is not None:
                    superseded.append((current[1], address, current[2]))
                best[address] = (claimed_at, worker_id, generation, user_id, list(services))
            else:
                superseded.append((worker_id, address, generation))
        departed.update(share["departed"])
    clients = {a: (w, generation, user_id, services) for a, (_, w, generation, user_id, services) in best.items()}
    return Rebuild(
        epoch=epoch + 1,
        clients=clients,
        superseded=superseded,
        departed={a: s for a, s in departed.items() if a not in clients},
    )
