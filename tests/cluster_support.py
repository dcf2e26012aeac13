"""Helpers of the multi-node scenarios (tests/cluster_scenarios.py, tests/cluster_control.py).

No side effects on import: the scenario process sets up Ray's environment before importing Ray.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from typing import Any

from tests import helpers

# The scenarios' defaults: a longer wait, polled less often, on a multi-node cluster on 2 cores.
eventually = functools.partial(helpers.eventually, timeout=15.0, interval=0.1)


async def emit(server: Any, message: dict[str, Any]) -> None:
    result = server.emit(message)
    if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
        await result


class FailoverProxy:
    """A TCP load balancer in miniature: each connection goes to the first backend that accepts.

    Stands for HAProxy/nginx in front of the nodes: when a node is gone, reconnecting clients
    land on the next one.
    """

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.choices: list[int] = []
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> FailoverProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for port in self.ports:
            try:
                backend_reader, backend_writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                continue
        else:
            writer.close()
            return
        self.choices.append(port)
        await asyncio.gather(self._pipe(reader, backend_writer), self._pipe(backend_reader, writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except Exception:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


async def rhizomorph(*args: str, env: dict[str, str] | None, merged: bool = False) -> asyncio.subprocess.Process:
    """``python -m rhizomorph <args>`` with its stdout (and stderr, ``merged``) piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "rhizomorph",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merged else asyncio.subprocess.PIPE,
        env=env,
    )


async def serving(proc: asyncio.subprocess.Process, timeout: float = 90) -> str:
    """Read ``rhizomorph serve``'s output until it says it serves; returns that line."""
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        line = (await asyncio.wait_for(proc.stdout.readline(), timeout)).decode()
        if not line:
            raise AssertionError("the CLI exited: " + "".join(lines[-20:]))
        lines.append(line)
        if "rhizomorph: serving" in line:
            return line.strip()
