"""The rooms of the code base and the arrows between them (docs/architecture.md), checked on
the source: every import, at module level or inside a function, is read with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx
import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("storage", "topologies", "samplers", "dvae_q")
MAX_LINES = 400

# room -> the rooms it may import; `dvae_q` is the package itself (its lazy `fit`/`load_run`)
FLOOR = {"dvae_q", "dvae_q.errors", "dvae_q.progress", "dvae_q.logs"}
ALLOWED = {
    "storage": set(),
    "topologies": {"storage"},
    "samplers": {"topologies", "storage"},
    "dvae_q.model": {"samplers", "topologies", "storage"},
    "dvae_q.data": {"storage"},
    "dvae_q.evaluation": {"samplers", "dvae_q.model"},
    "dvae_q.training": {"samplers", "topologies", "storage", "dvae_q.model", "dvae_q.data",
                        "dvae_q.evaluation"},
    "dvae_q.run": {"samplers", "dvae_q.model", "dvae_q.data", "dvae_q.evaluation",
                   "dvae_q.training"},
    "dvae_q.table": {"samplers", "storage", "dvae_q.model", "dvae_q.training", "dvae_q.run"},
    "dvae_q.cli": {"samplers", "topologies", "storage", "dvae_q.model", "dvae_q.data",
                   "dvae_q.evaluation", "dvae_q.training", "dvae_q.run", "dvae_q.table"},
}


def _name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _imports(path: Path, module_level_only: bool = False) -> set[str]:
    """Our modules that `path` imports. `from pkg import sub` names the submodule only, as
    Python resolves it; `from pkg import name` names the package."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body if module_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names
                    if f"{node.module}.{a.name}" in MODULES}
            found |= subs
            if len(subs) < len(node.names):
                found.add(node.module)
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _room(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "dvae_q" or len(parts) == 1:
        return parts[0]
    return f"dvae_q.{parts[1]}"


def test_every_module_is_in_a_room_with_declared_arrows():
    rooms = {_room(m) for m in MODULES}
    assert rooms - FLOOR <= set(ALLOWED), sorted(rooms - FLOOR - set(ALLOWED))


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_only_down(module):
    room = _room(module)
    if room in FLOOR:  # the floor of dvae_q: errors, progress, logs, and the package's lazy API
        allowed = FLOOR | {"dvae_q.run"} if module == "dvae_q" else FLOOR
    else:
        allowed = ALLOWED[room] | {room} | (FLOOR if room.startswith("dvae_q") else set())
    wrong = sorted(t for t in _imports(MODULES[module]) if _room(t) not in allowed)
    assert not wrong, f"{module} ({room}) imports {wrong}, outside {sorted(allowed)}"


def test_no_import_cycle_at_module_level():
    graph = nx.DiGraph()
    for module, path in MODULES.items():
        graph.add_edges_from((module, t) for t in _imports(path, True)
                             if t in MODULES and t != module)
    assert list(nx.simple_cycles(graph)) == []


def test_topologies_have_no_import_cycle_even_inside_functions():
    graph = nx.DiGraph()
    for module, path in MODULES.items():
        if module.startswith("topologies"):
            graph.add_edges_from((module, t) for t in _imports(path) if t != module)
    assert list(nx.simple_cycles(graph)) == []


@pytest.mark.parametrize("package", ["dvae_q", "storage", "topologies", "samplers"])
def test_no_module_over_the_limit(package):
    long = {m: n for m, p in MODULES.items() if m.split(".")[0] == package
            and (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_tests_mirror_the_rooms():
    """A room's tests live in tests/<room>/ (dvae_q's floor and run API at the top)."""
    folders = {p.name for p in (REPO / "tests").iterdir()
               if p.is_dir() and any(p.glob("test_*.py"))}
    rooms = {r.split(".")[-1] for r in ALLOWED} - {"storage", "run"}
    assert rooms <= folders, sorted(rooms - folders)


def test_no_test_module_imports_another():
    """Shared reference helpers live in tests/references.py, so each room's tests run alone
    (`pytest tests/service`) as well as in the whole suite."""
    importers = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            if any(n.split(".")[0].startswith("test_") for n in names):
                importers.setdefault(str(path.relative_to(REPO)), []).extend(names)
    assert importers == {}
