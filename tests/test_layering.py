"""The shape of the code base (issue 15), read from the source with ``ast`` (nothing is imported):

* packages depend one way: ``infra`` <- ``preprocessing`` <- ``trainer`` <- ``serving`` <-
  ``pipeline`` | ``experiments`` <- ``cli`` (a package imports only those of the layers to its
  left: ``infra``, at the bottom, imports no project package; the TFX pipeline and the research
  protocols stand side by side and import nothing of each other; ``cli``, the ``cme-ser``
  command, imports them all and nothing imports it);
* no import cycles between project modules;
* test modules import no test module (shared helpers live in support modules such as
  ``tests/serving_support.py``, which hold no tests).

Every import counts, wherever it is written (module level, inside a function, under
``TYPE_CHECKING``): a function-level import is still a dependency, and still a cycle.

Violations that cannot be fixed yet are listed in ``ALLOWED_UPWARD_IMPORTS`` /
``ALLOWED_CYCLES``, each with the reason it is pending. An entry that no longer occurs fails the
test too, so the lists only ever shrink.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest
from imports_support import LAYERS, PACKAGES, ROOT, all_imports, imported_names, project_modules

TESTS = ROOT / "tests"

# (importing module, imported module) -> why it is still allowed. Remove an entry when its
# import is gone (the test fails until you do).
ALLOWED_UPWARD_IMPORTS: Dict[Tuple[str, str], str] = {}
# Import cycles still allowed, each as the sorted tuple of its modules -> why.
ALLOWED_CYCLES: Dict[Tuple[str, ...], str] = {}


# --- Reading imports --------------------------------------------------------------------------


def resolve(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The project module ``name`` refers to (the longest known prefix), or None."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph() -> Tuple[Dict[str, Set[str]], Dict[Tuple[str, str], int]]:
    """(module -> project modules it imports, (importer, imported) -> first line)."""
    modules = project_modules()
    graph: Dict[str, Set[str]] = {name: set() for name in modules}
    lines: Dict[Tuple[str, str], int] = {}
    for name, _, imported, line in all_imports():
        target = resolve(imported, modules)
        if target is not None and target != name:
            graph[name].add(target)
            lines.setdefault((name, target), line)
    return graph, lines


def package(module: str) -> str:
    return module.split(".")[0]


def layer(module: str) -> int:
    return next(i for i, packages in enumerate(LAYERS) if package(module) in packages)


def upward_imports(graph: Dict[str, Set[str]]) -> Set[Tuple[str, str]]:
    """Imports of a package in a higher layer, or of another package in the same layer."""
    return {
        (source, target)
        for source, targets in graph.items()
        for target in targets
        if layer(target) > layer(source)
        or (layer(target) == layer(source) and package(target) != package(source))
    }


def order() -> str:
    return " <- ".join(" | ".join(packages) for packages in LAYERS)


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle (as a path a -> ... -> a) per strongly connected component of more than one
    module (Tarjan's algorithm, then a DFS inside the component for a concrete cycle)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
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

    found = []
    for component in components:
        members = set(component)
        start = component[0]
        path, seen = [start], {start}

        def walk(node: str) -> bool:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path.append(start)
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    path.append(nxt)
                    if walk(nxt):
                        return True
                    path.pop()
            return False

        walk(start)
        found.append(path)
    return found


# --- The rules ----------------------------------------------------------------------------------


def test_the_import_graph_is_read():
    """Guards the reader itself: known edges of the code base are seen."""
    graph, _ = import_graph()
    assert "trainer.config" in graph["trainer.model"]
    assert "serving.fast_json" in graph["serving.server"]  # `from serving import fast_json`
    assert "preprocessing.corpora" in graph["trainer.config"]
    assert "serving" not in graph["serving.server"]
    assert "infra.process_exit" in graph["serving.gunicorn_app"]


def test_packages_import_only_packages_to_their_left():
    graph, lines = import_graph()
    found = upward_imports(graph)
    new = sorted(found - set(ALLOWED_UPWARD_IMPORTS))
    gone = sorted(set(ALLOWED_UPWARD_IMPORTS) - found)
    problems = [
        f"{source} (line {lines[source, target]}) imports {target}: the order is "
        f"{order()}, a package imports only those of the layers to its left"
        for source, target in new
    ]
    problems += [
        f"allowlisted {source} -> {target} no longer occurs: remove it from ALLOWED_UPWARD_IMPORTS"
        for source, target in gone
    ]
    assert not problems, "\n".join(problems)


def test_no_import_cycles_between_modules():
    graph, lines = import_graph()
    found = {tuple(sorted(set(path))): path for path in cycles(graph)}
    problems = []
    for members, path in sorted(found.items()):
        if members not in ALLOWED_CYCLES:
            steps = [f"{a} (line {lines[a, b]}) -> {b}" for a, b in zip(path, path[1:])]
            problems.append("import cycle: " + "; ".join(steps))
    problems += [
        f"allowlisted cycle {' <-> '.join(members)} no longer occurs: remove it from ALLOWED_CYCLES"
        for members in sorted(set(ALLOWED_CYCLES) - set(found))
    ]
    assert not problems, "\n".join(problems)


def test_every_installed_package_has_a_layer():
    """A package outside ``LAYERS`` would escape both checks."""
    import tomli

    pyproject = tomli.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert sorted(pyproject["tool"]["setuptools"]["packages"]) == sorted(PACKAGES)
    assert len(set(PACKAGES)) == len(PACKAGES)


def test_the_checks_catch_what_they_are_for():
    """The two checks on a made-up graph: an upward import, a sideways one (between the two
    packages of one layer), and a three-module cycle."""
    graph = {
        "preprocessing.a": {"trainer.b"},
        "trainer.b": {"trainer.c"},
        "trainer.c": {"trainer.d"},
        "trainer.d": {"trainer.b"},
        "serving.e": {"trainer.b"},
        "pipeline.f": {"experiments.g", "serving.e"},
        "experiments.g": {"trainer.b"},
        "cli.h": {"pipeline.f", "experiments.g"},
    }
    assert upward_imports(graph) == {
        ("preprocessing.a", "trainer.b"),
        ("pipeline.f", "experiments.g"),
    }
    assert cycles(graph) == [["trainer.b", "trainer.c", "trainer.d", "trainer.b"]]


def test_module_level_function_level_and_relative_imports_all_count():
    source = (
        "import serving.server\nfrom . import json_tensors\nfrom .status import x\n"
        "def f():\n    from pipeline import runner\n"
    )
    modules = project_modules()
    names = {
        resolve(name, modules)
        for name, _ in imported_names(ast.parse(source), "serving.fast_json", False)
    }
    assert names == {"serving.server", "serving.json_tensors", "serving.status", "pipeline.runner"}


# --- Tests --------------------------------------------------------------------------------------


def is_test_module(path: Path) -> bool:
    return path.name.startswith("test_")


@pytest.mark.parametrize("path", sorted(TESTS.glob("*.py")), ids=lambda p: p.name)
def test_no_test_module_imports_a_test_module(path):
    """Shared helpers go in a support module (or a conftest fixture), never in a test module:
    importing a test module runs its tests' module-level code and hides what is shared."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    bad = [
        f"{path.name}:{line} imports {name}"
        for name, line in imported_names(tree, "", False)
        if name.split(".")[0].startswith("test_")
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "path", sorted(p for p in TESTS.glob("*.py") if not is_test_module(p)), ids=lambda p: p.name
)
def test_support_modules_hold_no_tests(path):
    """A test in a module pytest does not collect would never run."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    tests = [
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
        and node.name.lower().startswith("test")
    ]
    assert not tests, f"{path.name} is not collected by pytest but defines {tests}"
