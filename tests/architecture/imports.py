"""The project's import graph, read with `ast` (nothing is imported), and the layer rules over it.

Each module becomes a node named by its dotted path; an edge says "this module imports that one" —
at module level or inside a function (a lazy import is still a dependency), but not under
`if TYPE_CHECKING:` (those never run). `from pkg import name` points at `pkg.name` when that is a
module of the project, else at `pkg`. Third-party imports keep their top-level name (`fastapi`).
"""

from __future__ import annotations

import ast
import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

Graph = Mapping[str, frozenset[str]]


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def build_graph(root: Path, packages: Iterable[str]) -> dict[str, frozenset[str]]:
    files = {module_name(root, p): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    known = set(files)
    graph: dict[str, frozenset[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets: set[str] = set()
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                targets.update(_resolve(alias.name, known) for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.add(sub if sub in known else _resolve(base, known))
        targets.discard(name)
        graph[name] = frozenset(targets)
    return graph


def _resolve(dotted: str, known: set[str]) -> str:
    """The longest known module prefix of `dotted`, else its top-level name (a third-party import)."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in known:
            return candidate
    return parts[0]


def within(module: str, *prefixes: str) -> bool:
    """True when `module` is one of `prefixes` or inside one of them (package prefixes)."""
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@dataclasses.dataclass(frozen=True)
class Rule:
    """A layer rule: `forbidden(src, dst)` says whether the edge src -> dst breaks it."""

    name: str
    forbidden: Callable[[str, str], bool]

    def violations(self, graph: Graph) -> list[tuple[str, str]]:
        return sorted((src, dst) for src, dsts in graph.items() for dst in dsts if self.forbidden(src, dst))


def cycles(graph: Graph) -> list[list[str]]:
    """Every import cycle: strongly connected components of two or more modules (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def enter(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)

    for start in sorted(graph):
        if start in index:
            continue
        enter(start)
        # An explicit work stack instead of recursion: depth must not depend on the interpreter.
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        while work:
            node, children = work[-1]
            child = next((c for c in children if c in graph), None)
            if child is not None:
                if child not in index:
                    enter(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
