"""The package's shape, as ARCHITECTURE.md states it: no import cycles, imports follow the data flow.

Every ``import`` of ``groundiff_core`` counts: at module level, inside functions (which load late
but still depend) and under ``TYPE_CHECKING``. A cycle hidden by a function-level import is a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "groundiff_core"


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (any import statement in its source)."""
    files = {module_name(p, root): p for p in root.rglob("*.py")}

    def owner(name: str) -> str | None:  # the module a dotted name lives in
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for t in targets:
                if t.split(".")[0] == PACKAGE.name and (o := owner(t)) and o != mod:
                    graph[mod].add(o)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(tmp_path):
    pkg = tmp_path / "groundiff_core"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from groundiff_core.sub.b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from groundiff_core import a\n")
    (pkg / "sub" / "c.py").write_text("from . import b\n")  # relative, no cycle
    graph = import_graph(pkg)
    assert graph["groundiff_core.sub.c"] == {"groundiff_core.sub.b"}
    assert cycles(graph) == [["groundiff_core.a", "groundiff_core.sub.b"]]


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def _imports_of(prefix: str, graph: dict[str, set[str]]) -> set[str]:
    return {t for m, ts in graph.items() if m == prefix or m.startswith(prefix + ".") for t in ts}


@pytest.mark.parametrize("layer, forbidden", [
    ("groundiff_core.util", ("engine", "evaluation", "methods", "models", "io", "book", "commands", "phantom", "heatmaps")),
    ("groundiff_core.heatmaps", ("engine", "evaluation", "methods", "models", "book", "commands")),
    ("groundiff_core.io", ("engine", "evaluation", "methods", "models", "book", "commands")),
    ("groundiff_core.models", ("engine", "evaluation", "methods", "book", "commands")),
    ("groundiff_core.engine", ("evaluation", "methods", "book", "commands", "phantom")),
    ("groundiff_core.evaluation", ("engine", "book", "commands")),
    ("groundiff_core.methods", ("book", "commands")),
    ("groundiff_core.testing", ("engine", "evaluation", "methods", "book", "commands", "heatmaps")),
])
def test_imports_follow_the_data_flow(layer, forbidden):
    bad = sorted(t for t in _imports_of(layer, import_graph())
                 if any(t == f"groundiff_core.{f}" or t.startswith(f"groundiff_core.{f}.") for f in forbidden))
    assert not bad, f"{layer} imports {bad}"
