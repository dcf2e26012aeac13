"""The routers of one source tree (``bench_claims --trees``), in a process that imports that tree.

    TreeRouters(tree, [Rhizomorph(0, name="rhizomorph@main"), ...]).start()  # -> Started contenders

The host (``python -m benchmarks.tree_host``, with the tree's shim as ``PYTHONPATH`` and working
directory: ``benchmarks/trees.py``) starts an embedded Ray of its own with the tree's
``ensure_ray`` — so a tree that changes how Ray is started is measured with its change — and the
tree's ``Deployment`` of each contender on it. Ray's processes inherit the host's environment,
hence its ``PYTHONPATH``, and Ray puts the driver's working directory on its workers' ``sys.path``
(``py_driver_sys_path`` in ``ray/_private/worker.py``), hence the shim as the host's working
directory too: with this checkout there, the workers would import this checkout's package
whatever ``PYTHONPATH`` says. So the controller, the registry and the gateway workers run the
tree's code (``tests/test_bench_trees.py`` checks it by a marker the gateway workers send to clients).
The host prints one line, ``TREE-HOST {json}`` (what the contenders' ``Started`` copies need),
then serves until its standard input closes; then it stops the routers and Ray.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from benchmarks.contenders import Contender, Rhizomorph, Started
from benchmarks.trees import Tree

MARK = "TREE-HOST "
START_TIMEOUT = 300.0
STOP_TIMEOUT = 60.0
#: How many times the host starts its Ray before it gives up (each a fresh start).
RAY_START_ATTEMPTS = 3


class Hosted(Started):
    """A contender started by a tree's host: what the load process needs, and the tree's label."""

    def __init__(self, info: dict[str, Any], tree: Tree) -> None:
        self.name, self.url, self.workers = info["name"], info["url"], info["workers"]
        self.batching, self.batch_wait, self.ray_session = info["batching"], info["batch_wait"], info["ray_session"]
        self.clients = tuple(info["clients"])
        self._pids = list(info["server_pids"])
        self.tree = tree
        self.host_rhizomorph: str | None = info.get("rhizomorph_file")  #: which rhizomorph its host imported


class TreeRouters:
    """The host process of one tree and the contenders it runs (``Rhizomorph`` specs)."""

    def __init__(self, tree: Tree, contenders: list[Rhizomorph]) -> None:
        self.tree, self.specs = tree, contenders
        self.process: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}
        self._drain: threading.Thread | None = None

    def start(self, notes: list[str]) -> list[Hosted]:
        """Start the host and its routers; a router that did not start is a note, a host that did
        not start raises."""
        request = {
            "contenders": [{"name": c.name, "workers": c.workers, "config": c.config} for c in self.specs],
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.tree_host"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=self.tree.shim,
            env=self.tree.env(),
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                code = self.process.wait()
                raise RuntimeError(f"the routers' host of tree {self.tree.label} exited with {code}")
            if line.startswith(MARK):
                self.info = json.loads(line[len(MARK) :])
                # Later output is read and dropped, so that a full pipe never blocks the host.
                self._drain = threading.Thread(target=self.process.stdout.read, daemon=True)
                self._drain.start()
                break
            sys.stderr.write(line)
        else:
            self.stop()
            raise TimeoutError(f"the routers' host of tree {self.tree.label} did not start")
        notes += [f"tree {self.tree.label}: {error}" for error in self.info.get("errors", [])]
        found = self.info.get("rhizomorph_file")
        return [Hosted({**info, "rhizomorph_file": found}, self.tree) for info in self.info["contenders"]]

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            if self.process.stdin is not None:
                self.process.stdin.close()
            self.process.wait(STOP_TIMEOUT)
        except (subprocess.TimeoutExpired, OSError):
            self.process.kill()
            self.process.wait()
        if self._drain is not None:
            self._drain.join(5.0)  # at the host's exit its output ends
        if self.process.stdout is not None:
            self.process.stdout.close()
        self.process = None
        if self.info.get("ray_dir"):  # the host removes it, unless it was killed or Ray wrote on after
            shutil.rmtree(self.info["ray_dir"], ignore_errors=True)


def serve(request: dict[str, Any]) -> None:
    """In the host: Ray, the routers, the line, then wait for standard input to close."""
    import rhizomorph
    from rhizomorph import ensure_ray

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray_dir = tempfile.mkdtemp(prefix="rb-", dir="/tmp")  # never join someone else's Ray
    started: list[Contender] = []
    try:
        errors = []
        for attempt in range(RAY_START_ATTEMPTS):
            try:
                ensure_ray(num_cpus=os.cpu_count() or 1, _temp_dir=ray_dir)
                break
            except Exception as exc:  # Ray waits 30 s for its raylet (hard-coded): a loaded machine misses it
                import ray

                ray.shutdown()  # ends what that start began
                if attempt + 1 == RAY_START_ATTEMPTS:
                    raise
                errors.append(f"Ray did not start (attempt {attempt + 1}), started again: {exc}")
        for spec in request["contenders"]:
            contender = Rhizomorph(spec["workers"], name=spec["name"], **spec["config"])
            try:
                contender.start()
                started.append(contender)
            except Exception as exc:
                errors.append(f"{spec['name']} did not start and was skipped: {type(exc).__name__}: {exc}")
        info = {
            "ray_dir": ray_dir,
            "rhizomorph_file": os.path.realpath(rhizomorph.__file__),
            "errors": errors,
            "contenders": [
                {
                    "name": c.name,
                    "url": c.url,
                    "workers": c.workers,
                    "batching": c.batching,
                    "batch_wait": c.batch_wait,
                    "ray_session": c.ray_session,
                    "clients": list(c.clients),
                    "server_pids": c.server_pids(),
                }
                for c in started
            ],
        }
        sys.stdout.write(MARK + json.dumps(info) + "\n")
        sys.stdout.flush()
        sys.stdin.read()  # until the bench closes it
    finally:
        for contender in started:
            try:
                contender.stop()
            except Exception as exc:
                sys.stderr.write(f"{contender.name} did not stop: {exc}\n")
        import ray

        ray.shutdown()
        shutil.rmtree(ray_dir, ignore_errors=True)


def main() -> int:
    serve(json.loads(sys.stdin.readline()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
