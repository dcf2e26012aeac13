"""The servers under test, each started and stopped the same way and probed for CPU and memory.

- ``Rhizomorph``: a ``Deployment`` on the already running Ray (one per worker count / config).
- ``BareRelay``: ``benchmarks/bare_relay.py`` in a subprocess, the floor for raw clients.
- ``RealHypha``: the real Hypha server (``python -m hypha.server``) in a subprocess, only if
  the ``hypha`` package is importable (by this interpreter, or by the one given: a separate venv
  keeps Hypha's pins out of the project's).

``RayProcesses`` probes every process of the Ray runtime (GCS, raylet, agents, actors, idle
workers), the router's whole cost on a node.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import socket
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from typing import Any

import psutil

RAW, HYPHA_RPC, V4 = "raw", "hypha-rpc", "v4"
BATCHING_FIELD = "enable_message_batching"
START_TIMEOUT = 60.0


class Contender(ABC):
    name: str
    #: Client kinds that can talk to this server.
    clients: tuple[str, ...] = (RAW, HYPHA_RPC)
    url: str = ""
    #: Gateway processes that hold client sockets (point-to-point rigs are placed across them).
    workers: int = 1
    #: Whether the server batches messages per target (a v4 client then batches its sends too).
    batching: bool = True
    #: What a busy target's batch waits for (``Config.batch_wait``; a v4 client's sends follow it).
    batch_wait: str = "socket"
    #: Ray's session directory when the server runs on Ray (its processes are found by it).
    ray_session: str | None = None

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def stop(self) -> None: ...

    @abstractmethod
    def server_pids(self) -> list[int]:
        """The processes that make up the server (their CPU time and RSS are the server's cost)."""


class Started(Contender):
    """A started contender as the load process sees it: where it listens and which processes are
    the server. Picklable, unlike the contender that started it (Ray handles, subprocesses)."""

    def __init__(self, contender: Contender) -> None:
        self.name, self.clients, self.url = contender.name, contender.clients, contender.url
        self.workers, self.batching, self.ray_session = contender.workers, contender.batching, contender.ray_session
        self.batch_wait = contender.batch_wait
        self._pids = contender.server_pids()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def server_pids(self) -> list[int]:
        return self._pids


class Rhizomorph(Contender):
    """A rhizomorph router on the current Ray runtime; wraps an existing ``Deployment`` if given.

    ``workers=0`` is the router's default worker count for this machine (``Config.workers``).
    """

    clients = (RAW, HYPHA_RPC, V4)

    def __init__(self, workers: int, name: str | None = None, deployment: Any = None, **config: Any) -> None:
        self.workers = workers
        self.name = name or f"rhizomorph-{workers}w"
        self.config = config
        self.deployment = deployment
        self._owned = deployment is None

    def start(self) -> None:
        if self.deployment is None:
            from rhizomorph import Config, Deployment

            settings = {"log_level": "WARNING", **self.config}
            self.deployment = Deployment(Config(port=0, workers=self.workers, **settings)).start()
        self.url = self.deployment.url
        self.workers = len(self.deployment.worker_info)
        self.batching = bool(getattr(self.deployment.config, BATCHING_FIELD, True))
        self.batch_wait = str(getattr(self.deployment.config, "batch_wait", "socket"))
        self.ray_session = ray_session_dir()

    def stop(self) -> None:
        if self._owned and self.deployment is not None:
            self.deployment.stop()
            self.deployment = None

    def server_pids(self) -> list[int]:
        """Every process of this router: its gateway workers and every alive actor named under its
        prefix (controller, registry, chunking actors), so that a probe of another router on the
        same Ray leaves all of them out."""
        pids = {info["pid"] for info in self.deployment.worker_info.values()}
        pids.update(router_actor_pids(self.deployment.config.server_id))
        return sorted(pids)


def router_actor_pids(server_id: str) -> list[int]:
    """The pids of the alive actors of router ``server_id``, from the GCS actor table."""
    from ray._private.state import actors

    from rhizomorph.actors import naming

    prefix = naming.router_prefix(server_id)
    table = actors().values()
    return [
        int(a["Pid"])
        for a in table
        if a.get("Name", "").startswith(prefix) and a.get("State") == "ALIVE" and a.get("Pid")
    ]


def actor_pid(handle: Any) -> int | None:
    """The pid of a Ray actor, from the GCS actor table (no dashboard needed)."""
    try:
        from ray._private.state import actors

        return int(actors(handle._actor_id.hex())["Pid"]) or None
    except Exception:
        return None


class _Subprocess(Contender):
    """A server run as ``python -m <module>`` on 127.0.0.1."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        if self.process.stdout is not None:
            self.process.stdout.close()  # the pipe the start-up line was read from
        self.process = None

    def server_pids(self) -> list[int]:
        if self.process is None:
            return []
        children = psutil.Process(self.process.pid).children(recursive=True)
        return [self.process.pid, *(c.pid for c in children)]


class BareRelay(_Subprocess):
    name = "bare-relay"
    clients = (RAW,)

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bare_relay", "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
            cwd=_repo_root(),
        )
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("PORT "):
            self.stop()
            raise RuntimeError(f"bare relay did not start: {line!r}")
        self.url = f"ws://127.0.0.1:{int(line.split()[1])}"


#: Hypha closes a socket (1008) that sends over 200 frames/s beyond a burst of 2000 (its
#: ``HYPHA_WS_MSG_RATE_LIMIT`` / ``_BURST_LIMIT`` defaults): a benchmark compares how fast the
#: servers route, so the limit is lifted (rhizomorph's default, 20,000 frames/s, is never reached).
HYPHA_UNLIMITED = {"HYPHA_WS_MSG_RATE_LIMIT": "1000000000", "HYPHA_WS_MSG_BURST_LIMIT": "1000000000"}


class RealHypha(_Subprocess):
    """``python -m hypha.server``, by this interpreter or by ``python`` (e.g. a venv of its own)."""

    name = "hypha"

    def __init__(self, python: str | None = None) -> None:
        super().__init__()
        self.python = python or sys.executable

    def available(self) -> bool:
        if self.python == sys.executable:
            return importlib.util.find_spec("hypha") is not None
        try:
            check = subprocess.run([self.python, "-c", "import hypha.server"], capture_output=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return False
        return check.returncode == 0

    def version(self) -> str | None:
        """The installed hypha server's version, as its interpreter reports it."""
        code = "import importlib.metadata as m; print(m.version('hypha'))"
        try:
            out = subprocess.run([self.python, "-c", code], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() or None

    def start(self) -> None:
        port = _free_port()
        self.process = subprocess.Popen(
            [self.python, "-m", "hypha.server", "--host=127.0.0.1", f"--port={port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=_repo_root(),
            env={**os.environ, **HYPHA_UNLIMITED},
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _accepts(port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("hypha server did not start")
            time.sleep(0.5)
        time.sleep(2.0)  # the port opens before the app finishes its startup
        self.url = f"ws://127.0.0.1:{port}/ws"


def _repo_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def batching_supported() -> bool:
    from rhizomorph import Config

    return any(f.name == BATCHING_FIELD for f in dataclasses.fields(Config))


def ray_session_dir() -> str | None:
    """The running Ray's session directory: every process of that runtime names it in its command
    line or descends from one that does."""
    try:
        from ray._private import worker

        return worker._global_node.get_session_dir_path()
    except Exception:
        return None


def default_contenders(notes: list[str], with_hypha: bool = True, hypha_python: str | None = None) -> list[Contender]:
    """rhizomorph with 1 and 2 workers, the bare relay, and what else is available (else a note)."""
    contenders: list[Contender] = [Rhizomorph(1), Rhizomorph(2)]
    if batching_supported():
        from rhizomorph import Config

        default = bool(getattr(Config(), BATCHING_FIELD))
        flipped = "off" if default else "on"
        contenders.append(Rhizomorph(2, name=f"rhizomorph-2w-batching-{flipped}", **{BATCHING_FIELD: not default}))
        notes.append(f"`Config.{BATCHING_FIELD}` defaults to {default}; `rhizomorph-2w-batching-{flipped}` flips it.")
    else:
        notes.append(f"`Config.{BATCHING_FIELD}` does not exist yet: the batching on/off contender was skipped.")
    contenders.append(BareRelay())
    contenders.extend(hypha_contender(notes, with_hypha, hypha_python))
    return contenders


def hypha_contender(notes: list[str], wanted: bool = True, python: str | None = None) -> list[Contender]:
    """The real Hypha server when it is installed (for ``python``, default this interpreter), else a note."""
    if not wanted:
        return []
    hypha = RealHypha(python)
    if hypha.available():
        where = "" if python is None else f" (run by `{python}`)"
        notes.append(f"Hypha server {hypha.version() or '(version unknown)'}{where}.")
        return [hypha]
    notes.append("The `hypha` server package is not installed: the real-Hypha contender was skipped.")
    return []


class ProcessProbe:
    """CPU seconds and resident memory of a set of processes (gone processes count as zero)."""

    def __init__(self, pids: list[int]) -> None:
        self.processes: list[psutil.Process] = []
        for pid in pids:
            try:
                self.processes.append(psutil.Process(pid))
            except psutil.NoSuchProcess:
                pass

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self.processes:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss_bytes(self) -> int:
        total = 0
        for process in self.processes:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total


class RayProcesses(ProcessProbe):
    """Every process of one Ray runtime — GCS, raylet, dashboard and log monitors, agents, actors,
    idle workers — less the processes in ``exclude`` (e.g. another router's workers on the same Ray).

    The set is found again by ``refresh()``, which a benchmark calls before each pass (never inside
    the timed window: it reads every process's command line; ``bench_claims`` at most every few
    seconds); a process Ray starts in between is missed until the next refresh.
    """

    def __init__(self, session_dir: str, exclude: list[int] | tuple[int, ...] = ()) -> None:
        self.session_dir, self.exclude = session_dir, set(exclude)
        self.refreshed = 0.0
        super().__init__([])
        self.refresh()

    def refresh(self, max_age: float = 0.0) -> None:
        """Find the set again, unless it was found less than ``max_age`` seconds ago."""
        if max_age and time.monotonic() - self.refreshed < max_age:
            return
        self.refreshed = time.monotonic()
        roots = []
        for process in psutil.process_iter(["cmdline"]):
            cmdline = process.info.get("cmdline") or ()
            if any(self.session_dir in part for part in cmdline):
                roots.append(process)
        found: dict[int, psutil.Process] = {}
        for root in roots:
            found[root.pid] = root
            try:
                found.update((child.pid, child) for child in root.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        self.processes = [p for pid, p in sorted(found.items()) if pid not in self.exclude and pid != os.getpid()]
