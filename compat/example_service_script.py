"""A stand-alone service process for hypha-rpc's ``test_launch_external_services``.

The test launches ``tests/example_service_script.py --server-url=... --service-id=...
--workspace=... --token=...`` and expects a service of that id whose ``test(1)`` is 100; the sdist
does not ship the script. Installed into the unpacked sdist by ``compat/run.py``; our own code.
"""

import argparse
import asyncio
import sys

# The test gives this process 5 s to start, connect and register (launch_external_services'
# ready_timeout). Importing hypha_rpc also imports aiortc when it is installed (~half of the
# import time here); this service needs no WebRTC, and hypha_rpc runs without aiortc.
sys.modules["aiortc"] = None  # type: ignore[assignment]

from hypha_rpc import connect_to_server  # noqa: E402


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server-url", required=True)
    parser.add_argument("--service-id", required=True)
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--token", required=True)
    args = parser.parse_args()
    server = await connect_to_server(
        {"server_url": args.server_url, "workspace": args.workspace, "token": args.token, "name": args.service_id}
    )
    await server.register_service({"id": args.service_id, "test": lambda x: x * 100})
    await server.serve()


if __name__ == "__main__":
    asyncio.run(main())
