"""The registry actor: the router's shared directory (client -> worker) and service table.

One per router, cluster-wide (on the controller's node; docs/deploy.md says why one actor is
enough). Workers keep a replica of the directory, pushed from here on every change, so routing
to a remote client needs no registry round trip; they ask only on a miss. The registry is on
the control path (connect, register, get_service), never on the per-message path.

Its state lives in memory, and every worker keeps its own clients' share of it
(rhizomorph/protocol/ownership.py). A registry that starts again (Ray restarts it after a
crash, or on another node when its node is lost) rebuilds itself from those shares before it
answers anything: calls made meanwhile wait for the rebuild (``_rebuild``) instead of finding
an empty table.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import ray

from rhizomorph.actors import Held, naming
from rhizomorph.actors.registry_calls import RegistryCalls, RegistryUnavailable
from rhizomorph.background import spawn
from rhizomorph.protocol import ownership
from rhizomorph.protocol.close_codes import CloseCode
from rhizomorph.protocol.service_table import ClientRecord, RegistryError, ServiceTable

__all__ = ["DirectoryFeed", "Registry", "RegistryCalls", "RegistryUnavailable"]

log = logging.getLogger("rhizomorph.registry")

#: How long a call waits for a rebuild in progress before it fails with a clear error.
REBUILD_WAIT = 60.0
#: How long a rebuild waits for one worker's share before it goes on without it (a share that
#: comes later is merged then).
SHARE_TIMEOUT = 20.0
#: The methods a worker's ``RegistryCalls`` sends in a ``call_batch``.
BATCHED_METHODS = frozenset(
    {
        "claim_client",
        "release_client",
        "locate",
        "list_clients",
        "register_service",
        "unregister_service",
        "find_service",
        "find_services",
        "list_services",
    }
)


class DirectoryFeed:
    """Directory updates on their way to one worker, batched as ``PeerLink`` batches frames.

    One ``update_directory`` call is in flight per worker; updates made meanwhile gather and
    leave together, in order. A burst of connects then costs a few Ray calls per worker
    instead of one per connect per worker (the registry's bottleneck on a large cluster).
    """

    def __init__(self, worker_id: str, handle: Any, epoch: Callable[[], int]) -> None:
        self.worker_id = worker_id
        self.handle = handle
        self._epoch = epoch
        self.calls = 0
        self._pending: list[tuple[str, str | None]] = []
        self._busy = False
        self._closed = False

    def send(self, updates: list[tuple[str, str | None]]) -> None:
        if self._closed:
            return
        self._pending.extend(updates)
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().call_soon(self._flush)

    def close(self) -> None:
        self._closed = True
        self._pending.clear()

    def _flush(self) -> None:
        if self._closed or not self._pending:
            self._busy = False
            return
        batch, self._pending = self._pending, []
        self.calls += 1
        spawn(self._push(batch)).add_done_callback(lambda _: self._flush())

    async def _push(self, batch: list[tuple[str, str | None]]) -> None:
        try:
            await self.handle.update_directory.remote(batch, self._epoch())
        except Exception as exc:  # the worker is gone: the controller's watchdog removes it
            log.debug("directory update to %s failed: %s", self.worker_id, exc)


# Every method is ``async`` so that all of them run on the actor's one event loop; none awaits
# while it reads or changes the table, so each call is atomic (claims need that). Each waits
# first for the rebuild that every start of the registry begins with.
@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=3)
class Registry:
    def __init__(self, max_services_per_client: int = 1000, server_id: str = "") -> None:
        self._table = ServiceTable(max_services_per_client=max_services_per_client)
        self._server_id = server_id
        self._workers: dict[str, Any] = {}
        self._feeds: dict[str, DirectoryFeed] = {}
        #: Above every epoch the workers have seen (``ownership.merge``): a directory update of
        #: an earlier registry, still on its way, loses to this one's.
        self.epoch = 0
        self._rebuilt = asyncio.Event()
        self._last_rebuild: dict[str, Any] = {}
        self._held = Held()
        # The constructor runs on the actor's event loop (Ray's async actors), so the rebuild
        # starts now, before any call is answered.
        asyncio.get_event_loop().create_task(self._rebuild())

    async def _ready(self) -> None:
        if not self._rebuilt.is_set():
            try:
                await asyncio.wait_for(self._rebuilt.wait(), REBUILD_WAIT)
            except TimeoutError:
                raise RegistryUnavailable(
                    f"the registry is rebuilding after a restart and was not done within {REBUILD_WAIT:.0f} s; "
                    "try again"
                ) from None

    async def ready(self) -> bool:
        await self._ready()
        return True

    # -- rebuilding from the workers' shares ---------------------------------------------------
    async def _rebuild(self) -> None:
        started = time.monotonic()
        try:
            handles = await asyncio.to_thread(self._named_workers)
            shares = await self._collect(handles)
            rebuild = ownership.merge(shares.values())
            self.epoch = rebuild.epoch
            self._restore(rebuild)
            for worker_id in shares:
                self._add_feed(worker_id, handles[worker_id])
            await self._publish({w: handles[w] for w in shares}, rebuild)
            self._last_rebuild = {
                "epoch": self.epoch,
                "workers": sorted(shares),
                "missing": sorted(set(handles) - set(shares)),
                "clients": len(rebuild.clients),
                "services": len(self._table.services),
                "departed": len(rebuild.departed),
                "took_s": round(time.monotonic() - started, 3),
            }
            # At a router's start the controller creates the workers with the registry, so they
            # are found here too; having never greeted a registry (epoch 0), they bring nothing.
            rebuilt = any(share.get("epoch", 0) for share in shares.values())
            if handles:
                level = logging.WARNING if rebuilt else logging.DEBUG
                log.log(level, "registry rebuilt from the workers: %s", self._last_rebuild)
        except Exception:
            log.exception("the registry's rebuild failed; it serves what it restored")
        finally:
            self._rebuilt.set()

    def _named_workers(self) -> dict[str, Any]:
        """The router's workers that Ray knows alive, by worker id (from their actor names)."""
        if not self._server_id:
            return {}
        prefix = naming.worker_prefix(self._server_id)
        handles = {}
        for name in naming.named_actors(prefix):
            try:
                handles[name[len(prefix) :]] = naming.get(name)
            except ValueError:  # gone since it was listed
                pass
        return handles

    async def _collect(self, handles: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Every worker's share; one that is late is merged when it comes (``_late_share``)."""
        tasks = {asyncio.ensure_future(self._share_of(h)): w for w, h in handles.items()}
        if not tasks:
            return {}
        done, pending = await asyncio.wait(tasks, timeout=SHARE_TIMEOUT)
        shares = {}
        for task in done:
            worker_id = tasks[task]
            if task.exception() is None:
                shares[worker_id] = task.result()
            else:  # dead: the controller's watchdog removes it
                log.warning("no share from worker %s: %s", worker_id, task.exception())
        for task in pending:
            worker_id = tasks[task]
            log.warning("worker %s is late with its share; merging it when it comes", worker_id)
            task.add_done_callback(functools.partial(self._on_late_share, worker_id, handles[worker_id]))
        return shares

    @staticmethod
    async def _share_of(handle: Any) -> dict[str, Any]:
        share: dict[str, Any] = await handle.owned_state.remote()
        return share

    def _restore(self, rebuild: ownership.Rebuild) -> list[tuple[str, str | None]]:
        """Put back every client of ``rebuild`` not claimed since; returns (address, worker)."""
        restored: list[tuple[str, str | None]] = []
        for address, (worker_id, generation, user_id, services) in rebuild.clients.items():
            if address in self._table.clients:
                continue
            workspace = address.split("/", 1)[0]
            self._table.restore(address, ClientRecord(worker_id, generation, workspace, user_id), services)
            restored.append((address, worker_id))
        return restored

    async def _publish(self, handles: dict[str, Any], rebuild: ownership.Rebuild) -> None:
        """The workers get the whole directory, sockets that lost their address are closed,
        and departures nobody announced yet are announced (each worker to its subscribers)."""
        directory = {address: record.worker_id for address, record in self._table.clients.items()}
        calls = [h.replace_directory.remote(self.epoch, directory) for h in handles.values()]
        if rebuild.departed:
            calls += [h.forget_clients.remote(rebuild.departed) for h in self._workers.values()]
        for worker_id, address, generation in rebuild.superseded:
            if worker_id in handles:
                calls.append(handles[worker_id].close_client.remote(address, CloseCode.SUPERSEDED, generation))
        if calls:
            await asyncio.wait([asyncio.ensure_future(self._quiet(c)) for c in calls], timeout=SHARE_TIMEOUT)

    @staticmethod
    async def _quiet(ref: Any) -> None:
        try:
            await ref
        except Exception as exc:  # a worker that died meanwhile: the watchdog's business
            log.debug("rebuild call failed: %s", exc)

    def _on_late_share(self, worker_id: str, handle: Any, task: asyncio.Task[dict[str, Any]]) -> None:
        spawn(self._late_share(worker_id, handle, task))

    async def _late_share(self, worker_id: str, handle: Any, task: asyncio.Task[dict[str, Any]]) -> None:
        if task.cancelled() or task.exception() is not None:
            log.warning("no share from worker %s: %s", worker_id, None if task.cancelled() else task.exception())
            return
        share = task.result()
        rebuild = ownership.merge([share])
        self.epoch = max(self.epoch, rebuild.epoch)
        restored = self._restore(rebuild)
        self._add_feed(worker_id, handle)
        self._push(restored)
        await self._publish({worker_id: handle}, rebuild)
        log.warning("merged the late share of %s: %d client(s)", worker_id, len(restored))

    def _add_feed(self, worker_id: str, handle: Any) -> None:
        self._workers[worker_id] = handle
        if worker_id in self._feeds:
            self._feeds[worker_id].close()
        self._feeds[worker_id] = DirectoryFeed(worker_id, handle, lambda: self.epoch)

    # -- workers -------------------------------------------------------------------------------
    async def add_worker(self, worker_id: str, handle: Any) -> dict[str, Any]:
        """Register a gateway worker; returns the epoch and the directory it starts from."""
        await self._ready()
        self._add_feed(worker_id, handle)
        directory = {address: record.worker_id for address, record in self._table.clients.items()}
        return {"epoch": self.epoch, "directory": directory}

    async def remove_worker(self, worker_id: str) -> dict[str, list[dict[str, Any]]]:
        """Forget a worker that is gone, and its clients. Returns their removed services."""
        await self._ready()
        self._workers.pop(worker_id, None)
        feed = self._feeds.pop(worker_id, None)
        if feed is not None:
            feed.close()
        released = self._table.release_worker(worker_id)
        self._push([(address, None) for address in released])
        return {a: [r.info for r in services] for a, services in released.items()}

    async def workers(self) -> dict[str, Any]:
        await self._ready()
        return dict(self._workers)

    async def summary(self) -> dict[str, Any]:
        """Counts for operators and tests: workers, clients per worker, services, pushes, and
        the state of the registry itself (answered at once, also while it rebuilds)."""
        per_worker: dict[str, int] = {}
        for record in self._table.clients.values():
            per_worker[record.worker_id] = per_worker.get(record.worker_id, 0) + 1
        return {
            "workers": sorted(self._workers),
            "clients": len(self._table.clients),
            "clients_per_worker": per_worker,
            "services": len(self._table.services),
            "directory_calls": {w: feed.calls for w, feed in self._feeds.items()},
            "state": "ready" if self._rebuilt.is_set() else "rebuilding",
            "epoch": self.epoch,
            "last_rebuild": self._last_rebuild,
            "pid": os.getpid(),
            "node_id": ray.get_runtime_context().get_node_id(),
        }

    async def pid(self) -> int:
        return os.getpid()

    # Not retried on a restarted registry (as the other calls are): the controller holds a new
    # one, and Ray does not log a retry for it.
    @ray.method(max_task_retries=0)
    async def hold(self) -> None:
        """The controller's death watch (``Held``): unanswered while this registry lives."""
        await self._held.hold()

    async def call_batch(self, calls: list[tuple[str, tuple[Any, ...]]]) -> list[tuple[bool, Any]]:
        """Several calls of one worker in one Ray call (``RegistryCalls`` gathers them while its
        previous batch is in flight). Each is a task of its own, as a Ray call would be: they
        start in order, each as atomic as on its own, and during a rebuild they wait for it
        together, not one after the other. Each answer is ``(True, result)`` or ``(False, the
        exception the call raised)``."""

        async def one(name: str, args: tuple[Any, ...]) -> Any:
            if name not in BATCHED_METHODS:
                raise RegistryError(f"the registry has no batched method {name!r}")
            return await getattr(self, name)(*args)

        results = await asyncio.gather(*(one(name, args) for name, args in calls), return_exceptions=True)
        return [(not isinstance(result, BaseException), result) for result in results]

    def _push(self, updates: list[tuple[str, str | None]]) -> None:
        if updates:
            for feed in self._feeds.values():
                feed.send(updates)

    # -- clients -------------------------------------------------------------------------------
    async def claim_client(
        self, address: str, worker_id: str, generation: str, user_id: str, supersede: bool
    ) -> dict[str, Any] | None:
        """Take ownership of ``address``. Returns the owner that kept it (``supersede=False``) or
        that was replaced (``supersede=True``, with the services the address keeps), or ``None``."""
        await self._ready()
        record = ClientRecord(worker_id, generation, address.split("/", 1)[0], user_id)
        previous = self._table.claim(address, record, supersede=supersede)
        if previous is None or supersede:
            self._push([(address, worker_id)])
        if previous is None:
            return None
        kept: dict[str, Any] = {"worker_id": previous.worker_id, "generation": previous.generation}
        if supersede:
            owned = self._table.by_owner.get(address, set())
            kept["services"] = [self._table.services[sid].info for sid in sorted(owned) if sid in self._table.services]
        return kept

    async def release_client(self, address: str, generation: str) -> list[dict[str, Any]] | None:
        """A connection closed. Returns its removed services, or ``None`` if a newer one took over."""
        await self._ready()
        removed = self._table.release(address, generation)
        if removed is None:
            return None
        self._push([(address, None)])
        return [r.info for r in removed]

    async def locate(self, address: str) -> str | None:
        await self._ready()
        return self._table.locate(address)

    async def list_clients(self, workspace: str) -> list[str]:
        await self._ready()
        return sorted(a for a, r in self._table.clients.items() if r.workspace == workspace)

    # -- services ------------------------------------------------------------------------------
    async def register_service(self, owner: str, info: dict[str, Any]) -> dict[str, Any]:
        try:
            await self._ready()
            record, previous = self._table.register(owner, info)
        except (RegistryError, RegistryUnavailable) as exc:
            return {"error": str(exc)}
        return {"info": record.info, "replaced": previous.info if previous else None}

    async def unregister_service(self, owner: str, service_id: str) -> dict[str, Any]:
        try:
            await self._ready()
            return {"info": self._table.unregister(owner, service_id).info}
        except (RegistryError, RegistryUnavailable) as exc:
            return {"error": str(exc)}

    async def find_service(
        self, service_id: str, workspace: str, readable: list[str], mode: str | None = None
    ) -> dict[str, Any]:
        try:
            await self._ready()
            record = self._table.find(service_id, workspace, set(readable), mode)
        except (RegistryError, RegistryUnavailable) as exc:
            return {"error": str(exc)}
        return {"info": record.info, "owner": record.owner, "worker_id": self._table.locate(record.owner)}

    async def find_services(self, service_id: str, workspace: str, readable: list[str]) -> dict[str, Any]:
        """Every service ``service_id`` names that the caller may see (for the manager's probing modes)."""
        try:
            await self._ready()
            records = self._table.candidates(service_id, workspace, set(readable))
        except (RegistryError, RegistryUnavailable) as exc:
            return {"error": str(exc)}
        return {
            "candidates": [
                {"info": r.info, "owner": r.owner, "worker_id": self._table.locate(r.owner)} for r in records
            ]
        }

    async def list_services(self, workspace: str, readable: list[str], query: Any = None) -> dict[str, Any]:
        try:
            await self._ready()
            return {"services": self._table.list(workspace, set(readable), query)}
        except (RegistryError, RegistryUnavailable) as exc:
            return {"error": str(exc)}
