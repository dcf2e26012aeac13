"""``rhizomorph serve | start | status | stop``: run a router, show it, end it (also ``python -m rhizomorph``).

``serve`` without ``--address`` runs the router on an embedded Ray that lives as long as this
process. With ``--address`` the router's controller is a detached actor of that cluster: a
crash of this process leaves the router serving, ``serve`` again attaches to it, ``start``
starts or attaches and returns, ``status`` shows it and ``stop`` ends it (docs/deploy.md).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rhizomorph import logs
from rhizomorph.actors.event_loop import LOOPS
from rhizomorph.config import Config, url_host
from rhizomorph.protocol.batching import WAITS

if TYPE_CHECKING:
    from rhizomorph.listening import EarlyListener

#: Where ``status`` and ``stop`` look for routers without ``--address``.
DEFAULT_ADDRESS_ENV = ("RHIZOMORPH_RAY_ADDRESS", "RAY_ADDRESS")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rhizomorph", description="A Hypha-compatible RPC router on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    # `serve` and `start` take the same options: `serve` stays in the foreground, `start` returns.
    serve = argparse.ArgumentParser(add_help=False)
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="WebSocket port (default 9527)")
    serve.add_argument(
        "--workers", type=int, help="gateway workers per node (default: one per CPU, one on a node of 2 CPUs or fewer)"
    )
    serve.add_argument(
        "--address",
        dest="ray_address",
        help="join this Ray cluster (default: start an embedded local Ray on 127.0.0.1)",
    )
    serve.add_argument(
        "--workers-per-cpu",
        type=float,
        help="with --workers 0: gateway workers per CPU of each node (default 0: one per CPU, one on 2 CPUs or fewer)",
    )
    serve.add_argument(
        "--worker-resource", help="run workers only on nodes with this Ray custom resource, one per unit"
    )
    serve.add_argument("--server-id", help="fixed server id (names the manager peer)")
    serve.add_argument(
        "--loop",
        choices=LOOPS,
        help="event loop of the router's actors (default auto: uvloop if installed)",
    )
    serve.add_argument("--log-level", help="DEBUG, INFO, WARNING (default INFO)")
    serve.add_argument("--log-format", choices=("text", "json"), help="log lines as text (default) or JSON")
    serve.add_argument("--config", dest="config_file", help="TOML file of Config fields")
    serve.add_argument("--preset", choices=("latency", "balanced", "throughput"), help="batching preset")
    batching = serve.add_mutually_exclusive_group()
    batching.add_argument(
        "--batching",
        dest="enable_message_batching",
        action="store_true",
        default=None,
        help="batch small messages per target (default)",
    )
    batching.add_argument(
        "--no-batching", dest="enable_message_batching", action="store_false", help="one frame per message"
    )
    serve.add_argument("--batch-wait", choices=WAITS, help="what a busy target's batch waits for (default: socket)")
    serve.add_argument("--batch-timeout-ms", type=float)
    serve.add_argument("--batch-max-messages", type=int)
    serve.add_argument("--batch-max-size", type=int)
    commands.add_parser("serve", parents=[serve], help="run the router (Ctrl-C stops it)")
    commands.add_parser(
        "start", parents=[serve], help="with --address: start (or attach to) the router, return, leave it running"
    )
    for name, text in (("status", "show the routers of a Ray cluster"), ("stop", "end a router of a Ray cluster")):
        command = commands.add_parser(name, help=text)
        command.add_argument(
            "--address",
            dest="ray_address",
            help="the Ray cluster (default: $RHIZOMORPH_RAY_ADDRESS, $RAY_ADDRESS, else auto)",
        )
        command.add_argument("--server-id", help="the router (default: the only one running)")
        if name == "status":
            command.add_argument("--json", action="store_true", help="one JSON object per router")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("status", "stop"):
        return look(args.command, _address(args.ray_address), args.server_id, getattr(args, "json", False))
    skip = ("command", "config_file", "preset")
    overrides = {k: v for k, v in vars(args).items() if k not in skip and v is not None}
    config = Config.load(path=args.config_file, preset=args.preset, **overrides)
    # The server id is random only when no source sets it: then two loads disagree.
    named = Config.load(path=args.config_file, preset=args.preset, **overrides).server_id == config.server_id
    logs.configure(config.log_level, config.log_format)
    return serve(config, detach=args.command == "start", named=named)


def _address(given: str | None) -> str:
    return given or next((os.environ[k] for k in DEFAULT_ADDRESS_ENV if os.environ.get(k)), "auto")


def serve(config: Config, *, detach: bool = False, named: bool = True) -> int:
    """Run (or, with ``--address``, attach to) a router until Ctrl-C / SIGTERM, which stops it.

    Embedded, the port is bound before Ray starts (``rhizomorph.listening``): a client that
    connects meanwhile waits in the kernel's queue and is served once the first worker is up;
    if the start fails, that socket is closed and the waiting clients are reset.
    """
    if detach and not config.ray_address:
        print("rhizomorph: start needs --address (an embedded Ray ends with this process: use serve)", file=sys.stderr)
        return 2
    early = None
    if not config.ray_address:
        from rhizomorph.listening import EarlyListener

        try:
            early = EarlyListener(config.host, config.port)
        except OSError as exc:
            print(f"rhizomorph: cannot listen on {url_host(config.host)}:{config.port}: {exc}", file=sys.stderr)
            return 1
        config = config.replace(port=early.port)
        print(
            f"rhizomorph: accepting connections on ws://{url_host(config.host)}:{early.port}; "
            "they are served once the router is up",
            flush=True,
        )
    try:
        return _serve(config, detach, named, early)
    finally:
        if early is not None:
            early.close()  # a copy no worker took: the clients queued on it are reset


def _serve(config: Config, detach: bool, named: bool, early: EarlyListener | None) -> int:
    import ray

    from rhizomorph.launcher import Deployment, ensure_ray, routers

    started_ray = ensure_ray(config.ray_address)
    running = routers() if config.ray_address else []
    if not named and len(running) > 1:
        print(f"rhizomorph: routers {', '.join(running)} run; choose one with --server-id", file=sys.stderr)
        return 2
    attach = config.server_id if config.server_id in running else (running[0] if running and not named else None)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    deployment: Deployment | None = None
    leave_running = detach
    try:
        handover = early.path if early is not None else ""
        deployment = Deployment.attach(attach) if attach else Deployment(config, handover).start()
        print(_banner(deployment, attached=attach is not None, detach=detach), flush=True)
        if detach:
            return 0
        while not stop.wait(1.0):
            if config.ray_address and not _alive(deployment):
                print("rhizomorph: the router was stopped elsewhere", flush=True)
                leave_running = True
                break
    finally:
        if early is not None:
            early.close()  # before Ray's shutdown, which takes seconds
        if deployment is not None and not leave_running:
            print("rhizomorph: shutting down", flush=True)
            deployment.stop()
        if started_ray:
            ray.shutdown()
    return 0


def _banner(deployment: Any, *, attached: bool, detach: bool) -> str:
    nodes = len(deployment.node_urls)
    server_id = deployment.config.server_id
    line = (
        f"rhizomorph: serving {deployment.url} with {len(deployment.workers)} gateway worker(s)"
        + (f" on {nodes} nodes" if nodes > 1 else "")
        + (f"; attached to the running router {server_id}" if attached else "")
    )
    if not deployment.config.ray_address and not attached:
        return line + "; Ctrl-C to stop"
    stop = f"`rhizomorph stop --server-id {server_id}` ends it"
    if detach:
        return f"{line}; left running as router {server_id}: {stop}"
    return f"{line}; Ctrl-C stops router {server_id}, and if this process dies it keeps serving: {stop}"


def _alive(deployment: Any) -> bool:
    import ray
    from ray.exceptions import ActorDiedError

    try:
        ray.get(deployment.controller.ping.remote(), timeout=30)
    except ActorDiedError:
        return False
    except Exception:  # slow or restarting: not a stop
        return True
    return True


def look(command: str, address: str, server_id: str | None, as_json: bool) -> int:
    """``status`` or ``stop`` on the routers of the cluster at ``address``."""
    import ray

    from rhizomorph.launcher import Deployment, ensure_ray, routers, stop_router

    connected_before = ray.is_initialized()
    try:
        ensure_ray(address)
    except Exception as exc:  # no cluster there: say so, not a traceback
        print(f"rhizomorph: no Ray cluster at {address}: {exc}", file=sys.stderr)
        return 1
    try:
        running = routers()
        chosen = [server_id] if server_id else running
        if server_id and server_id not in running and command == "status":
            chosen = []
        if not chosen:
            print("rhizomorph: no router" + (f" {server_id}" if server_id else "") + " runs on this Ray cluster")
            return 1
        if command == "stop":
            if len(chosen) > 1:
                print(f"rhizomorph: routers {', '.join(chosen)} run; choose one with --server-id", file=sys.stderr)
                return 2
            if not stop_router(chosen[0]):
                print(f"rhizomorph: no router {chosen[0]} runs on this Ray cluster")
                return 1
            print(f"rhizomorph: stopped router {chosen[0]}")
            return 0
        for name in chosen:
            status = Deployment.attach(name).status()
            print(json.dumps(status, default=str) if as_json else _status_text(status), flush=True)
        return 0
    finally:
        if not connected_before:
            ray.shutdown()


def _status_text(status: dict[str, Any]) -> str:
    registry = status["registry"]
    lines = [
        f"router {status['server_id']}: {len(status['workers'])} gateway worker(s), "
        f"{status['connections']} connection(s), {registry.get('services', '?')} service(s) of "
        f"{registry.get('clients', '?')} client(s); registry {registry.get('state', registry.get('error'))} "
        f"(epoch {registry.get('epoch', '?')})",
        *(f"  {url}" for url in status["urls"]),
        f"  {'worker':<8} {'node':<5} {'port':<6} {'pid':<8} connections",
    ]
    for worker in status["workers"]:
        connections = worker["connections"] if worker["error"] is None else f"? ({worker['error'][:60]})"
        lines.append(
            f"  {worker['worker_id']:<8} n{worker['node']!s:<4} {worker['port']!s:<6} "
            f"{worker['pid']!s:<8} {connections}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
