"""A worker's replica of the directory, and who to tell when a client leaves for good.

The registry pushes every change of ``address -> worker id`` to every worker, so routing a
frame to a client of another worker needs no registry round trip. The replica also remembers,
per target, which local clients sent it calls: when the target leaves, they are told at once
(``peer_not_found``) instead of waiting for their call timeouts.
"""

from __future__ import annotations

from collections.abc import Iterable


class DirectoryReplica:
    def __init__(self) -> None:
        self.owners: dict[str, str] = {}
        #: target -> local clients that sent it calls (answered if the target leaves).
        self.callers_of: dict[str, set[str]] = {}

    def owner(self, address: str) -> str | None:
        return self.owners.get(address)

    def set_owner(self, address: str, worker_id: str) -> None:
        self.owners[address] = worker_id

    def forget(self, address: str, worker_id: str) -> None:
        """Drop ``address`` if ``worker_id`` still owns it in the replica."""
        if self.owners.get(address) == worker_id:
            del self.owners[address]

    def __contains__(self, address: object) -> bool:
        return address in self.owners

    def note_call(self, caller: str, target: str) -> None:
        callers = self.callers_of.get(target)
        if callers is None:
            self.callers_of[target] = {caller}
        else:
            callers.add(caller)

    def apply(self, updates: Iterable[tuple[str, str | None]]) -> list[tuple[str, set[str]]]:
        """Apply the registry's updates (``None``: the client left). Returns, for each client
        that left, the local callers to tell."""
        departed: list[tuple[str, set[str]]] = []
        for address, worker_id in updates:
            if worker_id is None:
                self.owners.pop(address, None)
                departed.append((address, self.callers_of.pop(address, set())))
            else:
                self.owners[address] = worker_id
        return departed
