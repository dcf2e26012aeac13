"""An echo provider client in a process of its own (``benchmarks/bench_claims.py`` starts it).

    python -m benchmarks.echo_provider --url ws://127.0.0.1:PORT --client hypha-rpc|v4 [--no-batching]

Connects with the released hypha-rpc client (``hypha-rpc``) or rhizomorph's v4 client (``v4``;
``--no-batching`` turns its send-side batching off), registers the public service
``bench-echo`` with ``echo(x) -> x``, prints one JSON line
``{"service_id", "pid", "worker", "wire_protocol", "rhizomorph_file"}`` (the last: which
``rhizomorph`` it imported, for ``bench_claims --trees``) and serves until its standard
input closes; then it disconnects and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

import rhizomorph
from benchmarks.clients import ECHO_SERVICE, HyphaRpcClients, V4Clients, _hypha_worker
from benchmarks.loadgen import run_client_loop
from benchmarks.run import quiet_client_logs
from rhizomorph.client import wire_protocol
from rhizomorph.protocol.batching import WAITS


async def serve(url: str, client: str, batching: bool, wait: str = "socket") -> None:
    kind = V4Clients(batching=batching, wait=wait) if client == "v4" else HyphaRpcClients()
    server = await kind._connect(url)
    await server.register_service({"id": ECHO_SERVICE, "config": {"visibility": "public"}, "echo": lambda x: x})
    info = {
        "service_id": f"{server.config.workspace}/{server.config.client_id}:{ECHO_SERVICE}",
        "pid": os.getpid(),
        "worker": _hypha_worker(server),
        "wire_protocol": wire_protocol(server),
        "rhizomorph_file": os.path.realpath(rhizomorph.__file__),
    }
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)  # until stdin closes
    try:
        await asyncio.wait_for(server.disconnect(), 10)
    except Exception:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="an echo provider for the benchmarks")
    parser.add_argument("--url", required=True)
    parser.add_argument("--client", choices=("hypha-rpc", "v4"), default="hypha-rpc")
    parser.add_argument("--no-batching", dest="batching", action="store_false", help="v4 client: no send batching")
    parser.add_argument("--batch-wait", default="socket", choices=WAITS, help="v4 client: its batches' wait rule")
    args = parser.parse_args(argv)
    quiet_client_logs()
    run_client_loop(serve(args.url, args.client, args.batching, args.batch_wait))
    return 0


if __name__ == "__main__":
    sys.exit(main())
