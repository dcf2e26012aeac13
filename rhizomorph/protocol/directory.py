"""A worker's replica of the directory, and who to tell when a client leaves for good.

The registry pushes every change of ``address -> worker id`` to every worker, so routing a
frame to a client of another worker needs no registry round trip. The replica also remembers,
per target, which local clients sent it calls: when the target leaves, they are told at once
(``peer_not_found``) instead of waiting for their call timeouts.

That memory is bounded by the callers, not by the targets: each caller has at most
``max_targets_per_caller`` targets remembered (its oldest is forgotten first, and noted again
by its next call), a call refused as undeliverable is forgotten, and everything a caller
noted goes when it leaves (``forget_caller``). A client calling endless distinct targets
then costs a fixed amount of memory.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Targets remembered per caller unless the worker's config says otherwise
#: (``Config.max_tracked_targets_per_client``).
DEFAULT_TARGETS_PER_CALLER = 1000


class DirectoryReplica:
    def __init__(self, max_targets_per_caller: int = DEFAULT_TARGETS_PER_CALLER) -> None:
        if max_targets_per_caller < 1:
            raise ValueError("max_targets_per_caller must be at least 1")
        self.max_targets_per_caller = max_targets_per_caller
        self.owners: dict[str, str] = {}
        #: target -> local clients that sent it calls (answered if the target leaves).
        self.callers_of: dict[str, set[str]] = {}
        #: caller -> the targets it is in ``callers_of`` for, oldest first (a dict keeps the order).
        self.targets_of: dict[str, dict[str, None]] = {}

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
        """``caller`` sent ``target`` a call: tell it if ``target`` leaves."""
        callers = self.callers_of.get(target)
        if callers is not None and caller in callers:
            return  # the common case, a caller's usual targets: nothing new to remember
        targets = self.targets_of.get(caller)
        if targets is None:
            targets = self.targets_of[caller] = {}
        elif len(targets) >= self.max_targets_per_caller:
            oldest = next(iter(targets))
            del targets[oldest]
            self._unlink(oldest, caller)
        targets[target] = None
        if callers is None:
            self.callers_of[target] = {caller}
        else:
            callers.add(caller)

    def forget_call(self, caller: str, target: str) -> None:
        """``caller``'s call to ``target`` was refused (it was told): nothing to remember."""
        targets = self.targets_of.get(caller)
        if targets is None or target not in targets:
            return
        del targets[target]
        if not targets:
            del self.targets_of[caller]
        self._unlink(target, caller)

    def forget_caller(self, caller: str) -> None:
        """``caller`` left this worker: drop every target it noted."""
        for target in self.targets_of.pop(caller, ()):
            self._unlink(target, caller)

    def _unlink(self, target: str, caller: str) -> None:
        callers = self.callers_of.get(target)
        if callers is not None:
            callers.discard(caller)
            if not callers:
                del self.callers_of[target]

    def apply(self, updates: Iterable[tuple[str, str | None]]) -> list[tuple[str, set[str]]]:
        """Apply the registry's updates (``None``: the client left). Returns, for each client
        that left, the local callers to tell."""
        departed: list[tuple[str, set[str]]] = []
        for address, worker_id in updates:
            if worker_id is None:
                self.owners.pop(address, None)
                callers = self.callers_of.pop(address, set())
                for caller in callers:
                    targets = self.targets_of.get(caller)
                    if targets is not None:
                        targets.pop(address, None)
                        if not targets:
                            del self.targets_of[caller]
                departed.append((address, callers))
            else:
                self.owners[address] = worker_id
        return departed
