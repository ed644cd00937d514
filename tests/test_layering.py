"""Modules import only those below them: the import graph of cnnkit's modules has no cycle.

Every import counts, those inside functions too (they hide a circle rather than remove it).
``from package import name`` is an edge to ``package.name`` when that is a module, else to the
package; a module's own parent packages are not edges (a package's ``__init__`` re-exports its
children, so the child must never import it back, which an explicit edge would show).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "cnnkit"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(path, root): path for path in sorted(root.rglob("*.py"))}


def imported_modules(name: str, path: Path, known: set[str]) -> dict[str, int]:
    """The cnnkit modules that ``name`` imports, each with the line of its first import."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in known:   # ``cnnkit.io.read_weights`` is an attribute of cnnkit.io
            target = target.rpartition(".")[0]
        if target and target != name:
            found.setdefault(target, line)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "cnnkit" or alias.name.startswith("cnnkit."):
                    add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source != "cnnkit" and not source.startswith("cnnkit."):
                continue
            for alias in node.names:
                if f"{source}.{alias.name}" in known:
                    add(f"{source}.{alias.name}", node.lineno)
                else:
                    add(source, node.lineno)
    return found


def import_graph(root: Path = ROOT) -> dict[str, dict[str, int]]:
    """Module -> {imported module: line}, over every module of the package at ``root``."""
    found = modules(root)
    return {name: imported_modules(name, path, set(found)) for name, path in found.items()}


def circles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm), sorted:
    each a set of modules that all import each other, directly or through one another."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a list of modules, first == last) through each circle: the shortest way round
    from its first module."""
    return [_round_trip(graph, component) for component in circles(graph)]


def _round_trip(graph: dict[str, dict[str, int]], component: list[str]) -> list[str]:
    """A shortest path from ``component[0]`` back to itself inside the component (breadth first)."""
    start, members = component[0], set(component)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in graph[node]:
                if target not in members or target in previous:
                    continue
                previous[target] = node
                if target == start:
                    path = [start]
                    while path[-1] != start or len(path) == 1:
                        path.append(previous[path[-1]])
                    return path[::-1]
                following.append(target)
        frontier = following
    raise AssertionError(f"{component} is not strongly connected")


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    """``a (line 3) -> b (line 9) -> a``: each import with the line that makes it."""
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_cnnkit_modules_import_without_cycles():
    graph = import_graph()
    found = circles(graph)
    report = [f"{describe(graph, _round_trip(graph, members))}\n  (the circle holds {', '.join(members)})"
              for members in found]
    assert not found, "import cycles among cnnkit modules:\n" + "\n".join(report)


def test_the_cycle_finder_reports_a_function_level_cycle(tmp_path):
    """The checker itself: a cycle made by an import inside a function is found and named."""
    package = tmp_path / "cnnkit"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from .low import f\n")
    (package / "low.py").write_text("def f():\n    from .sub.high import g\n    return g\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "high.py").write_text("from ..low import f\n\ndef g():\n    return f\n")
    (package / "alone.py").write_text("from cnnkit import low\nimport cnnkit.sub\n")
    graph = import_graph(package)
    assert graph["cnnkit.alone"] == {"cnnkit.low": 1, "cnnkit.sub": 2}
    assert graph["cnnkit.sub"] == {}
    assert circles(graph) == [["cnnkit.low", "cnnkit.sub.high"]]
    assert cycles(graph) == [["cnnkit.low", "cnnkit.sub.high", "cnnkit.low"]]
    assert describe(graph, cycles(graph)[0]) == \
        "cnnkit.low (line 2) -> cnnkit.sub.high (line 1) -> cnnkit.low"


#: module -> modules above it that it must never reach, directly or through others
BELOW = {
    "cnnkit.train": ["cnnkit.model", "cnnkit.checkpoint", "cnnkit.model_file"],   # fit is given its checkpoints
    "cnnkit.model_file": ["cnnkit.model", "cnnkit.train", "cnnkit.checkpoint"],
    "cnnkit.model": ["cnnkit.checkpoint", "cnnkit.models", "cnnkit.run", "cnnkit.cli"],
    "cnnkit.executor": ["cnnkit.model", "cnnkit.layers", "cnnkit.train"],
    "cnnkit.graph_config": ["cnnkit.model", "cnnkit.checkpoint"],
    "cnnkit.layers": ["cnnkit.model", "cnnkit.executor", "cnnkit.graph_config"],
    "cnnkit.viz": ["cnnkit.run", "cnnkit.transfer.run", "cnnkit.cli"],   # the CLI's run code sits above viz
}


def reachable(graph: dict[str, dict[str, int]], start: str) -> set[str]:
    seen, frontier = {start}, [start]
    while frontier:
        frontier = [t for node in frontier for t in graph[node] if t not in seen and not seen.add(t)]
    return seen - {start}


@pytest.mark.parametrize("lower", sorted(BELOW))
def test_lower_modules_never_reach_higher_ones(lower):
    """The imports the layering removed stay removed, directly or through other modules."""
    graph = import_graph()
    reached = reachable(graph, lower)
    assert not reached & set(BELOW[lower]), f"{lower} imports {sorted(reached & set(BELOW[lower]))}, above it"


DOCS = ROOT.parent / "docs" / "architecture.md"


def documented_rows() -> list[list[str]]:
    """The rows of the layer diagram in docs/architecture.md, top first: each a list of names
    such as ``model``, ``transfer/run``, ``layers/`` (a package) or ``cnnkit/__init__``."""
    text = DOCS.read_text()
    block = text[text.index("## Layers"):]
    block = block[block.index("```\n") + 4:]
    block = block[:block.index("```")]
    rows: list[list[str]] = []
    for line in block.splitlines():
        names = [n.split(" (")[0].strip() for n in line[:49].split("·") if n.strip()]
        if line.startswith("  "):
            rows[-1].extend(names)
        else:
            rows.append(names)
    return rows


def _place(module: str, rows: list[list[str]]) -> tuple[int, str]:
    """The diagram row of ``module`` and the name that covers it; the most specific name wins
    (``transfer/run`` over the package ``transfer/``)."""
    found = None
    for position, names in enumerate(rows):
        for name in names:
            dotted = "cnnkit" if name == "cnnkit/__init__" else "cnnkit." + name.rstrip("/").replace("/", ".")
            covers = module == dotted or (name.endswith("/") and module.startswith(dotted + "."))
            if covers and (found is None or len(name) > len(found[1])):
                found = (position, name)
    assert found is not None, f"{module} is in no row of the layer diagram in {DOCS.name}; add it"
    return found


def test_the_layer_diagram_in_the_docs_matches_the_imports():
    """Every module sits in a row of the diagram and imports only modules of rows below it, or
    of its own package (``layers/``: the package re-exports its modules)."""
    rows = documented_rows()
    wrong = []
    for module, imports in import_graph().items():
        row, name = _place(module, rows)
        for target, line in imports.items():
            target_row, target_name = _place(target, rows)
            if target_row <= row and target_name != name:
                wrong.append(f"{module} (line {line}) imports {target}, which the diagram puts "
                             f"{'in the same row' if target_row == row else 'above it'}")
    assert not wrong, "\n".join(wrong)
