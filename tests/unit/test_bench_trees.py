"""``bench_claims --trees``'s argument handling: source trees as directories or git revisions, their
import shims, the contenders' names and order (real git in a temporary repository; no Ray)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from benchmarks import bench_claims
from benchmarks.contenders import Rhizomorph
from benchmarks.tree_host import Hosted
from benchmarks.trees import HARNESS, Tree, TreeError, labels, prepare_trees, remove_trees


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository whose first commit has a rhizomorph package (marked "one") and whose second
    commit marks it "two"."""
    repo = tmp_path / "repo"
    (repo / "rhizomorph").mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.invalid")
    git(repo, "config", "user.name", "t")
    for mark in ("one", "two"):
        (repo / "rhizomorph" / "__init__.py").write_text(f"MARK = {mark!r}\n")
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", mark)
    return repo


def test_labels_are_short_and_distinct():
    assert labels(["/work/main", "HEAD", "/tmp/x/main/"]) == ["main#1", "HEAD", "main#2"]
    assert labels(["f05ca26", "/work/wt-trees"]) == ["f05ca26", "wt-trees"]


def test_directories_and_revisions_become_trees_with_shims(repo: Path, tmp_path: Path):
    checkout = tmp_path / "checkout"
    git(tmp_path, "clone", "-q", str(repo), str(checkout))
    trees = prepare_trees([f"{repo}", "HEAD~1", str(checkout)], repo=repo)
    try:
        directory, revision, clone = trees
        assert [t.label for t in trees] == ["repo", "HEAD~1", "checkout"]
        assert (directory.source, directory.temporary) == (str(repo), False)
        assert directory.commit == git(repo, "rev-parse", "--short", "HEAD")
        # The revision is checked out apart, at that commit: its package is the first commit's.
        assert revision.temporary and revision.commit == git(repo, "rev-parse", "HEAD~1")[:7]
        assert (Path(revision.source) / "rhizomorph" / "__init__.py").read_text() == "MARK = 'one'\n"
        assert revision.source in git(repo, "worktree", "list")
        for tree in trees:  # the tree's rhizomorph, this checkout's harness
            shim = Path(tree.shim)
            assert (shim / "rhizomorph").resolve() == Path(tree.source, "rhizomorph").resolve()
            assert (shim / "benchmarks").resolve() == HARNESS
            assert tree.env({"PATH": "/bin"}) == {"PATH": "/bin", "PYTHONPATH": tree.shim}
        assert clone.commit == directory.commit
    finally:
        remove_trees(trees)
    for tree in trees:
        assert not Path(tree.shim).exists()
    assert not Path(revision.source).exists() and revision.source not in git(repo, "worktree", "list")
    assert Path(directory.source, "rhizomorph").is_dir()  # a directory given is never removed


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        (["HEAD"], "at least two trees"),
        (["HEAD", "no-such-revision"], "neither a source tree nor a git revision"),
        (["HEAD", "{tmp}"], "has no rhizomorph package"),
    ],
)
def test_bad_trees_are_refused_and_leave_nothing(repo: Path, tmp_path: Path, specs: list[str], message: str):
    before = git(repo, "worktree", "list")
    with pytest.raises(TreeError, match=message):
        prepare_trees([s.format(tmp=tmp_path) for s in specs], repo=repo)
    assert git(repo, "worktree", "list") == before  # HEAD's worktree was removed again


def test_bench_claims_refuses_bad_trees_with_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        bench_claims.main(["--trees", "HEAD", "--no-hypha"])
    assert exit_.value.code == 2 and "at least two trees" in capsys.readouterr().err


def hosted(name: str, tree: Tree) -> Hosted:
    info = {"name": name, "url": "ws://127.0.0.1:1", "workers": 2, "batching": True, "batch_wait": "socket"}
    return Hosted({**info, "ray_session": f"/tmp/{tree.label}", "clients": ["v4"], "server_pids": []}, tree)


def test_each_rhizomorph_contender_runs_once_per_tree_side_by_side():
    trees = [Tree(label, f"/src/{label}", label, None, f"/shim/{label}") for label in ("a", "b")]
    contenders = bench_claims.claim_contenders(allocators=["malloc"])
    hosts = bench_claims.tree_hosts(contenders, trees)
    assert [h.tree.label for h in hosts] == ["a", "b"]
    names = [c.name for c in hosts[1].specs]
    assert names == [
        "rhizomorph@b",
        "rhizomorph-no-batching@b",
        "rhizomorph-alloc-malloc@b",
        "rhizomorph-no-batching-alloc-malloc@b",
    ]
    spec = hosts[1].specs[3]
    assert isinstance(spec, Rhizomorph)
    assert spec.config == {"enable_message_batching": False, "worker_allocator": "malloc"}
    started = [hosted(c.name, h.tree) for h in hosts for c in h.specs]
    order = [c.name for c in bench_claims.tree_order(started, ["a", "b"])]
    assert order[:4] == ["rhizomorph@a", "rhizomorph@b", "rhizomorph-no-batching@a", "rhizomorph-no-batching@b"]
