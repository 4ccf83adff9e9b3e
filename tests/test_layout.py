"""The package's shape: no import cycles, a leaf spec, short modules, and stages that talk only
through the study directory.

    .venv/bin/python -m pytest tests/test_layout.py -q

The import graph is built from the source with `ast` (nothing is imported): every `import` and
`from ... import` anywhere in a module counts, including those inside functions (a lazy import is
still a dependency) and those under `if TYPE_CHECKING:` (they never run, but a reader follows them
all the same). Importing `peftlab.a.b` also runs the package `peftlab/a/__init__.py` first, so
it is a dependency on `peftlab.a` too, except for modules inside `peftlab.a` (their package is
already being imported).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "peftlab"
MAX_LINES = 900  # a module longer than this does more than one job


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """peftlab modules imported by the module at `path`: lazy and type-only imports included, and
    the packages (`__init__`) an import runs on the way."""
    me = module_name(path)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
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
            if not name.startswith("peftlab"):
                continue
            # ... and on every package above it, whose __init__ runs first, unless `me` sits
            # inside that package (it is then already being imported)
            parts = name.split(".")
            for i in range(2, len(parts) + 1):
                dep = ".".join(parts[:i])
                if dep in modules and dep != me and not me.startswith(dep + "."):
                    out.add(dep)
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


def test_the_spec_is_a_leaf():
    """The schema every module reads imports nothing of peftlab but its errors and the part of
    the schema kept in its own module (the engine block, itself a leaf): registries check its
    names from above (peftlab.validate), so the spec never reaches up into them."""
    graph = import_graph()
    assert graph["peftlab.spec"] == {"peftlab.errors", "peftlab.engine_spec"}
    assert graph["peftlab.engine_spec"] == set()


def test_the_cli_imports_no_stage():
    """The CLI runs stages through the pipeline and asks the library, never a stage module."""
    graph = import_graph()
    assert graph["peftlab.cli"], "the graph lost the CLI's imports"
    bad = sorted(d for d in graph["peftlab.cli"] if stage_of(d) is not None)
    assert bad == [], f"peftlab.cli imports {bad}"


def test_no_module_is_longer_than_the_limit():
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines())
               for name, path in all_modules().items()}
    assert len(lengths) > 20, "the package's modules were not found"
    long = {name: n for name, n in lengths.items() if n > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: {long}"


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
    allowed = {"peftlab.pipeline", "peftlab.cli", "peftlab.testing.sample_study", "peftlab.testing.fixtures"}
    bad = [f"{m} -> {d}" for m, deps in import_graph().items()
           if stage_of(m) is None and m not in allowed for d in deps if stage_of(d) is not None]
    assert bad == [], ", ".join(bad)


def test_pure_libraries_do_no_io():
    """Similarity, weight analysis, statistics and metrics take arrays and return numbers."""
    io_modules = {"peftlab.store", "peftlab.pipeline", "peftlab.context", "peftlab.data",
                  "peftlab.artifacts",
                  "peftlab.tasks", "peftlab.models"}
    graph, modules = import_graph(), all_modules()
    for lib in ("peftlab.similarity", "peftlab.weights", "peftlab.stats", "peftlab.metrics"):
        # a library that is a package: every module in it
        for name in [m for m in modules if m == lib or m.startswith(lib + ".")]:
            deps = graph[name]
            assert not deps & io_modules, f"{name} imports {sorted(deps & io_modules)}"
            source = modules[name].read_text(encoding="utf-8")
            assert "open(" not in source and ".read_text(" not in source, name


@pytest.mark.parametrize("module, snippet, expected", [
    ("c", "import peftlab.a\n", {"peftlab.a"}),
    ("c", "from peftlab import a\n", {"peftlab.a"}),
    ("c", "from peftlab.a import thing\n", {"peftlab.a"}),
    ("c", "def f():\n    from peftlab.b import x\n", {"peftlab.b"}),
    ("c", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from peftlab.b import x\n",
     {"peftlab.b"}),
    # a module of a package runs the package's __init__ first
    ("c", "from peftlab.pkg.m import x\n", {"peftlab.pkg", "peftlab.pkg.m"}),
    ("c", "from peftlab.pkg import m\n", {"peftlab.pkg", "peftlab.pkg.m"}),
    ("c", "from peftlab.pkg import thing\n", {"peftlab.pkg"}),
    # ... except inside that package, which is already being imported
    ("pkg/n", "from peftlab.pkg.m import x\n", {"peftlab.pkg.m"}),
    ("pkg/n", "from . import m\n", {"peftlab.pkg.m"}),
    ("pkg/__init__", "from peftlab.pkg.m import x\n", {"peftlab.pkg.m"}),
])
def test_the_graph_sees_every_kind_of_import(tmp_path, module, snippet, expected):
    pkg = tmp_path / "peftlab"
    (pkg / "pkg").mkdir(parents=True)
    for name in ("__init__", "a", "b", "c", "pkg/__init__", "pkg/m", "pkg/n"):
        (pkg / f"{name}.py").write_text("")
    (pkg / f"{module}.py").write_text(snippet)
    global ROOT
    saved, ROOT = ROOT, pkg
    try:
        modules = all_modules()
        assert imports_of(pkg / f"{module}.py", modules) == expected
    finally:
        ROOT = saved


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
