"""The package's modules import each other without a circle, and its packages form layers.

Two graphs, read from the source with ``ast``: the module graph of imports that run when a module
is imported (a circle there breaks or half-initialises imports), and the package graph of every
import, lazy ones inside functions included (a circle there means two packages each sit above
the other, as ``search`` and ``techniques`` once did).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("autocompress", "serve_app")
# a lazy import that crosses layers on purpose, each with its reason
KNOWN_BACK_EDGES = {
    # the synthetic log's oracle AUC is computed where the data is made; measure reads the schema
    ("autocompress.data", "autocompress.measure"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for root in ROOTS:
        for path in (REPO / root).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imports(path: Path, modules: Mapping[str, Path], *, lazy: bool) -> set[str]:
    """The project modules ``path`` imports; with ``lazy``, also those imported inside functions."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # for the type checker only: never runs
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) and not lazy:
                continue
            if isinstance(child, ast.Import):
                names.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                names.add(child.module)
                names.update(f"{child.module}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    resolved = set()
    for name in names:
        while name and name not in modules:  # `from pkg import name`: name may be an attribute
            name = name.rpartition(".")[0]
        if name:
            resolved.add(name)
    return resolved


def _cycles(graph: Mapping[str, set[str]]) -> Iterator[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()

    def strong(node: str) -> Iterator[list[str]]:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                yield from strong(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                yield sorted(component)

    for node in sorted(graph):
        if node not in index:
            yield from strong(node)


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_module_imports_itself_through_others() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules, lazy=False) - {name} for name, path in modules.items()}
    assert list(_cycles(graph)) == []


def test_packages_form_layers_counting_lazy_imports() -> None:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        for imported in _imports(path, modules, lazy=True):
            edge = (_package(name), _package(imported))
            if edge[0] != edge[1] and edge not in KNOWN_BACK_EDGES:
                graph.setdefault(edge[0], set()).add(edge[1])
    assert list(_cycles(graph)) == []
    # the layers the engine issue set: search below the engine, techniques below search
    assert "autocompress.engine" not in graph.get("autocompress.search", set())
    assert "autocompress.search" not in graph.get("autocompress.techniques", set())


def test_the_checker_sees_a_circle() -> None:
    assert list(_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})) == [["a", "b", "c"]]
