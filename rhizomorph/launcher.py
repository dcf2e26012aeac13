"""Start, attach to and stop a router: Ray (embedded or joined) and the router's controller.

A router is a detached controller actor (rhizomorph/actors/controller.py) that creates the
registry and the gateway workers and watches them. ``Deployment`` is the launcher's handle on
it: ``start()`` creates the controller (or attaches to the running one of the same
``server_id``), ``stop()`` ends the router. The launcher itself holds no state the router needs:
when it dies the router keeps serving (docs/deploy.md).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from rhizomorph.actors import actor_class, event_loop, naming
from rhizomorph.actors.placement import control_plane, workers_for_node
from rhizomorph.config import Config, url_host

__all__ = ["EMBEDDED_RAY_ENV", "Deployment", "ensure_ray", "routers", "stop_router", "workers_for_node"]

log = logging.getLogger("rhizomorph")

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: What an embedded Ray runs that the router does not use, turned off or made rarer. Set in the
#: environment, which every process of that Ray inherits; a variable the environment already
#: sets wins. Never applied to a cluster joined by address: its settings are its operator's.
#: What each saves: benchmarks/targets.md ("Start-up and Ray's idle background").
EMBEDDED_RAY_ENV = {
    # Ray runs its workers at nice 15, below its own services and the driver; the router's
    # actors are its servers (the gateway workers hold the clients' sockets), so they run at
    # the priority of the process that started them.
    "RAY_worker_niceness": "0",
    # Task events feed Ray's state API and timeline, which only a Ray dashboard serves (an
    # embedded Ray runs without one); every process with Ray calls reports them to the GCS.
    "RAY_task_events_report_interval_ms": "0",
    # The router's actors run the loop Config.loop names (rhizomorph/actors/event_loop.py). Set
    # here to what the default (auto) needs, so that a default router's actors need no runtime
    # env of their own (with one they cannot use the worker processes Ray starts in advance).
    "RAY_USE_UVLOOP": "1",
    # Ray times every handler of its C++ event loops for its debug logs and metrics; nothing of
    # the router reads them, and the timing is most of what the actors' and the raylet's
    # periodic wake-ups cost when idle.
    "RAY_event_stats": "0",
    # Ray's usage statistics go to a server on the internet; an embedded router stays on loopback.
    "RAY_USAGE_STATS_ENABLED": "0",
    # The log monitor (which prints the actors' logs here) lists the log directory for new files
    # every 0.1 s while there are fewer than this many; at 0, every 0.5 s (its idle CPU).
    "RAY_LOG_MONITOR_MANY_FILES_THRESHOLD": "0",
    # Ray's autoscaler monitor has nothing to scale on one machine started by ray.init (it only
    # keeps `ray status` current): it looks every 60 s instead of every 5 s.
    "AUTOSCALER_UPDATE_INTERVAL_S": "60",
}
#: ``RAY_USE_UVLOOP`` of the embedded Ray this process started (its workers inherit it), else None.
_embedded_loop_value: str | None = None
#: Seconds a control call to the controller may take (starting workers may take longer).
CONTROL_TIMEOUT = 30.0
#: Seconds ``start`` waits for the controller to create the registry and the workers.
START_TIMEOUT = 300.0


def ensure_ray(address: str = "", **init_kwargs: Any) -> bool:
    """Connect to Ray. Returns ``True`` if this call started an embedded local Ray.

    Without an address, Ray is started embedded and bound to 127.0.0.1 only: a reachable Ray
    cluster runs anyone's code. Ray decides the bind address from its node IP, which it takes
    from the loopback interface only in its single-machine mode. An embedded Ray gets a
    watcher that ends its processes if this one dies without stopping it (rhizomorph/reaper.py),
    and runs without what the router does not use (``EMBEDDED_RAY_ENV``).
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
    for name, value in EMBEDDED_RAY_ENV.items():
        os.environ.setdefault(name, value)
    # "local": always a new instance of our own, never another Ray found running on this machine.
    ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, **init_kwargs)
    global _embedded_loop_value
    _embedded_loop_value = event_loop.environment_value()  # what Ray's workers inherit
    if sys.platform.startswith("linux"):
        from rhizomorph import reaper

        reaper.start()
    return True


def routers() -> list[str]:
    """The server ids of the routers running on the connected Ray cluster."""
    return naming.server_ids()


def stop_router(server_id: str) -> bool:
    """End the router ``server_id``: its controller stops the workers and the registry, then
    every actor left under its name is killed. Returns whether there was anything to stop."""
    import ray

    found = False
    try:
        controller = naming.get(naming.controller_name(server_id))
    except ValueError:
        controller = None
    if controller is not None:
        found = True
        try:
            ray.get(controller.shutdown.remote(), timeout=CONTROL_TIMEOUT)
        except Exception as exc:  # a dead or hung controller: its actors are killed by name below
            log.warning("controller of %s did not shut down cleanly: %s", server_id, exc)
        ray.kill(controller, no_restart=True)
    for name in naming.named_actors(naming.router_prefix(server_id)):
        found = True
        try:
            ray.kill(naming.get(name), no_restart=True)
        except ValueError:
            pass
    return found


