"""The package's shape: no import cycle inside sorter/, and no long module without a reason.

Import cycles are found on the module import graph built with :mod:`ast` from every
``sorter/**/*.py``: each ``import`` and ``from ... import`` naming a sorter module is an edge,
wherever it stands (a function-level import is a runtime import too), except under
``if TYPE_CHECKING:`` (never executed).  ``from package import name`` is an edge to the
submodule when ``name`` is one, else to the package.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sorter"
LONG = 600
"""Lines above which a module's docstring must say why it is long (a sentence with "long" near "lines",
e.g. "Why this module is long (about 700 lines): ...")."""
_SAYS_WHY = re.compile(r"long.{0,80}lines|lines.{0,80}long", re.S | re.I)
IN_FLIGHT: dict[str, str] = {
    # modules being split by a change of their own; drop the entry when it lands
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> set[str]:
    """The sorter modules ``name`` imports at run time."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in MODULES and m != name}


def import_graph() -> dict[str, set[str]]:
    return {name: _imports(name, path) for name, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := dfs(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := dfs(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_relative_lazy_and_submodule_imports() -> None:
    graph = import_graph()
    assert "sorter.line.plc.protocol" in graph["sorter.line.plc.sim"]  # absolute, from a submodule
    assert "sorter.lanes" in graph["sorter"]  # relative, in a package's __init__
    assert "sorter.simulate.linec" in graph["sorter.simulate.run"]  # inside a function


def test_no_import_cycle_inside_sorter() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_a_long_module_says_why_it_is_long(name: str) -> None:
    path = MODULES[name]
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n")
    if lines <= LONG:
        return
    if name in IN_FLIGHT:
        pytest.skip(f"{name}: {IN_FLIGHT[name]}")
    doc = ast.get_docstring(ast.parse(text)) or ""
    assert _SAYS_WHY.search(doc), (
        f"{path.relative_to(ROOT.parent)} has {lines} lines (over {LONG}) and its docstring does not say "
        "'Why this module is long: ...'; split it, or write the reason at its top"
    )


def test_every_package_is_installed() -> None:
    """A plain `pip install .` installs only the packages pyproject.toml lists: a new subpackage
    missing there imports from a source tree (so the tests pass) and fails on the line PC."""
    import tomllib

    listed = set(tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT.parent).parts) for p in ROOT.rglob("__init__.py")}
    assert found - listed == set(), f"packages missing from [tool.setuptools] packages: {sorted(found - listed)}"
