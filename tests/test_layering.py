"""The package's layering: its import graph (every import statement, at any level: function-level
imports and ``if TYPE_CHECKING`` ones included) has no cycles, and no module is longer than
:data:`MAX_LINES` unless its docstring says why."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "regzoo"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


_NAMED_IMPORTS = ("import_module", "deprecated_module")


def _imported_by_name(node: ast.AST) -> set[str]:
    """Modules imported by a string: ``importlib.import_module("regzoo.x")``, a deprecation
    shim's targets, and the values of the package's lazy-API table ``_LAZY``."""
    strings: list[ast.AST] = []
    if isinstance(node, ast.Call) and ast.unparse(node.func).endswith(_NAMED_IMPORTS):
        strings = list(node.args)
    elif isinstance(node, ast.Assign | ast.AnnAssign) and isinstance(node.value, ast.Dict):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        if any(ast.unparse(t) == "_LAZY" for t in targets):
            strings = [v for v in node.value.values if v is not None]
    return {s.value for s in strings if isinstance(s, ast.Constant) and isinstance(s.value, str)}


def imports(path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``path`` imports, at any depth (``from pkg import submodule``
    is an edge to the submodule, not to the package's ``__init__``)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    stack: list[ast.AST] = [tree]
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)
    while stack:
        node = stack.pop()
        stack.extend(ast.iter_child_nodes(node))
        found.update(_imported_by_name(node))
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            # `from regzoo import regularizers` imports the submodule
            submodules = {f"{base}.{alias.name}" for alias in node.names} & modules
            found.update(submodules)
            if len(submodules) < len(node.names):  # names defined in `base` itself
                found.add(base)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {name: imports(path, modules) - {name} for name, path in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_cycles():
    graph = import_graph()
    # the graph is real: the CLI reaches the model, the model the objective
    assert "regzoo.objective" in graph["regzoo.registration_model"]
    assert "regzoo.training" in graph["regzoo"]  # the package's lazy API counts too
    assert "regzoo.registration_model" in graph["regzoo.refinement"]  # a TYPE_CHECKING import
    assert "regzoo.refinement" in graph["regzoo.refine"]  # a deprecation shim's target
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


MAX_LINES = 450


def _states_why_long(path: Path) -> bool:
    """The module docstring says why the module is long (a sentence naming its length)."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    return any(
        word in doc.lower() for word in ("lines because", "long because", "one file because")
    )


def test_the_size_rule_reads_the_docstring(tmp_path):
    long = tmp_path / "long.py"
    long.write_text('"""Kept whole: one file because its parts share a state machine."""\n')
    assert _states_why_long(long)
    long.write_text('"""A module."""\n')
    assert not _states_why_long(long)


def test_no_module_is_long_without_saying_why():
    too_long = {
        module_name(path): count
        for path in PACKAGE.rglob("*.py")
        if (count := len(path.read_text().splitlines())) > MAX_LINES and not _states_why_long(path)
    }
    assert not too_long, f"modules over {MAX_LINES} lines whose docstring says not why: {too_long}"
