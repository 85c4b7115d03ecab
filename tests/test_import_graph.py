"""No import circle in covidxr or webapp: the graph is built from the source with `ast`, so an import inside a
function (the usual way to hide a circle from Python) counts as much as one at the top of a module."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGES = ("covidxr", "webapp")


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _target(name: str, modules: dict[str, Path]) -> str | None:
    """The module of ours that importing `name` runs: itself, or its nearest enclosing package."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph(root: Path = REPO) -> dict[str, set[str]]:
    """module -> the modules of ours it imports, anywhere in its body, relative imports resolved."""
    modules = _modules(root)
    graph = {}
    for module, path in modules.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges.update(_target(a.name, modules) for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[:len(package) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for a in node.names:  # `from . import runtime` imports the module covidxr.runtime
                    edges.add(f"{source}.{a.name}" if f"{source}.{a.name}" in modules else _target(source, modules))
        edges.discard(None)
        edges.discard(module)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions_and_relative_ones(tmp_path: Path):
    pkg = tmp_path / "covidxr"
    (pkg / "sub").mkdir(parents=True)
    (tmp_path / "webapp").mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("from .. import a\nimport numpy\n")
    (tmp_path / "webapp" / "__init__.py").write_text("from covidxr.sub.b import x\n")
    graph = import_graph(tmp_path)
    assert graph["covidxr.a"] == {"covidxr.sub.b"}
    assert graph["covidxr.sub.b"] == {"covidxr.a"}
    assert graph["webapp"] == {"covidxr.sub.b"}
    assert cycles(graph) == [["covidxr.a", "covidxr.sub.b"]]


def test_covidxr_and_webapp_import_no_circle():
    graph = import_graph()
    assert "covidxr.engines.cli" in graph and "webapp.services.model" in graph
    assert cycles(graph) == []
