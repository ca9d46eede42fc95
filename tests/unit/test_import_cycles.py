"""The project's import graph: no cycles, not even behind a function-local import, and no module
reaches into another's private (`_name`) parts.

Read from the source with `ast`, nothing is imported: every import statement counts wherever it
stands (module level, inside a function, under an `if`), because a function-local import that closes
a cycle is still a cycle, only one that fails later and depending on who imported first.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import ROOT

PACKAGES = ("components", "workflows")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> source file, for every module under PACKAGES (a package is its __init__)."""
    modules = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _absolute(node: ast.ImportFrom, importer: str, modules: dict[str, Path]) -> str:
    """The module an ImportFrom names, with a relative one (`from . import x`) resolved against its importer."""
    if not node.level:
        return node.module or ""
    base = importer.split(".")
    if not _is_package(importer, modules):
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _with_parents(name: str, modules: dict[str, Path]) -> list[str]:
    """`a.b.c` and the packages an import of it runs first (`a`, `a.b`), those that are project modules."""
    parts = name.split(".")
    return [m for m in (".".join(parts[: i + 1]) for i in range(len(parts))) if m in modules]


def imports_of(importer: str, modules: dict[str, Path]) -> list[tuple[str, int, str | None]]:
    """(imported project module, line, name) for every import in `importer`'s source.

    name is the imported attribute for `from m import name` when name is not itself a submodule, else None.
    """
    found = []
    tree = ast.parse(modules[importer].read_text(), filename=str(modules[importer]))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found += [(m, node.lineno, None) for m in _with_parents(alias.name, modules)]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(node, importer, modules)
            found += [(m, node.lineno, None) for m in _with_parents(source, modules)]
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:
                    found.append((submodule, node.lineno, None))
                elif source in modules:
                    found.append((source, node.lineno, alias.name))
    return [(m, line, name) for m, line, name in found if m != importer]


def import_graph(modules: dict[str, Path]) -> dict[str, dict[str, int]]:
    """importer -> {imported project module: first line that imports it}."""
    graph: dict[str, dict[str, int]] = {}
    for importer in modules:
        edges = graph.setdefault(importer, {})
        for imported, line, _ in imports_of(importer, modules):
            edges.setdefault(imported, line)
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (as a closed path) per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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
            connect(node)
    return [_a_cycle_in(members, graph) for members in components]


def _a_cycle_in(members: list[str], graph: dict[str, dict[str, int]]) -> list[str]:
    """A shortest closed path through the first member, inside its strongly connected component."""
    start, inside = members[0], set(members)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node]):
                if nxt == start:
                    return paths[node] + [start]
                if nxt in inside and nxt not in paths:
                    paths[nxt] = paths[node] + [nxt]
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {members}")


def _describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:])) + f" -> {cycle[-1]}"


def test_the_finder_sees_a_cycle_behind_a_function_local_import():
    graph = {"a": {"b": 1}, "b": {"c": 3}, "c": {"a": 7}, "d": {"a": 2}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
    graph = import_graph(project_modules())
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(cycle, graph) for cycle in cycles)


def test_no_private_names_imported_across_modules():
    modules = project_modules()
    private = [f"{modules[importer].relative_to(ROOT)}:{line} imports {name} from {imported}"
               for importer in modules
               for imported, line, name in imports_of(importer, modules)
               if name and name.startswith("_") and not name.startswith("__")]
    assert not private, "shared names should be public:\n" + "\n".join(private)


def test_every_package_has_an_init_with_a_docstring():
    """A folder without __init__.py is a namespace package: left out of the wheel (packages.find) and unexplained."""
    for package in PACKAGES:
        for folder in [ROOT / package, *(p.parent for p in (ROOT / package).rglob("*.py"))]:
            init = folder / "__init__.py"
            assert init.exists(), f"{folder.relative_to(ROOT)} has no __init__.py"
            if package == "components":
                assert ast.get_docstring(ast.parse(init.read_text())), f"{init.relative_to(ROOT)}: say what the package is"


def test_no_phase_reaches_into_another_phases_step():
    """A step module is a phase's Ray wiring; what two phases share lives beside them (components/*.py,
    core/, data/) or in the owning phase's own module for it (e.g. classify/data.py), never in a step."""
    modules = project_modules()
    reaching = [f"{modules[importer].relative_to(ROOT)}:{line} imports {imported}"
                for importer in modules if importer.startswith("components.")
                for imported, line, _ in imports_of(importer, modules)
                if imported.endswith(".step") and imported.rsplit(".", 1)[0] != importer.rsplit(".", 1)[0]]
    assert not reaching, "\n".join(reaching)
