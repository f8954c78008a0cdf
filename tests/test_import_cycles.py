"""No import cycle inside ``dml_study``, lazy (function-level) imports included.

A cycle works only by the order modules happen to be imported in, and a function-level
import that closes one hides a layering mistake; so every ``import dml_study...`` and
``from dml_study... import`` counts, wherever it stands. Only imports under
``if TYPE_CHECKING:`` are left out (they never run). A ``from package import name`` is an
edge to the submodule ``package.name`` when there is one, else to ``package``; importing a
submodule implicitly imports its parent package, which is not counted.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dml_study"


def _modules() -> dict[str, Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(sub) for stmt in node.body for sub in ast.walk(stmt))
    return skipped


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``dml_study`` modules it imports (anywhere in its source)."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_nodes(tree)
        edges: set[str | None] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                edges |= {owner(a.name) for a in node.names if a.name.startswith("dml_study")}
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(max(node.level - 1, 0)):
                    base = base.rpartition(".")[0]
                module = (f"{base}.{node.module}" if node.module else base) if node.level \
                    else node.module or ""
                if module.startswith("dml_study"):
                    edges |= {f"{module}.{a.name}" if f"{module}.{a.name}" in modules
                              else owner(module) for a in node.names}
        graph[name] = {e for e in edges if e is not None and e != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_lazy_imports():
    graph = import_graph()
    # imported inside a function
    assert "dml_study.study.launch.local" in graph["dml_study.study.launch.launcher"]
    assert "dml_study.training.distributed" in graph["dml_study.training.engine"]


def test_cycles_are_found():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_dml_study():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


#: The study's layers, lowest first: a subpackage imports only its own layer and those
#: before it (docs/ARCHITECTURE.md). The facade (``__init__``) and the command line
#: (``__main__``) sit above all of them.
STUDY_LAYERS = ("plan", "tiers", "launch", "tune", "analysis", "report", "pipeline")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """``"a -> b"`` for every import from a study layer into a later one."""
    def layer(module: str) -> int | None:
        parts = module.split(".")
        if parts[:2] != ["dml_study", "study"] or len(parts) < 3:
            return None
        return STUDY_LAYERS.index(parts[2]) if parts[2] in STUDY_LAYERS else None

    bad = []
    for module, targets in graph.items():
        own = layer(module)
        if own is None:
            continue
        bad += [f"{module} -> {t}" for t in sorted(targets)
                if (other := layer(t)) is not None and other > own]
    return bad


def test_layer_violations_are_found():
    graph = {"dml_study.study.plan.grid": {"dml_study.study.report.index"},
             "dml_study.study.report.index": {"dml_study.study.plan.grid"}}
    assert layer_violations(graph) == ["dml_study.study.plan.grid -> dml_study.study.report.index"]


def test_study_imports_point_one_way():
    bad = layer_violations(import_graph())
    assert not bad, "imports against the layer order " + " → ".join(STUDY_LAYERS) + ": " + \
        "; ".join(bad)


def test_study_has_no_top_level_modules_but_the_facade():
    study = PACKAGE / "study"
    top = sorted(p.name for p in study.glob("*.py"))
    assert top == ["__init__.py", "__main__.py"], top
    assert sorted(p.name for p in study.iterdir() if p.is_dir() and p.name != "__pycache__") \
        == sorted(name for name in STUDY_LAYERS if (study / name).is_dir())
    for package in STUDY_LAYERS:
        init = study / package / "__init__.py"
        if init.is_file():
            doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
            assert doc and len(doc) > 200, f"{init}: a paragraph saying what it owns"
