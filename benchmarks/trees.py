"""Source trees for ``bench_claims --trees``: the same table measured on several versions of the code.

A tree is a directory holding a ``rhizomorph`` package (a checkout or worktree of this
repository), or a git revision of this repository (``main``, ``HEAD~1``, ``f05ca26``), which is
checked out with ``git worktree add --detach`` into a temporary directory and removed after.

Each tree's processes (its routers' host, Ray's workers, the caller, the provider) import
``rhizomorph`` from that tree but the harness (``benchmarks``) from this one, so that an old tree
is measured by the same code as a new one: they run with ``PYTHONPATH`` and the working directory
set to a *shim*, a temporary directory of two symlinks, ``rhizomorph`` -> the tree's package and
``benchmarks`` -> this checkout's. A tree must therefore provide what the harness imports from
``rhizomorph`` (``Config``, ``Deployment``, ``ensure_ray``, ``rhizomorph.client``, ...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

HARNESS = Path(__file__).resolve().parent  #: this checkout's ``benchmarks`` package
REPO = HARNESS.parent


@dataclass(frozen=True)
class Tree:
    """A version of the code: its label in contender names, its source, and its import shim."""

    label: str
    source: str  #: the directory whose ``rhizomorph`` is measured
    spec: str  #: as given on the command line (a directory or a git revision)
    commit: str | None  #: the commit checked out there, when git knows it
    shim: str  #: ``PYTHONPATH`` and working directory of this tree's processes
    temporary: bool = False  #: a worktree made for this run (removed by ``remove_trees``)
    repo: str = str(REPO)  #: the repository of that worktree

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment of a process of this tree: only the shim on ``PYTHONPATH``."""
        return {**(os.environ if base is None else base), "PYTHONPATH": self.shim}


class TreeError(ValueError):
    """A ``--trees`` argument that names neither a source tree nor a git revision."""


def _git(*args: str, cwd: Path | str = REPO) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise TreeError(done.stderr.strip() or f"git {' '.join(args)} failed")
    return done.stdout.strip()


def _commit_of(directory: Path) -> str | None:
    try:
        return _git("rev-parse", "--short", "HEAD", cwd=directory)
    except (TreeError, OSError):
        return None


def _is_tree(path: Path) -> bool:
    return (path / "rhizomorph" / "__init__.py").is_file()


def labels(specs: list[str]) -> list[str]:
    """Short, distinct names: a revision as given, a directory by its last part; repeats numbered."""
    names = [Path(s.rstrip("/")).name or s for s in specs]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if names.count(name) == 1 else f"{name}#{seen[name]}")
    return out


def _shim(source: Path) -> str:
    shim = Path(tempfile.mkdtemp(prefix="rb-tree-", dir="/tmp"))
    (shim / "rhizomorph").symlink_to(source / "rhizomorph", target_is_directory=True)
    (shim / "benchmarks").symlink_to(HARNESS, target_is_directory=True)
    return str(shim)


def prepare_trees(specs: list[str], repo: Path | str = REPO) -> list[Tree]:
    """One ``Tree`` per spec, in order (the first is the "before"): a directory with a
    ``rhizomorph`` package, else a git revision of ``repo``; neither raises ``TreeError``, after
    removing what was made for the earlier specs."""
    if len(specs) < 2:
        raise TreeError("--trees needs at least two trees: the first is the one the others are compared to")
    trees: list[Tree] = []
    try:
        for spec, label in zip(specs, labels(specs), strict=True):
            path = Path(spec).expanduser()
            if _is_tree(path):
                source = path.resolve()
                trees.append(Tree(label, str(source), spec, _commit_of(source), _shim(source)))
                continue
            if path.exists():
                raise TreeError(f"{spec!r} has no rhizomorph package")
            try:
                commit = _git("rev-parse", "--verify", "--quiet", f"{spec}^{{commit}}", cwd=repo)
            except TreeError:
                raise TreeError(f"{spec!r} is neither a source tree nor a git revision of {repo}") from None
            where = Path(tempfile.mkdtemp(prefix="rb-rev-", dir="/tmp")) / "tree"
            try:
                _git("worktree", "add", "--detach", str(where), commit, cwd=repo)
            except TreeError:
                shutil.rmtree(where.parent, ignore_errors=True)
                raise
            short = commit[:7]
            trees.append(Tree(label, str(where), spec, short, _shim(where), temporary=True, repo=str(repo)))
            if not _is_tree(where):
                raise TreeError(f"revision {spec!r} ({short}) has no rhizomorph package")
    except BaseException:
        remove_trees(trees)
        raise
    return trees


def remove_trees(trees: list[Tree]) -> None:
    """Remove the shims, and the worktrees made for git revisions (``git worktree remove``)."""
    for tree in trees:
        shutil.rmtree(tree.shim, ignore_errors=True)
        if tree.temporary:
            try:
                _git("worktree", "remove", "--force", tree.source, cwd=tree.repo)
            except TreeError:
                pass
            shutil.rmtree(Path(tree.source).parent, ignore_errors=True)
    for repo in {t.repo for t in trees if t.temporary}:
        try:
            _git("worktree", "prune", cwd=repo)
        except TreeError:
            pass
