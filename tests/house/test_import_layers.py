"""The house's import rules: every package of ``src/kdlens`` imports only from
its own layer or the layers below it, and no module imports itself back
through others (no cycles), function-local imports included.

The layers, lowest first (``../shared/DESIGN.md``): the core helpers; the
store; models, datasets and the report's renderers; the distillation methods
and the input kinds; the config and the probes; the builders; training; the
explanation (information discarding, knowledge points); the experiments; the
command line. The package root ``kdlens`` holds only the version and a lazy
façade, so importing ``__version__`` from it is not an upward import.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[2] / "src" / "kdlens"

LAYERS: list[set[str]] = [
    {"errors", "messages", "seeding", "registry", "yaml_files"},
    {"store"},
    {"models", "data", "report"},
    {"distill", "modalities"},
    {"config", "probes"},
    {"builders"},
    {"train"},
    {"explain"},
    {"experiment", "validate", "compare"},
    {"cli", "__main__"},
]
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``path`` imports, anywhere in the file.
    ``from kdlens.pkg import module`` counts as importing the module (a
    sibling reached through its package), not the package's ``__init__``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("kdlens"):
            submodules = {f"{node.module}.{alias.name}" for alias in node.names} & modules
            found |= submodules
            if len(submodules) < len(node.names):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("kdlens"))
    return found & modules


def module_graph() -> dict[str, set[str]]:
    """module -> the kdlens modules it imports; the package root (the version
    and a lazy façade over the layers) is left out."""
    files = {module_name(path): path for path in SOURCE.rglob("*.py")}
    files.pop("kdlens")
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def package_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_package_has_a_layer():
    packages = {package_of(m) for m in module_graph()} - {""}
    assert packages - set(LAYER_OF) == set(), "give the new package a layer in LAYERS"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    upward = []
    for module, imported in graph.items():
        here = LAYER_OF.get(package_of(module))
        for target in imported:
            there = package_of(target)
            if here is not None and there and LAYER_OF[there] > here:
                upward.append(f"{module} -> {target}")
    return sorted(upward)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    # Tarjan's strongly connected components; a component of more than one
    # module is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_runs_upward():
    assert upward_imports(module_graph()) == []


def test_no_import_cycles():
    assert import_cycles(module_graph()) == []


def test_the_checks_find_a_planted_upward_import_and_cycle():
    """The rules are live: an import of the analysis from the store is upward,
    and one back from the store to the analysis's own import closes a cycle."""
    graph = module_graph()
    assert "kdlens.store" in graph["kdlens.explain.analyze"]
    graph["kdlens.store"].add("kdlens.explain.analyze")
    assert upward_imports(graph) == ["kdlens.store -> kdlens.explain.analyze"]
    assert any({"kdlens.explain.analyze", "kdlens.store"} <= set(cycle) for cycle in import_cycles(graph))
