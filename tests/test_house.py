"""The layout rules of docs/development.md, checked on the source (issue 20): no import circles in dkdm/, students/
below distill/, short files, a thin cli.py."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "dkdm"


def module_names() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(PKG.parent).with_suffix("").parts)
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> dkdm modules it imports. Every import counts, function-local ones too: a deferred import that
    closes a circle still ties the two modules into one (and breaks when either is split)."""
    mods = module_names()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, (path, is_pkg) in mods.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                graph[mod].update(a.name for a in node.names if a.name in mods)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    here = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    here = here[:len(here) - (node.level - 1)]
                    base = ".".join(here + ([node.module] if node.module else []))
                for a in node.names:  # `from . import x` imports the module dkdm.x; `from .m import f` the module m
                    target = f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base
                    if target in mods and target != mod:
                        graph[mod].add(target)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while not comp or comp[-1] != v:
                comp.append(stack.pop())
                on.discard(comp[-1])
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_walk_sees_a_circle():
    """The check itself: a planted a -> b -> a is found, a chain is not."""
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    graph = import_graph()
    assert "dkdm.cache.layout" in graph["dkdm.cache.manifest"] and "dkdm.teacher" in graph["dkdm.latent"]


def test_no_import_circles_in_dkdm():
    assert circles(import_graph()) == []


def test_students_import_nothing_from_distill():
    up = {(m, t) for m, ts in import_graph().items() if m.startswith("dkdm.students") for t in ts
          if t.startswith("dkdm.distill")}
    assert up == set()


def test_files_are_short_and_the_cli_is_thin():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py") if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
    assert len((PKG / "cli.py").read_text().splitlines()) < 150


def test_every_module_imports():
    """A name moved or removed in one module breaks its importers at import time: catch it here, not in a command."""
    import importlib

    for mod in sorted(module_names()):
        importlib.import_module(mod)