class Deployment:
    """A router: a controller actor, its registry, and gateway workers on every alive Ray node.

    ``start()`` creates the controller (on the head node, or a node with ``control_resource``),
    or attaches to the running router with the same ``server_id`` (its configuration then
    stands). Reading ``workers``, ``worker_info``, ``nodes``, ``node_ports``, ``events`` or
    ``registry`` asks the controller for the current state.
    """

    def __init__(self, config: Config, listener_handover: str = "") -> None:
        self.config = config
        #: The Unix socket of an ``EarlyListener`` (``rhizomorph/listening.py``) on this node:
        #: the first worker serves the socket handed out there instead of binding its own.
        self.listener_handover = listener_handover
        self.controller: Any = None
        self._state: dict[str, Any] = {}

    @classmethod
    def attach(cls, server_id: str) -> Deployment:
        """The running router ``server_id``; raises ``LookupError`` if there is none."""
        try:
            controller = naming.get(naming.controller_name(server_id))
        except ValueError:
            raise LookupError(f"no router {server_id!r} runs on this Ray cluster") from None
        deployment = cls(Config(server_id=server_id))
        deployment.controller = controller
        deployment._refresh()
        return deployment

    # -- start, stop ---------------------------------------------------------------------------
    def start(self) -> Deployment:
        import ray

        from rhizomorph.actors.controller import Controller

        # An embedded Ray runs this Python: a missing uvloop is said here, before any actor starts.
        (event_loop.validate if self.config.ray_address else event_loop.require)(self.config.loop)
        self.config.worker_env_vars()  # a wrong worker_allocator, too, before the controller runs
        name = naming.controller_name(self.config.server_id)
        options = control_plane(self.config, name, _embedded_loop_value)
        self.controller = actor_class(Controller).options(**options).remote(self.config, self.listener_handover)
        try:
            self._state = ray.get(self.controller.start.remote(), timeout=START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.config = self._state["config"]
        log.info(
            "rhizomorph listening on %s with %d gateway worker(s) on %d node(s)",
            ", ".join(self.node_urls),
            len(self.workers),
            len(self.node_urls),
        )
        return self

    def stop(self) -> None:
        """End the router: workers, registry and controller."""
        if self.controller is None:
            return
        stop_router(self.config.server_id)
        self.controller = None
        self._state = {**self._state, "workers": {}, "worker_info": {}, "registry": None}

    def __enter__(self) -> Deployment:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- what runs -----------------------------------------------------------------------------
    def _refresh(self) -> dict[str, Any]:
        import ray

        if self.controller is not None:
            self._state = ray.get(self.controller.describe.remote(), timeout=CONTROL_TIMEOUT)
            self.config = self._state["config"]
        return self._state

    @property
    def workers(self) -> dict[str, Any]:
        return dict(self._refresh().get("workers", {}))

    @property
    def worker_info(self) -> dict[str, dict[str, Any]]:
        return dict(self._refresh().get("worker_info", {}))

    @property
    def nodes(self) -> dict[str, int]:
        """Ray node id -> node index (the ``n<i>`` of worker ids; ``n0`` is the controller's)."""
        return dict(self._refresh().get("nodes", {}))

    @property
    def node_ports(self) -> dict[str, int]:
        return dict(self._refresh().get("node_ports", {}))

    @property
    def events(self) -> list[dict[str, Any]]:
        """What the watchdog did: ``{"event": "worker_lost" | "workers_started" | ..., ...}``."""
        return list(self._refresh().get("events", []))

    @property
    def registry(self) -> Any:
        return self._refresh().get("registry")

    @property
    def url(self) -> str:
        """The gateway of the controller's node (``n0``); every node serves the same protocol."""
        urls = self.node_urls
        return urls[0] if urls else self._url(self.config.port)

    @property
    def node_urls(self) -> list[str]:
        """One URL per node hosting workers, by node index."""
        state = self._refresh()
        nodes, info = state.get("nodes", {}), state.get("worker_info", {}).values()
        hosting = {i["node_id"] for i in info}
        ports = sorted((nodes[n], p) for n, p in state.get("node_ports", {}).items() if n in hosting and n in nodes)
        return [self._url(port) for _, port in ports]

    def _url(self, port: int) -> str:
        return f"ws://{url_host(self.config.host)}:{port}"

    def workers_on(self, node_id: str) -> list[str]:
        return sorted(w for w, info in self.worker_info.items() if info["node_id"] == node_id)

    # -- run time ------------------------------------------------------------------------------
    def check(self) -> list[str]:
        """One health check now (the watchdog's); returns the ids of the workers found lost."""
        import ray

        lost: list[str] = ray.get(self.controller.check.remote(), timeout=START_TIMEOUT)
        return lost

    def set_batching(self, preset: str | None = None, **fields: Any) -> None:
        """Change batching on every worker at run time (a preset and/or Config batch fields)."""
        import ray

        self.config = ray.get(self.controller.set_batching.remote(preset, fields), timeout=CONTROL_TIMEOUT)

    def stats(self) -> list[dict[str, Any]]:
        import ray

        stats: list[dict[str, Any]] = ray.get(self.controller.stats.remote(), timeout=CONTROL_TIMEOUT)
        return stats

    def status(self) -> dict[str, Any]:
        """What ``rhizomorph status`` prints: workers and their connections, the registry's counts."""
        import ray

        status: dict[str, Any] = ray.get(self.controller.status.remote(), timeout=CONTROL_TIMEOUT)
        return status
