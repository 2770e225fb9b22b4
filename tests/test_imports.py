"""The import graph of ``cnn_apps`` (docs' architecture: arrows point down only): no cycle, the
registry imports no model, the library never imports the CLI, segmentation never imports
detection. Read from the source with :mod:`ast` (nothing is imported): module-level and
function-level imports both count, relative imports are resolved, and an import of ``a.b.c``
is an edge to the module ``a.b.c`` if it exists, else to ``a.b`` (and so on up)."""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "cnn_apps"
MODEL_PACKAGES = ("backbones", "classification", "detection", "segmentation")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    modules = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _existing(name: str, modules) -> str | None:
    """``name`` if it is a module of ours, else its nearest enclosing module of ours."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, dict[str, int]]:
    """Module -> {imported module of ours: line of the (first) import}."""
    modules = _modules()
    graph: dict[str, dict[str, int]] = {m: {} for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [_existing(alias.name, modules) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x / from ..a import b
                    parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:  # from pkg import submodule is an edge to the submodule
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else _existing(base, modules))
            for target in targets:
                if target and target != module:
                    graph[module].setdefault(target, node.lineno)
    return graph


def strongly_connected(graph) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one module."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return sorted(found)


def path_between(graph, start: str, goal: str, within=None) -> list[str] | None:
    """A shortest import chain start -> ... -> goal (through ``within`` only, when given)."""
    previous = {start: None}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for child in sorted(graph[node]):
            if within is not None and child not in within:
                continue
            if child == goal:
                chain = [goal, node]
                while previous[chain[-1]] is not None:
                    chain.append(previous[chain[-1]])
                return chain[::-1]
            if child not in previous:
                previous[child] = node
                queue.append(child)
    return None


def describe(graph, chain: list[str]) -> str:
    """``a (a.py:12) -> b (b.py:40) -> c``: each step with the line of its import."""
    modules = _modules()
    steps = [f"{a} ({modules[a].relative_to(ROOT)}:{graph[a][b]})" for a, b in zip(chain, chain[1:])]
    return " -> ".join([*steps, chain[-1]])


def reachable(graph, start: str) -> set[str]:
    seen, queue = {start}, deque([start])
    while queue:
        for child in graph[queue.popleft()]:
            if child not in seen:
                seen.add(child)
                queue.append(child)
    return seen


def test_the_graph_sees_module_and_function_level_and_relative_imports():
    graph = import_graph()
    assert "cnn_apps.registry" in graph["cnn_apps.backbones.resnet"]  # module level
    assert "cnn_apps.serving.model_server" in graph["cnn_apps.cli"]  # function level
    assert "cnn_apps.detection.region_detector" in graph["cnn_apps.detection.rcnn"]
    # a cycle made up here is found, with its chain
    made_up = {"a": {"b": 1}, "b": {"c": 2}, "c": {"a": 3}, "d": {"a": 4}}
    assert strongly_connected(made_up) == [["a", "b", "c"]]
    assert path_between(made_up, "a", "a") == ["a", "b", "c", "a"]


def test_no_import_cycle():
    graph = import_graph()
    report = []
    for component in strongly_connected(graph):
        chain = path_between(graph, component[0], component[0], within=set(component))
        report.append(f"{len(component)} modules: {', '.join(component)}\n    {describe(graph, chain)}")
    assert not report, "import cycles:\n" + "\n".join(report)


def test_registry_imports_no_model_and_nothing_imports_the_cli():
    graph = import_graph()
    models = tuple(f"{PACKAGE}.{p}" for p in MODEL_PACKAGES)
    bad = sorted(m for m in reachable(graph, "cnn_apps.registry") if m.startswith(models))
    assert not bad, "cnn_apps.registry reaches model modules: " + "; ".join(
        describe(graph, path_between(graph, "cnn_apps.registry", m)) for m in bad
    )
    allowed = {"cnn_apps.cli", "cnn_apps.__main__"}
    importers = sorted(m for m, targets in graph.items() if "cnn_apps.cli" in targets and m not in allowed)
    assert not importers, "the library imports cnn_apps.cli: " + "; ".join(
        describe(graph, [m, "cnn_apps.cli"]) for m in importers
    )


def test_segmentation_and_detection_are_siblings():
    graph = import_graph()
    for a, b in (("segmentation", "detection"), ("detection", "segmentation")):
        edges = [
            describe(graph, [m, t])
            for m, targets in sorted(graph.items())
            if m.startswith(f"{PACKAGE}.{a}")
            for t in targets
            if t.startswith(f"{PACKAGE}.{b}")
        ]
        assert not edges, f"{a} imports {b}: " + "; ".join(edges)
