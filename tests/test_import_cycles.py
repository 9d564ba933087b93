"""No import cycles in the kit or in any service, counting imports inside functions too (an import
moved into a function to dodge a cycle hides it; it does not remove it). Imports only for type
checking (`if TYPE_CHECKING:`) are not followed: they never run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _packages() -> dict[str, Path]:
    """Top-level import roots of the workspace's own code: the kit and every service."""
    roots = {"kizuna.kit": ROOT / "libs/kit/src/kizuna/kit"}
    for src in sorted((ROOT / "services").glob("*/src/*/__init__.py")):
        roots[src.parent.name] = src.parent
    return roots


def _modules(package: str, directory: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(directory.rglob("*.py")):
        parts = list(path.relative_to(directory).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join([package, *parts])] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import | ast.ImportFrom):
                found.append(child)
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the workspace modules it imports (anywhere in its code)."""
    modules: dict[str, Path] = {}
    for package, directory in _packages().items():
        modules.update(_modules(package, directory))
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from a import b` imports the module a.b when there is one, else a name from a.
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            for target in targets:
                # `import a.b.c` runs a.b.c; the nearest workspace module it names is the edge.
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def test_the_graph_sees_imports_inside_functions_and_relative_ones() -> None:
    graph = import_graph()
    # Both ends are real modules, so the checker below cannot pass by seeing nothing.
    assert "kizuna.kit.service" in graph and "points.service" in graph
    assert "kizuna.kit.settings" in graph["kizuna.kit.service"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", sorted(_packages()))
def test_no_import_cycles(package: str) -> None:
    found = [group for group in cycles(import_graph()) if any(m.split(".")[0] == package.split(".")[0] for m in group)]
    assert found == [], "import cycles (break them by moving the shared part into a module both import):\n" + "\n".join(
        " <-> ".join(group) for group in found
    )
