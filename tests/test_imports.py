"""Imports point one way (DESIGN.md): services -> memory -> encoders, and streamer alone; streamer, encoders and
memory never import services, encoders and streamer never memory, streamer never encoders; benchmarks and tests
import the project and `testkit` (what they share), never the other way, and benchmarks never import tests; and
no module imports itself through others (no import circle), counting every import: at module level, inside
functions, and under TYPE_CHECKING."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("streamer", "encoders", "memory", "services", "testkit")
FORBIDDEN = {  # importer -> what it must never import
    "streamer": {"encoders", "memory", "services", "testkit", "tests", "benchmarks"},
    "encoders": {"memory", "services", "testkit", "tests", "benchmarks"},
    "memory": {"services", "testkit", "tests", "benchmarks"},
    "services": {"testkit", "tests", "benchmarks"},
    "testkit": {"tests", "benchmarks"},  # what tests and benchmarks share
    "benchmarks": {"tests"},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    out = {}
    for top in PACKAGES + ("benchmarks",):
        for p in (REPO / top).rglob("*.py"):
            out[module_name(p)] = p
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every project module `path` imports (the longest known prefix of each imported name)."""
    tree = ast.parse(path.read_text(), str(path))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(dotted: str) -> None:
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            cand = ".".join(parts[:i])
            if cand in known or cand.split(".")[0] in ("tests",):
                found.add(cand)
                return

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                full = f"{mod}.{a.name}"
                if full in known:
                    add(full)
                else:
                    add(mod)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = project_modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    found = cycles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_point_one_way():
    wrong = []
    for name, deps in graph().items():
        top = name.split(".")[0]
        for d in sorted(deps):
            if d.split(".")[0] in FORBIDDEN.get(top, ()):
                wrong.append(f"{name} imports {d}")
    assert not wrong, "\n".join(wrong)
