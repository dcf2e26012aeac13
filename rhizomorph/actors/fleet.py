"""What a router's controller knows of the actors it runs: registry, workers, nodes, ports.

One ``Fleet`` per controller (``controller.py``); placing workers (``launching.py``), watching
them (``watchdog.py``) and taking them back after a restart (``recovery.py``) all read and
change it. Only the controller's lock orders those changes.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from rhizomorph.actors import actor_class, answers, event_loop, naming
from rhizomorph.actors.placement import control_plane
from rhizomorph.config import Config

#: The controller's logger, for all of its modules: one name to follow a router's control plane.
log = logging.getLogger("rhizomorph.controller")

#: Seconds a control call to a live worker may take before the controller moves on.
CONTROL_TIMEOUT = 30.0
#: Watchdog events kept for ``describe`` (the oldest are dropped).
EVENTS_KEPT = 200


@dataclass
class Fleet:
    """Worker ids are ``n<node index>w<number>`` (``n0`` is the node the controller started on);
    a worker that replaces a lost one gets the next number, so an id never names two actors."""

    config: Config
    #: Where an embedded launcher hands out the port it bound before Ray (listening.py):
    #: offered to one worker at a time until one of them started.
    listener_handover: str = ""
    registry: Any = None
    workers: dict[str, Any] = field(default_factory=dict)
    worker_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Ray node id -> node index (the ``n<i>`` of worker ids), in order of first sight.
    nodes: dict[str, int] = field(default_factory=dict)
    #: Ray node id -> the port its gateway workers share.
    node_ports: dict[str, int] = field(default_factory=dict)
    events: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    #: Ray node id -> the number the next worker on it gets.
    next_number: dict[str, int] = field(default_factory=dict)

    def create_registry(self) -> Any:
        from rhizomorph.actors.registry import Registry

        options = control_plane(
            self.config, naming.registry_name(self.config.server_id), event_loop.environment_value()
        )
        return (
            actor_class(Registry).options(**options).remote(self.config.max_services_per_client, self.config.server_id)
        )

    def adopt(self, worker_id: str, handle: Any, info: dict[str, Any]) -> None:
        """Count a running worker in, as it said it is (``GatewayWorker.info``)."""
        node_id = info["node_id"]
        index, number = (int(part) for part in worker_id[1:].split("w", 1))
        if node_id:
            self.nodes[node_id] = index
            self.node_ports.setdefault(node_id, info["port"])
            self.next_number[node_id] = max(self.next_number.get(node_id, 0), number + 1)
        info = {**info, "node": index}
        self.workers[worker_id], self.worker_info[worker_id] = handle, info

    def node_urls(self) -> list[str]:
        from rhizomorph.config import url_host

        hosting = {info.get("node_id") for info in self.worker_info.values()}
        ports = sorted((self.nodes[n], p) for n, p in self.node_ports.items() if n in hosting and n in self.nodes)
        return [f"ws://{url_host(self.config.host)}:{port}" for _, port in ports]

    async def call_all(self, *calls: tuple[str, Any]) -> None:
        """Make each ``(method, argument)`` call on every worker, all sent at once; a worker that
        fails is left to the next health check."""
        refs = {
            f"{method} on {w}": getattr(h, method).remote(argument)
            for w, h in self.workers.items()
            for method, argument in calls
        }
        for what, answer in (await answers(refs, CONTROL_TIMEOUT)).items():
            if isinstance(answer, BaseException):
                log.warning("%s failed: %s", what, answer)
