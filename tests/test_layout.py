"""The package's shape: no import cycles, and stages that talk only through the study directory.

    .venv/bin/python -m pytest tests/test_layout.py -q

The import graph is built from the source with `ast` (nothing is imported): every `import` and
`from ... import` anywhere in a module counts, including those inside functions (a lazy import is
still a dependency); imports under `if TYPE_CHECKING:` do not (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "peftlab"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and (
                (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING")
                or (isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """peftlab modules imported by the module at `path` (runtime imports only)."""
    me = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                pkg = me.split(".")[: len(me.split(".")) - node.level + (path.name == "__init__.py")]
                base = ".".join(pkg + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                     for a in node.names]
        else:
            continue
        for name in names:
            # `import a.b.c` depends on the deepest module that exists
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name.startswith("peftlab") and name != me:
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: imports_of(path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def stage_of(module: str) -> str | None:
    """'drift' for peftlab.stages.drift (and peftlab.stages.report.x -> 'report')."""
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "stages" else None


def test_the_package_has_no_import_cycle():
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_stage_imports_another_stage():
    bad = []
    for module, deps in import_graph().items():
        mine = stage_of(module)
        if mine is None:
            continue
        bad += [f"{module} -> {d}" for d in deps if stage_of(d) not in (None, mine)]
    assert bad == [], "stages must talk through the store only: " + ", ".join(bad)


def test_library_layer_never_imports_a_stage():
    """Pure libraries and shared ground (artifacts, data, results, registries) sit below the
    stages; only the pipeline (pipeline.py), the CLI and test fixtures may reach up into them."""
    allowed = {"peftlab.pipeline", "peftlab.cli", "peftlab.sample_study", "peftlab.fixtures"}
    bad = [f"{m} -> {d}" for m, deps in import_graph().items()
           if stage_of(m) is None and m not in allowed for d in deps if stage_of(d) is not None]
    assert bad == [], ", ".join(bad)


def test_pure_libraries_do_no_io():
    """Similarity, weight analysis, statistics and metrics take arrays and return numbers."""
    io_modules = {"peftlab.store", "peftlab.pipeline", "peftlab.data", "peftlab.artifacts",
                  "peftlab.tasks", "peftlab.models"}
    for lib in ("peftlab.similarity", "peftlab.weights", "peftlab.stats", "peftlab.metrics"):
        deps = import_graph()[lib]
        assert not deps & io_modules, f"{lib} imports {sorted(deps & io_modules)}"
        source = all_modules()[lib].read_text(encoding="utf-8")
        assert "open(" not in source and ".read_text(" not in source, lib


@pytest.mark.parametrize("snippet, expected", [
    ("import peftlab.a\n", {"peftlab.a"}),
    ("from peftlab import a\n", {"peftlab.a"}),
    ("from peftlab.a import thing\n", {"peftlab.a"}),
    ("def f():\n    from peftlab.b import x\n", {"peftlab.b"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from peftlab.b import x\n", set()),
])
def test_the_graph_sees_every_kind_of_import(tmp_path, snippet, expected):
    pkg = tmp_path / "peftlab"
    pkg.mkdir()
    for name in ("__init__", "a", "b"):
        (pkg / f"{name}.py").write_text("")
    (pkg / "c.py").write_text(snippet)
    modules = {"peftlab": pkg / "__init__.py", "peftlab.a": pkg / "a.py",
               "peftlab.b": pkg / "b.py", "peftlab.c": pkg / "c.py"}
    global ROOT
    saved, ROOT = ROOT, pkg
    try:
        assert imports_of(pkg / "c.py", modules) == expected
    finally:
        ROOT = saved


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
