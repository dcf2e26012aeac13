"""The layout's rules, read from the source with ``ast`` (nothing is imported):

- the protocol core (rhizomorph/protocol/) imports no asyncio, Ray, socket or websockets;
- the unit tests import no Ray, neither themselves nor through what they import when loaded;
- the modules of the ``rhizomorph`` package import each other without a cycle.

Every ``import`` statement counts, wherever it stands: at module level, under ``TYPE_CHECKING``,
inside a function.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "rhizomorph"
UNIT = REPO / "tests" / "unit"
#: Top-level packages of this repository whose modules are followed from the unit tests.
LOCAL = ("rhizomorph", "tests", "benchmarks")
IO_MODULES = {"asyncio", "ray", "socket", "websockets"}


@dataclass(frozen=True)
class Import:
    module: str  # the module named, resolved to a submodule for ``from package import name``
    line: int
    module_level: bool  # runs when the importing module is loaded (not in a function, not type-only)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_path(name: str) -> Path | None:
    """The file of a module of this repository, or ``None`` (third-party, standard library)."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imports(path: Path) -> list[Import]:
    """Every import in the file, with relative imports resolved and ``from a import b`` read as
    ``a.b`` where ``b`` is a module of this repository."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package.pop()
    in_function: set[int] = set()  # and under ``if TYPE_CHECKING:``: neither runs at load time
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(child) for child in ast.walk(node) if child is not node)
        elif _type_checking_only(node):
            in_function.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        module_level = id(node) not in in_function
        if isinstance(node, ast.Import):
            found += [Import(alias.name, node.lineno, module_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append(Import(submodule if module_path(submodule) else base, node.lineno, module_level))
    return found


def _type_checking_only(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def loaded_with(name: str) -> list[str]:
    """What loading a module of this repository loads: its parent packages' ``__init__`` and the
    module itself."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def test_the_protocol_core_imports_no_io() -> None:
    offenders = [
        f"{path.relative_to(REPO)}:{found.line} imports {found.module}"
        for path in sorted((PACKAGE / "protocol").glob("*.py"))
        for found in imports(path)
        if found.module.split(".")[0] in IO_MODULES
    ]
    assert offenders == []


def test_unit_tests_import_no_ray() -> None:
    """A unit test file imports no Ray itself, anywhere in it; and nothing loaded with it, or
    with the conftest.py files that apply to it, imports Ray when loaded (followed through this
    repository's modules and their parent packages, module-level imports only: a function's
    imports run when it is called, and no unit test calls one that imports Ray)."""
    unit_files = sorted(UNIT.glob("*.py"))
    offenders = [
        f"{path.relative_to(REPO)}:{found.line} imports {found.module}"
        for path in unit_files
        for found in imports(path)
        if found.module.split(".")[0] == "ray"
    ]
    for path in [*unit_files, REPO / "tests" / "conftest.py", *UNIT.glob("conftest.py")]:
        seen: set[str] = set()
        pending = [(f.module, f"{path.relative_to(REPO)}:{f.line}") for f in imports(path) if f.module_level]
        while pending:
            name, via = pending.pop()
            for loaded in loaded_with(name):
                if loaded in seen:
                    continue
                seen.add(loaded)
                if loaded.split(".")[0] == "ray":
                    offenders.append(f"{path.relative_to(REPO)} loads ray through {via}")
                source = module_path(loaded) if loaded.split(".")[0] in LOCAL else None
                if source is not None:
                    pending += [(f.module, f"{loaded}:{f.line}") for f in imports(source) if f.module_level]
    assert offenders == []


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the ``rhizomorph`` package it imports (every import statement)."""
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        graph[name] = {f.module for f in imports(path) if f.module.split(".")[0] == "rhizomorph" and f.module != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in graph:
                continue
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_cycle_finder_finds_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_rhizomorph_package_has_no_import_cycle() -> None:
    assert cycles(import_graph()) == []
