"""Start and stop a router: Ray (embedded or joined), the registry and the gateway workers."""

from __future__ import annotations

import logging
import os
from typing import Any

from rhizomorph.config import Config

log = logging.getLogger("rhizomorph")

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ensure_ray(address: str = "", **init_kwargs: Any) -> bool:
    """Connect to Ray. Returns ``True`` if this call started an embedded local Ray.

    Without an address, Ray is started embedded and bound to 127.0.0.1 only: a reachable Ray
    cluster runs anyone's code. Ray decides the bind address from its node IP, which it takes
    from the loopback interface only in its single-machine mode.
    """
    if not address:
        os.environ[LOCAL_ONLY_ENV] = "0"
    import ray
    from ray._private import ray_constants

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, **init_kwargs)
        return False
    ray_constants.ENABLE_RAY_CLUSTER = False
    ray.init(include_dashboard=False, logging_level=logging.WARNING, **init_kwargs)
    return True


class Deployment:
    """A running router: one registry actor plus ``config.worker_count()`` gateway workers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry: Any = None
        self.workers: dict[str, Any] = {}
        self.worker_info: dict[str, dict[str, Any]] = {}

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return f"ws://{host}:{self.config.port}"

    def start(self) -> "Deployment":
        import ray

        from actors.registry import Registry
        from actors.worker import GatewayWorker

        self.registry = Registry.remote(self.config.max_services_per_client)
        ray.get(self.registry.ready.remote())
        count = self.config.worker_count()
        # The first worker resolves port 0 to a real port; the others share it (SO_REUSEPORT).
        first = GatewayWorker.remote(self.config, "w0", self.registry)
        info = ray.get(first.start.remote())
        if self.config.port == 0:
            self.config = self.config.replace(port=info["port"])
        self.workers["w0"], self.worker_info["w0"] = first, info
        others = {f"w{i}": GatewayWorker.remote(self.config, f"w{i}", self.registry) for i in range(1, count)}
        infos = ray.get([w.start.remote() for w in others.values()])
        for (worker_id, handle), worker_info in zip(others.items(), infos):
            self.workers[worker_id], self.worker_info[worker_id] = handle, worker_info
        ray.get([w.set_peers.remote(self.workers) for w in self.workers.values()])
        log.info("rhizomorph listening on %s with %d gateway worker(s)", self.url, len(self.workers))
        return self

    def set_batching(self, preset: str | None = None, **fields: Any) -> None:
        """Change batching on every worker at run time (a preset and/or Config batch fields)."""
        import ray

        config = self.config.with_preset(preset) if preset else self.config
        self.config = config.replace(**fields)
        policy = self.config.batch_policy()
        ray.get([w.set_batch_policy.remote(policy) for w in self.workers.values()])

    def stats(self) -> list[dict[str, Any]]:
        import ray

        return ray.get([w.stats.remote() for w in self.workers.values()])

    def stop(self) -> None:
        import ray

        if not self.workers and self.registry is None:
            return
        try:
            ray.get([w.stop.remote() for w in self.workers.values()], timeout=10)
        except Exception as exc:  # a worker already dead still gets killed below
            log.debug("stopping workers: %s", exc)
        for handle in list(self.workers.values()) + ([self.registry] if self.registry else []):
            ray.kill(handle, no_restart=True)
        self.workers.clear()
        self.registry = None

    def __enter__(self) -> "Deployment":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
