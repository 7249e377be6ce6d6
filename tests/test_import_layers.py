"""The package's import layers (``.importlinter``, checked by ``lint-imports``) and no import cycle between its
modules (function-local imports included)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Set

import grimp

from helpers import REPO

PACKAGE = "swift_coord_plugin"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` with ``root`` as working directory: it reads ``root/.importlinter`` and imports the
    package from ``root`` (the working directory comes first on its path)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    return subprocess.run([str(LINT_IMPORTS), "--no-logo", "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=120)


def test_layers_kept():
    proc = _lint_imports(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 kept, 0 broken" in proc.stdout


def test_upward_import_is_refused(tmp_path):
    shutil.copytree(REPO / PACKAGE, tmp_path / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    low = tmp_path / PACKAGE / "core" / "moe.py"
    lines = low.read_text(encoding="utf-8").splitlines()
    low.write_text("\n".join(lines + ["from ..cli import evaluate  # noqa: E402,F401"]) + "\n", encoding="utf-8")
    proc = _lint_imports(tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "swift_coord_plugin.core is not allowed to import swift_coord_plugin.cli" in out
    assert f"swift_coord_plugin.core.moe -> swift_coord_plugin.cli.evaluate (l.{len(lines) + 1})" in out


def _cycles(graph, modules: Set[str]) -> List[List[str]]:
    """Strongly connected components of two or more modules (Tarjan, iterative)."""
    adj: Dict[str, List[str]] = {m: sorted(d for d in graph.find_modules_directly_imported_by(m) if d in modules)
                                 for m in modules}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(adj[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(adj[w])))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    scc = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        scc.append(w)
                        if w == v:
                            break
                    if len(scc) > 1:
                        found.append(sorted(scc))
    return found


def test_no_import_cycle():
    import swift_coord_plugin

    assert Path(swift_coord_plugin.__file__).resolve().parent == REPO / PACKAGE
    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    modules = {m for m in graph.modules if m == PACKAGE or m.startswith(PACKAGE + ".")}
    cycles = _cycles(graph, modules)
    described = []
    for scc in cycles:
        edges = [f"{a} -> {b} (l.{','.join(str(d['line_number']) for d in graph.get_import_details(importer=a, imported=b))})"
                 for a in scc for b in scc if graph.direct_import_exists(importer=a, imported=b)]
        described.append("; ".join(edges))
    assert not cycles, "import cycles: " + " | ".join(described)


def test_cycle_finder_sees_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph, set(graph.modules)) == [["p.a", "p.b", "p.c"]]
