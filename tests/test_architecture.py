"""The package's import graph: no circle between modules, and method packages never import the layers above.

Run: ``python -m pytest tests/test_architecture.py`` (reads the source with ``ast``, imports nothing).

Every ``import`` / ``from ... import`` statement counts, at module level and inside functions (a lazy import is
still a dependency), except those under ``if TYPE_CHECKING:`` (never executed). ``from traitlens.x import y`` is an
edge to the module ``traitlens.x.y`` when that is a module, else to ``traitlens.x``. Importing ``traitlens.a.b`` also
runs ``traitlens/a/__init__.py``, but that is not counted as an edge by itself: a package ``__init__`` importing its
submodules is a circle only if a submodule imports the package back (``from traitlens.a import name``).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

SRC = Path(__file__).resolve().parents[1] / "src"

# Method packages hold tensor-in, tensor-out methods: they never import the layers built on top of them.
METHOD_PACKAGES = ("models", "explain", "segment", "calibrate", "compbench", "atlas", "data", "backbones", "engine")
UPPER_LAYERS = ("studies", "cli", "runs", "report", "app")


def module_files(src: Path = SRC) -> Dict[str, Path]:
    """``{"traitlens.engine.train": path, "traitlens.engine": path/__init__.py, ...}``."""
    out = {}
    for path in sorted((src / "traitlens").rglob("*.py")):
        parts = list(path.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node, at any depth, outside ``if TYPE_CHECKING:`` blocks."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def imports_of(module: str, path: Path, modules: Set[str]) -> Set[str]:
    """The ``traitlens.*`` modules that ``module`` (at ``path``) imports, by the rules of the module docstring."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out: Set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "traitlens")
            continue
        if node.level:  # relative: resolve against this module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            base_parts = package[:len(package) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base.split(".")[0] != "traitlens":
            continue
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            out.add(sub if sub in modules else base)
    out.discard(module)
    return {m for m in out if m in modules}  # a name of no module is a broken import, which other tests catch


def import_graph(src: Path = SRC) -> Dict[str, Set[str]]:
    files = module_files(src)
    names = set(files)
    return {m: imports_of(m, p, names) for m, p in files.items()}


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One circle ``[a, b, ..., a]`` for every strongly connected component of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    on_stack: Set[str] = set()
    stack: List[str] = []
    components: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # recursion depth is bounded by the package's ~150 modules
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_circle_in(graph, set(c)) for c in components]


def _circle_in(graph: Dict[str, Set[str]], component: Set[str]) -> List[str]:
    """A shortest circle through the component's first module, found by breadth-first search inside it."""
    start = min(component)
    parent: Dict[str, Optional[str]] = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return path[::-1] + [start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no circle found in component {sorted(component)}")


def layer_violations(graph: Dict[str, Set[str]]) -> List[Tuple[str, str]]:
    def area(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""

    return sorted((m, dep) for m, deps in graph.items() if area(m) in METHOD_PACKAGES
                  for dep in deps if area(dep) in UPPER_LAYERS)


# ------------------------------------------------------------------------------------------------- tests


def test_the_package_has_no_import_circle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_method_packages_never_import_studies_cli_runs_or_report():
    found = layer_violations(import_graph())
    assert not found, "method packages importing upper layers:\n" + "\n".join(f"{m} -> {d}" for m, d in found)


def test_the_checker_finds_circles_and_resolves_imports(tmp_path):
    pkg = tmp_path / "traitlens"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("from traitlens.a import b\n")  # package imports its submodule: fine
    (pkg / "a" / "b.py").write_text("def f():\n    from traitlens.c import g\n")  # lazy import counts
    (pkg / "a" / "d.py").write_text("from . import b\nfrom .b import f\n")
    (pkg / "c.py").write_text("from traitlens.a import name\ndef g():\n    pass\n")  # name, not a module: edge to a
    graph = import_graph(tmp_path)
    assert graph["traitlens.a"] == {"traitlens.a.b"}
    assert graph["traitlens.a.b"] == {"traitlens.c"}
    assert graph["traitlens.a.d"] == {"traitlens.a.b"}
    assert graph["traitlens.c"] == {"traitlens.a"}
    assert find_cycles(graph) == [["traitlens.a", "traitlens.a.b", "traitlens.c", "traitlens.a"]]
    (pkg / "c.py").write_text("if TYPE_CHECKING:\n    from traitlens.a import name\n")
    assert find_cycles(import_graph(tmp_path)) == []
