"""The house holds: no import cycles, a handful of commented function-level imports, layers kept.

The layers themselves are import-linter contracts in pyproject.toml (``lint-imports``,
run by .ci/run); these tests check what import-linter does not: cycles between any two
modules (grimp), imports hidden inside functions, and that the enqueue port and the
worker agree on every actor's queue.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

from mailer.queue import port
from mailer.settings import PROJECT_ROOT

PACKAGE = PROJECT_ROOT / "mailer"
#: Function-level imports allowed in mailer/, each for a reason written beside it
#: (lazy public API, Prometheus' multiprocess directory, heavy optional tools).
MAX_FUNCTION_LEVEL_IMPORTS = 4


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
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
                found.append(sorted(component))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_module_of_mailer_is_in_an_import_cycle():
    # Given the import graph of mailer/, function-level imports included (grimp reads them all)
    graph = grimp.build_graph("mailer")
    # Then no two modules import each other, directly or round a circle
    assert _cycles(graph) == []


def _function_level_imports() -> list[tuple[str, int, str]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for inner in ast.walk(node):
                    if isinstance(inner, (ast.Import, ast.ImportFrom)):
                        found.append((str(path.relative_to(PROJECT_ROOT)), inner.lineno, lines[inner.lineno - 1]))
    return sorted(set(found))


def test_function_level_imports_are_a_handful_and_each_says_why():
    # Given every import made inside a function in mailer/
    found = _function_level_imports()
    # Then there are few, and each has a comment on its line or the line above saying why
    assert len(found) <= MAX_FUNCTION_LEVEL_IMPORTS, found
    uncommented = []
    for rel, lineno, line in found:
        lines = (PROJECT_ROOT / rel).read_text(encoding="utf-8").splitlines()
        before = lines[lineno - 2].strip() if lineno >= 2 else ""
        if "#" not in line and not before.startswith("#"):
            uncommented.append(f"{rel}:{lineno}: {line.strip()}")
    assert uncommented == []


def test_the_port_and_the_worker_agree_on_every_actors_queue():
    # Given the actors the worker declares
    from mailer.worker import actors

    declared = {a.actor_name: a.queue_name for a in actors.ACTORS}
    # Then the port names exactly those actors, each with the queue it really consumes
    assert declared == port.ACTOR_QUEUES


def test_the_layer_contracts_are_kept():
    # Given the import-linter contracts in pyproject.toml
    lint_imports = Path(sys.executable).parent / "lint-imports"
    res = subprocess.run([str(lint_imports)], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    # Then every contract is kept
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "broken" not in res.stdout.lower().replace("0 broken", "")
