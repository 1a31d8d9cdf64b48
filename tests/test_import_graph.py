"""The package's import graph: no cycle, imports inside functions included, and the Triton
kernels (kernels/, installed as fastaudio.kernels) import nothing from fastaudio.

A cycle hidden behind an import inside a function still ties two modules together (neither can
change or be tested alone); a kernel that imports the layer above it cannot be reused without it.
Edges are read from the source (ast), so a lazy import counts like a top-level one; the implicit
import of a parent package (``fastaudio/__init__``) is not an edge.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"fastaudio": os.path.join(ROOT, "fastaudio"), "fastaudio.kernels": os.path.join(ROOT, "kernels")}


def module_files() -> Dict[str, str]:
    """Module name → file, for every .py under fastaudio/ and kernels/."""
    out = {}
    for pkg, folder in PACKAGES.items():
        for dirpath, dirnames, files in os.walk(folder):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            rel = os.path.relpath(dirpath, folder)
            parts = [] if rel == "." else rel.split(os.sep)
            if pkg == "fastaudio" and parts[:1] == ["kernels"]:
                continue
            for f in files:
                if not f.endswith(".py"):
                    continue
                name = ".".join([pkg] + parts + ([] if f == "__init__.py" else [f[:-3]]))
                out[name] = os.path.join(dirpath, f)
    return out


def _resolve(module: str, is_package: bool, level: int, target: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


MISSING: Set[str] = set()  # package-internal imports naming no module (filled by import_edges)


def import_edges(modules: Dict[str, str]) -> Dict[str, Set[str]]:
    edges: Dict[str, Set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.endswith("__init__.py")
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        for node in ast.walk(tree):
            targets: List[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node.level, node.module) if node.level else node.module
                if base not in modules:
                    if base.startswith("fastaudio"):
                        MISSING.add(f"{name}: {base}")
                    continue
                # `from pkg import sub` imports the module pkg.sub when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for t in targets:
                while t and t not in modules:  # `import fastaudio.nn.attention as x` → that module
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges[name].add(t)
    return edges


def find_cycles(edges: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_walker_sees_imports_inside_functions_and_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(edges) == [["a", "b", "c"]]
    mods = module_files()
    graph = import_edges(mods)
    # fastaudio/cli's generate command imports the pipeline inside a function
    assert any("fastaudio.pipeline" in deps for m, deps in graph.items() if m.startswith("fastaudio.cli"))


def test_no_import_cycle_in_the_package():
    cycles = find_cycles(import_edges(module_files()))
    assert not cycles, "import cycles (imports inside functions count): " + "; ".join(
        " <-> ".join(c) for c in cycles)


def test_kernels_import_nothing_from_fastaudio():
    mods = module_files()
    graph = import_edges(mods)
    bad = {m: sorted(d for d in deps if not d.startswith("fastaudio.kernels"))
           for m, deps in graph.items() if m.startswith("fastaudio.kernels")}
    bad = {m: d for m, d in bad.items() if d}
    assert not bad, f"kernels/ must not import fastaudio: {bad}"


def test_every_internal_import_names_a_module():
    import_edges(module_files())
    assert not MISSING, f"imports of modules that do not exist: {sorted(MISSING)}"
