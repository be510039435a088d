"""Draw adtr_edge's imports as arrows and report what a maintainer trips on.

    python scripts/import_graph.py [--json]

Facts: module-level import cycles (every ``import`` counts, also the ones inside functions, because
a lazy import is still a dependency), arrows that point up the floors of docs/ARCHITECTURE.md
(images -> model -> graphs -> engines -> runtime -> sinks), and the largest modules.
tests/test_architecture.py holds the same facts as assertions.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "adtr_edge"

# Floors, low to high. A module may import its own floor and any floor below it. Commands sit on
# top: a ``cli`` module registers commands of its area and may call anything below. A room is a
# top-level module or package; a dotted room (``evaluation.metrics``) is one module of a package
# whose modules sit on different floors: the evaluation package holds contracts that the training
# and the runtime read (metrics, the bootstrap, overlays) and the evaluation of a checkpoint, which
# reads the training side. The package's own __init__ imports nothing.
FLOORS = {
    "base": ("errors", "fileio", "progress", "version", "config_file", "__init__"),
    "contracts": ("preprocessing", "postprocessing", "metadata", "config", "folder", "cuda", "frame_quality",
                  "evaluation", "evaluation.metrics", "evaluation.significance", "evaluation.visualize"),
    "data": ("data",),
    "model": ("model",),
    "train": ("train", "evaluation.evaluate", "evaluation.plots", "evaluation.baselines", "evaluation.robustness"),
    "graphs": ("export",),
    "engines": ("engine", "int8"),
    "runtime": ("runtime",),
    "bench": ("bench",),
    "commands": ("cli", "demo", "commands", "finetune"),
}
RANK = {room: i for i, rooms in enumerate(FLOORS.values()) for room in rooms}
COMMAND_MODULES = ("cli",)  # area modules that only register commands


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for f in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _resolve(name: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = name.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the adtr_edge modules it imports (anywhere in its body)."""
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_pkg, node)
                # ``from . import x`` names a module when x is one, else something in the package
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            for t in targets:
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t.startswith(PACKAGE) and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def room(module: str) -> str:
    parts = module.split(".")[1:] or ["__init__"]
    if parts[-1] in COMMAND_MODULES or parts[0] in FLOORS["commands"]:
        return "commands"
    for n in range(len(parts), 1, -1):  # the longest dotted room that names it
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    return parts[0]


def floor(module: str) -> int:
    r = room(module)
    return len(FLOORS) - 1 if r == "commands" else RANK[r]


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, deps in graph.items() for b in deps if floor(b) > floor(a))


def room_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    rooms: dict[str, set[str]] = {}
    for a, deps in graph.items():
        rooms.setdefault(room(a), set()).update(room(b) for b in deps if room(b) != room(a))
    return cycles(rooms)


def largest(mods: dict[str, Path], n: int = 8) -> list[tuple[str, int]]:
    sizes = [(m, len(p.read_text().splitlines())) for m, p in mods.items()]
    return sorted(sizes, key=lambda x: -x[1])[:n]


def facts(root: Path = ROOT) -> dict:
    mods = modules(root)
    graph = imports(mods)
    return {
        "modules": len(mods),
        "arrows": sum(len(d) for d in graph.values()),
        "cycles": cycles(graph),
        "room_cycles": room_cycles(graph),
        "upward": [f"{a} -> {b}" for a, b in upward(graph)],
        "largest": largest(mods),
    }


def main(argv: list[str]) -> int:
    f = facts()
    if "--json" in argv:
        print(json.dumps(f, indent=2))
        return 0
    print(f"{f['modules']} modules, {f['arrows']} arrows")
    print(f"module cycles ({len(f['cycles'])}):")
    for c in f["cycles"]:
        print("  " + " <-> ".join(c))
    print(f"room cycles ({len(f['room_cycles'])}):")
    for c in f["room_cycles"]:
        print("  " + " <-> ".join(c))
    print(f"upward arrows ({len(f['upward'])}):")
    for u in f["upward"]:
        print("  " + u)
    print("largest modules:")
    for m, n in f["largest"]:
        print(f"  {n:5d}  {m}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
