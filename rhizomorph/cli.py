"""``rhizomorph serve``: run the router (also ``python -m rhizomorph``)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence

from rhizomorph import logs
from rhizomorph.config import Config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rhizomorph", description="A Hypha-compatible RPC router on Ray.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the router")
    serve.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="WebSocket port (default 9527)")
    serve.add_argument("--workers", type=int, help="gateway workers per node (default: one per CPU)")
    serve.add_argument(
        "--address",
        dest="ray_address",
        help="join this Ray cluster (default: start an embedded local Ray on 127.0.0.1)",
    )
    serve.add_argument(
        "--workers-per-cpu", type=float, help="with --workers 0: gateway workers per CPU of each node (default 1.0)"
    )
    serve.add_argument(
        "--worker-resource", help="run workers only on nodes with this Ray custom resource, one per unit"
    )
    serve.add_argument("--server-id", help="fixed server id (names the manager peer)")
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
    serve.add_argument("--batch-timeout-ms", type=float)
    serve.add_argument("--batch-max-messages", type=int)
    serve.add_argument("--batch-max-size", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "config_file", "preset") and v is not None}
    config = Config.load(path=args.config_file, preset=args.preset, **overrides)
    logs.configure(config.log_level, config.log_format)
    return serve(config)


def serve(config: Config) -> int:
    import ray

    from rhizomorph.launcher import Deployment, ensure_ray

    started_ray = ensure_ray(config.ray_address)
    deployment = Deployment(config)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        deployment.start()
        nodes = len(deployment.node_urls)
        print(
            f"rhizomorph: serving {deployment.url} with {len(deployment.workers)} gateway worker(s)"
            + (f" on {nodes} nodes" if nodes > 1 else "")
            + "; Ctrl-C to stop",
            flush=True,
        )
        while not stop.wait(1.0):
            pass
    finally:
        print("rhizomorph: shutting down", flush=True)
        deployment.stop()
        if started_ray:
            ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
