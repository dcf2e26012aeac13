"""The clients of one source tree (``bench_claims --trees``), in a process that imports that tree.

The load process runs every pair's passes in turn (``run.run_case``), but one interpreter can hold
only one ``rhizomorph``: a tree's pairs are ``RemoteRig`` stand-ins whose passes run in the tree's
agent (``python -m benchmarks.tree_agent``, with the tree's shim as ``PYTHONPATH`` and working
directory). The agent keeps the pairs' callers and providers (``bench_claims.ClientPool``; the
providers inherit its environment, hence the tree) and measures a pass as the load process
would (``bench_claims._measure_claim``, the router probed by its Ray session): the timed window
is in the agent, the round trip to it outside. Requests and replies are length-prefixed pickles
on the agent's standard input and a copy of its standard output (which itself goes to stderr, so
that nothing a library prints can corrupt a reply).
"""

from __future__ import annotations

import asyncio
import os
import pickle
import struct
import sys
from collections.abc import Callable
from typing import Any

from benchmarks.clients import EchoRig
from benchmarks.scenarios import Case

HEADER = struct.Struct("!Q")
START_TIMEOUT = 120.0
#: Beyond a pass's own time limit: a pass that lost calls renews its pair's clients in the agent.
REPLY_MARGIN_S = 90.0


def _frame(message: Any) -> bytes:
    body = pickle.dumps(message)
    return HEADER.pack(len(body)) + body


async def _read(reader: asyncio.StreamReader) -> Any:
    size = HEADER.unpack(await reader.readexactly(HEADER.size))[0]
    return pickle.loads(await reader.readexactly(size))


class AgentError(RuntimeError):
    """What the agent raised, as text (its traceback stays in the agent's stderr)."""


class Agent:
    """The load process's handle on one tree's agent."""

    def __init__(self, tree: Any, process: asyncio.subprocess.Process) -> None:
        self.tree, self.process = tree, process
        self.hello: dict[str, Any] = {}  #: which code the agent imported (its first reply)
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, tree: Any) -> Agent:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "benchmarks.tree_agent",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=tree.shim,
            env=tree.env(),
        )
        agent = cls(tree, process)
        try:
            agent.hello = await agent.request("hello", timeout=START_TIMEOUT)
        except BaseException:
            process.kill()
            await process.wait()
            raise
        return agent

    async def request(self, op: str, *args: Any, timeout: float) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        async with self._lock:
            self.process.stdin.write(_frame((op, args)))
            await self.process.stdin.drain()
            ok, value = await asyncio.wait_for(_read(self.process.stdout), timeout)
        if not ok:
            raise AgentError(value)
        return value

    async def close(self) -> None:
        if self.process.returncode is None:
            try:
                await self.request("quit", timeout=60.0)
            except Exception:
                pass
            try:
                await asyncio.wait_for(self.process.wait(), 30.0)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()


class RemoteRig(EchoRig):
    """A pair's rig for one case, kept in its tree's agent."""

    def __init__(self, agent: Agent, key: str, origin: dict[str, Any]) -> None:
        self.agent, self.key, self.origin = agent, key, origin

    async def call(self, caller: int, index: int) -> bool:
        raise NotImplementedError("a remote rig's passes run in its agent (measure)")

    async def measure(self, count: int, timeout: float) -> dict[str, Any]:
        """One pass over the case's first ``count`` payloads, measured in the agent."""
        return await self.agent.request("measure", self.key, count, timeout, timeout=timeout + REPLY_MARGIN_S)

    async def close(self) -> None:
        await self.agent.request("close", self.key, timeout=60.0)


class Agents:
    """The agents of the trees in a run, started on first use, and the records of their rigs."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self.emit = emit
        self._agents: dict[str, Agent] = {}

    async def agent(self, tree: Any) -> Agent:
        agent = self._agents.get(tree.label)
        if agent is None:
            agent = self._agents[tree.label] = await Agent.start(tree)
            self.emit(
                {
                    "kind": "claims-tree",
                    "tree": tree.label,
                    "spec": tree.spec,
                    "source": tree.source,
                    "commit": tree.commit,
                    **agent.hello,
                }
            )
        return agent

    async def open(self, contender: Any, client: str, case: Case, exclude: list[int], timeout: float) -> RemoteRig:
        agent = await self.agent(contender.tree)
        key = f"{contender.name} [{client}] {case.id}"
        origin = await agent.request("open", key, contender, client, case, exclude, timeout=timeout + START_TIMEOUT)
        self.emit(
            {
                "kind": "claims-tree-rig",
                "tree": contender.tree.label,
                "contender": contender.name,
                "client": client,
                "case": case.id,
                "router_rhizomorph": getattr(contender, "host_rhizomorph", None),
                **origin,
            }
        )
        return RemoteRig(agent, key, origin)

    async def close(self) -> None:
        await asyncio.gather(*(agent.close() for agent in self._agents.values()), return_exceptions=True)
        self._agents.clear()


# -- in the agent ----------------------------------------------------------------------------------
class _Serving:
    def __init__(self) -> None:
        from benchmarks.bench_claims import ClientPool

        self.pool = ClientPool()
        self.rigs: dict[str, tuple[Any, Case, list[Any], Any]] = {}

    async def hello(self) -> dict[str, Any]:
        import benchmarks
        import rhizomorph

        return {
            "agent_rhizomorph": os.path.realpath(rhizomorph.__file__),
            "agent_benchmarks": os.path.realpath(benchmarks.__file__),
        }

    async def open(self, key: str, contender: Any, client: str, case: Case, exclude: list[int]) -> dict[str, Any]:
        import rhizomorph
        from benchmarks.bench_claims import claim_pairs
        from benchmarks.contenders import RayProcesses

        pair = claim_pairs([contender], [client])[0]
        payloads = case.scenario.payloads()
        rig = await self.pool.open(pair, case, payloads)
        probe = RayProcesses(contender.ray_session, exclude=exclude)
        self.rigs[key] = (rig, case, payloads, probe)
        caller = rig.rig.caller  # type: ignore[attr-defined]
        return {
            "caller_rhizomorph": os.path.realpath(rhizomorph.__file__),
            "provider_rhizomorph": rig.provider.info.get("rhizomorph_file"),  # type: ignore[attr-defined]
            "server_version": getattr(caller.config, "hypha_version", None),
        }

    async def measure(self, key: str, count: int, timeout: float) -> dict[str, Any]:
        from benchmarks.bench_claims import _measure_claim

        rig, case, payloads, probe = self.rigs[key]
        return await _measure_claim(rig, case, payloads[:count], probe, timeout)

    async def close(self, key: str) -> None:
        entry = self.rigs.pop(key, None)
        if entry is not None:
            await entry[0].close()


async def serve() -> None:
    from benchmarks.run import quiet_client_logs

    quiet_client_logs()
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever else writes to stdout goes to stderr
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    serving = _Serving()
    try:
        while True:
            try:
                op, args = await _read(reader)
            except asyncio.IncompleteReadError:
                return  # the load process went away
            if op == "quit":
                replies.write(_frame((True, None)))
                replies.flush()
                return
            try:
                reply = (True, await getattr(serving, op)(*args))
            except Exception as exc:
                reply = (False, f"{type(exc).__name__}: {exc}")
            replies.write(_frame(reply))
            replies.flush()
    finally:
        await serving.pool.close()


def main() -> int:
    from benchmarks.loadgen import run_client_loop

    run_client_loop(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
