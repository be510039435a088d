"""Mutation check of the CUDA synchronisation in the TensorRT backend, the pycuda binding and the
INT8 calibrator: every stream/event synchronisation, event wait and warm-up enqueue is needed, and
the asynchronous stand-ins (cuda-python's and pycuda's) notice when one goes.

For each such statement (found by AST: a call of ``synchronize``/``event_synchronize``/``wait_event``,
or the statement that does the work inside a method of that name, as in cuda/pycuda_binding.py), a
copy of the package with that one statement replaced by ``pass`` is written to a temp folder, and the
tests of that file run against it in a subprocess; at least one must fail ("the mutant is killed").
A surviving mutant means either a test is missing or the call is not needed. About 2 min on 2 cores,
so it is marked slow:

    python -m pytest -m slow -s tests/test_mutation_sync.py   # prints "mutants killed: K / N" per file
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
PYCUDA_TESTS = [
    "tests/test_engine_pycuda.py::test_int8_build_calibrates_through_pycuda_and_backend_matches_onnxruntime",
    "tests/test_engine_pycuda.py::test_pycuda_runtime_moves_bytes_and_times_events",
    "tests/test_trt_leftovers.py::test_pycuda_standin_copies_are_invisible_until_synchronised",
    "tests/test_trt_leftovers.py::test_pycuda_standin_event_times_need_the_work_to_have_run",
]
# Each file and the tests that must notice a missing synchronisation in it.
TARGETS = {
    TARGET: [
        "tests/test_engine_trt_contracts.py::test_backbone_waits_until_the_transformer_has_read_the_slot",
        "tests/test_engine_trt_contracts.py::test_host_stage_times_include_the_device_work",
        "tests/test_engine_trt_contracts.py::test_abandoned_stream_of_batches_deactivates_cleanly",
        "tests/test_engine_trt_contracts.py::test_cuda_graphs_with_changing_batch_sizes_match_plain_enqueues",
        "tests/test_engine_standin_build.py::test_backend_runs_engines_and_matches_onnxruntime",
    ],
    Path("adtr_edge/cuda/pycuda_binding.py"): PYCUDA_TESTS,
    Path("adtr_edge/engine/calibration.py"): [
        "tests/test_engine_pycuda.py::test_int8_build_calibrates_through_pycuda_and_backend_matches_onnxruntime",
        "tests/test_engine_standin_build.py",
    ],
}
TESTS = TARGETS[TARGET]
COPY = ("adtr_edge", "tests/__init__.py", "tests/conftest.py", "tests/trt_standin", "tests/test_engine_trt_contracts.py",
        "tests/test_engine_standin_build.py", "tests/test_engine_pycuda.py", "tests/test_trt_leftovers.py", "pyproject.toml")


def sync_statements(source: str) -> list[tuple[int, str]]:
    """(line number, source line) of each statement to remove."""
    lines = source.splitlines()
    found = []
    tree = ast.parse(source)
    # The body of a binding's own synchronize/event_synchronize/wait_event method (one call each).
    in_sync_method = {id(stmt) for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) and fn.name in SYNC_METHODS
                      for stmt in fn.body}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Expr) or not isinstance(node.value, ast.Call):
            continue
        func = node.value.func
        text = lines[node.lineno - 1].strip()
        if (isinstance(func, ast.Attribute) and func.attr in SYNC_METHODS) or text in WARM_UP_LINES or id(node) in in_sync_method:
            assert node.end_lineno == node.lineno, f"line {node.lineno}: keep sync calls on one line"
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


def run_tests(root: Path, tests=TESTS) -> subprocess.CompletedProcess:
    # -x: one failure kills the mutant; -p no:cacheprovider: nothing written outside the temp copy.
    cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-k", "not trt8 and not trt11", *tests]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("target", list(TARGETS), ids=lambda p: p.stem)
def test_every_sync_is_needed(tmp_path, target):
    source = (REPO / target).read_text(encoding="utf-8")
    statements = sync_statements(source)
    assert len(statements) >= {TARGET: 8}.get(target, 1), statements  # the check really found the calls
    root = tmp_path / "copy"
    _copy_tree(root)
    tests = TARGETS[target]
    baseline = run_tests(root, tests)
    assert baseline.returncode == 0, f"tests fail without any mutation:\n{baseline.stdout[-3000:]}"
    survivors = []
    for lineno, text in statements:
        (root / target).write_text(mutate(source, lineno), encoding="utf-8")
        result = run_tests(root, tests)
        killed = result.returncode != 0
        print(f"{'killed  ' if killed else 'SURVIVED'} {target}:{lineno}: {text}")
        if not killed:
            survivors.append(f"{lineno}: {text}")
    (root / target).write_text(source, encoding="utf-8")
    print(f"{target}: mutants killed: {len(statements) - len(survivors)} / {len(statements)}")
    assert not survivors, f"removing these left every test passing: {survivors}"
