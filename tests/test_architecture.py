"""The architecture's rules, checked on the source (docs/architecture.md states them):

- no import cycles between modules of ``src/microparade`` (imports inside functions included);
- the layers: nothing imports the CLI; the engine imports no launcher, stage or model, and of
  ``slurm/`` only ``slurm.query`` (a leaf: the one place that asks Slurm about jobs); ``slurm/``
  imports no stage; a stage package imports no other stage package except the chunks contract;
- no function longer than 80 lines, unless its docstring calls it a vectorised kernel;
- ruff (lint and format) and mypy are clean; tests never edit ``sys.path``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

SRC = ROOT / "src"
PACKAGE = SRC / "microparade"
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (imports for annotations only, never run)."""
    out: list[ast.AST] = []
    todo = [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
    return out


def _imports(path: Path, known: set[str]) -> set[str]:
    """microparade modules that ``path`` imports when it runs (a name imported from a package
    counts as its submodule when one exists: ``from . import ops``)."""
    module, tree = _module_name(path), ast.parse(path.read_text())
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, path.name == "__init__.py", node)
            subs = {f"{target}.{a.name}" for a in node.names} & known
            found.update(subs or {target})
    return {m for m in found if m in known and m != module}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    known = {_module_name(p) for p in files}
    return {_module_name(p): _imports(p, known) for p in files}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_the_checker_skips_annotation_only_imports(tmp_path):
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n    import b\n")
    names = {a.name for n in _runtime_nodes(tree) if isinstance(n, ast.Import) for a in n.names}
    assert names == {"b"}


def test_the_checker_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles(graph):
    assert len(graph) > 40, "the source was not found"
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def _violations(
    graph: dict[str, set[str]], importer: str, forbidden: tuple[str, ...], allowed: tuple[str, ...] = ()
) -> list[str]:
    def under(m: str, prefix: str) -> bool:
        return m == prefix or m.startswith(prefix + ".")

    return [
        f"{m} imports {d}"
        for m, deps in graph.items()
        if under(m, importer)
        for d in deps
        if any(under(d, f) for f in forbidden) and d not in allowed
    ]


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("microparade.errors", ("microparade",)),
        ("microparade.engine", ("microparade.slurm", "microparade.stages", "microparade.model", "microparade.entry")),
        ("microparade.compute", ("microparade.engine", "microparade.slurm", "microparade.stages")),
        ("microparade.slurm", ("microparade.stages", "microparade.model")),
        ("microparade.model", ("microparade.engine.runner", "microparade.slurm")),
        ("microparade.storage", ("microparade.engine", "microparade.stages", "microparade.slurm")),
        ("microparade.config", ("microparade.engine", "microparade.stages", "microparade.slurm")),
    ],
)
def test_layers(graph, importer, forbidden):
    allowed = ("microparade.slurm.query",) if importer == "microparade.engine" else ()
    assert _violations(graph, importer, forbidden, allowed) == []


def test_the_slurm_queries_are_a_leaf(graph):
    # The engine asks Slurm whether a lease's owner still runs through slurm.query alone.
    assert {d for d in graph["microparade.slurm.query"] if d.startswith("microparade")} == set()
    assert _violations(graph, "microparade.engine", ("microparade.slurm",)) == [
        "microparade.engine.lease imports microparade.slurm.query"
    ]


def test_nothing_imports_the_cli(graph):
    assert [m for m, deps in graph.items() if "microparade.cli" in deps] == []


def test_stage_packages_do_not_import_each_other(graph):
    bad = []
    for m, deps in graph.items():
        if not m.startswith("microparade.stages."):
            continue
        own = m.split(".")[2]
        for d in deps:
            parts = d.split(".")
            if d.startswith("microparade.stages.") and parts[2] != own and d != "microparade.stages.chunks.contract":
                bad.append(f"{m} imports {d}")
    assert bad == []


def _long_functions() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                kernel = "vectorised kernel" in (ast.get_docstring(node) or "")
                if length > MAX_FUNCTION_LINES and not kernel:
                    out.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    return out


def test_no_long_functions():
    assert _long_functions() == []


def test_tests_never_edit_sys_path():
    offenders = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "tests").rglob("*.py"))
        if p.name != Path(__file__).name and "sys.path" in p.read_text()
    ]
    assert offenders == []


def _tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(
    "command",
    [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_lint_and_types_are_clean(command):
    proc = _tool(*command)
    assert proc.returncode == 0, f"{' '.join(command)} failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
