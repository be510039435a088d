"""Mutation check of the TensorRT backend's synchronisation: every stream/event synchronisation,
event wait and warm-up enqueue in adtr_edge/runtime/backends/tensorrt.py is needed, and the
asynchronous stand-in notices when one goes.

For each such statement (found by AST), a copy of the package with that one statement replaced by
``pass`` is written to a temp folder, and the backend tests run against it in a subprocess; at least
one must fail ("the mutant is killed"). A surviving mutant means either a test is missing or the
call is not needed. About 70 s on 2 cores, so it is marked slow:

    python -m pytest -m slow -s tests/test_mutation_sync.py   # prints "mutants killed: K / N"
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TARGET = Path("adtr_edge/runtime/backends/tensorrt.py")
SYNC_METHODS = {"synchronize", "event_synchronize", "wait_event"}
# Warm-up: the plain enqueue on a graphed context before its capture (found by this source text).
WARM_UP_LINES = ("self._execute(ctx, handle)",)
TESTS = [
    "tests/test_engine_trt_contracts.py::test_backbone_waits_until_the_transformer_has_read_the_slot",
    "tests/test_engine_trt_contracts.py::test_host_stage_times_include_the_device_work",
    "tests/test_engine_trt_contracts.py::test_abandoned_stream_of_batches_deactivates_cleanly",
    "tests/test_engine_trt_contracts.py::test_cuda_graphs_with_changing_batch_sizes_match_plain_enqueues",
    "tests/test_engine_standin_build.py::test_backend_runs_engines_and_matches_onnxruntime",
]
COPY = ("adtr_edge", "tests/__init__.py", "tests/conftest.py", "tests/trt_standin", "tests/test_engine_trt_contracts.py",
        "tests/test_engine_standin_build.py", "pyproject.toml")


def sync_statements(source: str) -> list[tuple[int, str]]:
    """(line number, source line) of each statement to remove."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Expr) or not isinstance(node.value, ast.Call):
            continue
        func = node.value.func
        text = lines[node.lineno - 1].strip()
        if (isinstance(func, ast.Attribute) and func.attr in SYNC_METHODS) or text in WARM_UP_LINES:
            assert node.end_lineno == node.lineno, f"{TARGET}:{node.lineno}: keep sync calls on one line"
            found.append((node.lineno, text))
    return sorted(found)


def mutate(source: str, lineno: int) -> str:
    lines = source.splitlines(keepends=True)
    line = lines[lineno - 1]
    indent = line[: len(line) - len(line.lstrip())]
    lines[lineno - 1] = f"{indent}pass  # mutant: removed {line.strip()}\n"
    return "".join(lines)


def _copy_tree(dest: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for rel in COPY:
        src, dst = REPO / rel, dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=ignore)
        else:
            shutil.copy2(src, dst)


def run_tests(root: Path) -> subprocess.CompletedProcess:
    # -x: one failure kills the mutant; -p no:cacheprovider: nothing written outside the temp copy.
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not trt8 and not trt11", *TESTS]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)


def test_every_sync_in_the_tensorrt_backend_is_needed(tmp_path):
    source = (REPO / TARGET).read_text(encoding="utf-8")
    statements = sync_statements(source)
    assert len(statements) >= 8, statements  # the check really found the calls
    root = tmp_path / "copy"
    _copy_tree(root)
    baseline = run_tests(root)
    assert baseline.returncode == 0, f"tests fail without any mutation:\n{baseline.stdout[-3000:]}"
    survivors = []
    for lineno, text in statements:
        (root / TARGET).write_text(mutate(source, lineno), encoding="utf-8")
        result = run_tests(root)
        killed = result.returncode != 0
        print(f"{'killed  ' if killed else 'SURVIVED'} {TARGET}:{lineno}: {text}")
        if not killed:
            survivors.append(f"{lineno}: {text}")
    (root / TARGET).write_text(source, encoding="utf-8")
    print(f"mutants killed: {len(statements) - len(survivors)} / {len(statements)}")
    assert not survivors, f"removing these left every test passing: {survivors}"
