"""The import graph of ``bench/`` (every module parsed with ast: top-level, relative and in-function imports) has no
cycles and no edge from a lower floor to a higher one (imports point down); ``bench/report`` reads only the results
row module and the metric spec. The floor table below is the architecture: a new module gets a floor here or the
test fails."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "bench"

# unit (a package under bench/ or a top-level module) -> floor; imports may only point to the same or a lower floor
FLOORS = {
    "bench": 0, "bench.schema": 0, "bench.utils": 0, "bench.registry": 0, "bench.env": 0, "bench.images": 0,
    "bench.results": 0, "bench.metric_spec": 0, "bench.ranks": 0,
    "bench.data": 1, "bench.models": 1, "bench.evaluators": 1, "bench.schedule": 1, "bench.tracking": 1,
    "bench.artifacts": 1, "bench.keys": 1,
    "bench.training": 2, "bench.sampling": 2, "bench.metrics": 2,
    "bench.distill": 3, "bench.adapt": 3,
    "bench.validate": 4, "bench.distributed": 4, "bench.subjects": 4, "bench.tasks": 4,
    "bench.cell": 5, "bench.preflight": 5, "bench.summary": 5,
    "bench.run": 6,
    "bench.report": 6,
    "bench.evaluators.cli": 6,  # the bench-evaluator console entry: lives with its package, sits on the entry floor
    "bench.perf": 6, "bench.wandb_sweep": 6,  # the bench-perf and bench-wandb-sweep console entries
    "bench.rescore": 6,  # the bench-rescore console entry: scores kept samples through bench.cell
}
ENTRY_MODULES = {"bench.evaluators.cli"}  # units of their own (not part of their package's unit)
# report/ reads rows (through the results schema) and what their metric columns mean, nothing else
REPORT_MAY_IMPORT = {"bench.report", "bench.results", "bench.metric_spec"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """bench modules imported anywhere in the file (inside functions too), relative imports resolved."""
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the sub-module when there is one
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] == "bench" and t != name:
                out.add(t)
    return out


def unit(mod: str) -> str:
    if mod in ENTRY_MODULES:
        return mod
    parts = mod.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else mod


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(m, p, set(mods)) for m, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    colour, stack = {}, []

    def visit(n):
        colour[n] = 1
        stack.append(n)
        for d in sorted(g.get(n, ())):
            if colour.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in colour:
                c = visit(d)
                if c:
                    return c
        stack.pop()
        colour[n] = 2
        return None

    for n in sorted(g):
        if n not in colour:
            c = visit(n)
            if c:
                return c
    return None


def test_every_unit_has_a_floor():
    missing = sorted({unit(m) for m in modules()} - set(FLOORS))
    assert not missing, f"give these a floor in FLOORS: {missing}"


def test_no_module_cycles():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()))


def test_no_package_cycles():
    g: dict[str, set[str]] = {}
    for m, deps in graph().items():
        g.setdefault(unit(m), set()).update(unit(d) for d in deps if unit(d) != unit(m))
    cycle = find_cycle(g)
    assert cycle is None, " -> ".join(cycle)


def test_imports_point_down():
    up = sorted(f"{m} -> {d}" for m, deps in graph().items() for d in deps
                if FLOORS[unit(d)] > FLOORS[unit(m)])
    assert not up, "upward imports:\n" + "\n".join(up)


def test_report_reads_only_rows():
    bad = sorted(f"{m} -> {d}" for m, deps in graph().items() if unit(m) == "bench.report"
                 for d in deps if unit(d) not in REPORT_MAY_IMPORT)
    assert not bad, "\n".join(bad)
    assert not [m for m, deps in graph().items() if unit(m) != "bench.report" and any(unit(d) == "bench.report"
                                                                                       for d in deps)]


def test_the_checker_sees_what_it_must():
    """The parser itself: relative, in-function and `from pkg import submodule` imports are edges."""
    g = graph()
    assert "bench.schema" in g["bench.validate"]
    assert "bench.training.objectives" in g["bench.training"]  # `from . import objectives`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("mod", sorted(modules()))
def test_function_level_imports_are_few(mod):
    """Imports sit at the top of a module; the few lazy ones (optional heavy libraries) say why in a comment."""
    path = modules()[mod]
    src = path.read_text().splitlines()
    for fn in ast.walk(ast.parse("\n".join(src))):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    line = src[node.lineno - 1]
                    prev = src[node.lineno - 2] if node.lineno > 1 else ""
                    assert "lazy:" in line or "lazy:" in prev, f"{path}:{node.lineno}: {line.strip()}"
