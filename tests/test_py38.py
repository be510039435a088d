"""JetPack 5 ships Python 3.8 with TensorRT 8.5: everything a device imports must run there.

No Python 3.8 interpreter is available to CI, so this is a static check with vermin over the
modules that the CLI, the runtime and the engine builder actually import (found by importing them
in a fresh interpreter). Four rules:

* every such module is 3.8-valid with annotations left unevaluated (they all use
  ``from __future__ import annotations``; the check below makes sure they do);
* modules that define typer commands are checked with annotations *evaluated*, because typer
  resolves command signatures with ``typing.get_type_hints`` at start-up (``Optional``/``List``,
  not ``X | None``/``list[X]``);
* vermin misses a ``.removeprefix()`` whose receiver is not a literal and evaluated ``str | None``:
  tests/py39_constructs.py walks the same files for those (and the other 3.9/3.10 names it lists);
* the training side (model, train, evaluate, plots, baselines) stays out of that import closure,
  since it may use 3.9+ (``str.removeprefix`` in model/weights.py); the ``train`` extra needs 3.9+.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.py39_constructs import violations

REPO = Path(__file__).resolve().parents[1]
ENTRY_MODULES = (
    "adtr_edge.cli", "adtr_edge.runtime.cli", "adtr_edge.runtime.backends.tensorrt", "adtr_edge.runtime.detector",
    "adtr_edge.runtime.pipeline", "adtr_edge.runtime.backends.triton", "adtr_edge.engine.builder", "adtr_edge.int8.quantize", "adtr_edge.export.inspect",
    "adtr_edge.export.opset",
)
if all(importlib.util.find_spec(m) for m in ("starlette", "uvicorn", "prometheus_client")):
    # The web view and metrics (stream --http/--metrics) run on devices too; checked where the
    # factory extra is installed (CI installs it).
    ENTRY_MODULES += ("adtr_edge.runtime.web.frontend",)
# Event delivery (runtime/delivery: spool, MQTT, webhook) runs on the device too; paho loads lazily.
ENTRY_MODULES += ("adtr_edge.runtime.delivery.factory", "adtr_edge.runtime.delivery.mqtt", "adtr_edge.runtime.delivery.webhook")
TRAINING_SIDE = ("adtr_edge.model", "adtr_edge.train", "adtr_edge.evaluation.evaluate", "adtr_edge.evaluation.plots", "adtr_edge.evaluation.baselines")
# adtr-edge registers the training area's commands (train, refit-head, eval) from its cli module, which
# imports the training side only inside the commands; the package's __init__ is its docstring.
TRAINING_COMMANDS = ("adtr_edge.train", "adtr_edge.train.cli")
DEVICE_SCRIPTS = ("scripts/validate_device.py",)


@functools.lru_cache(maxsize=None)  # imported once for the tests that share it
def _device_closure() -> list[Path]:
    """Files of the adtr_edge modules that importing the device entry points loads."""
    code = (
        "import importlib, json, sys\n"
        f"for m in {ENTRY_MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted((n, m.__file__) for n, m in sys.modules.items() if n.split('.')[0] == 'adtr_edge')))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120, check=True)
    mods = json.loads(out.stdout.strip().splitlines()[-1])
    leaked = [n for n, _ in mods if n.startswith(TRAINING_SIDE) and n not in TRAINING_COMMANDS]
    assert not leaked, f"device modules import the training side (3.9+ allowed there): {leaked}"
    return [Path(f) for _, f in mods]


def _vermin(files, eval_annotations: bool) -> tuple[int, str]:
    args = ["-t=3.8-", "--violations", "--no-tips", "--no-parse-comments"]
    if eval_annotations:
        args.append("--eval-annotations")
    cmd = [sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", *args, *map(str, files)]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    return r.returncode, (r.stdout + r.stderr).strip()


def _has_future_annotations(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
               for n in tree.body)


def _defines_typer_commands(tree: ast.Module) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for dec in node.decorator_list:
                target = dec.func if isinstance(dec, ast.Call) else dec
                if isinstance(target, ast.Attribute) and target.attr in ("command", "callback"):
                    return True
    return False


def test_device_modules_are_python38_valid():
    pytest.importorskip("vermin", reason="vermin is not installed (pip install -e '.[dev]')")
    files = _device_closure() + [REPO / s for s in DEVICE_SCRIPTS]
    trees = {f: ast.parse(f.read_text(encoding="utf-8")) for f in files}
    lazy = [f for f, t in trees.items() if _has_future_annotations(t)]
    evaluated = [f for f, t in trees.items() if not _has_future_annotations(t) or _defines_typer_commands(t)]
    report = []
    for group, eval_ann in ((lazy, False), (evaluated, True)):
        rc, out = _vermin(group, eval_ann)
        print(f"vermin -t=3.8- {'--eval-annotations ' if eval_ann else ''}on {len(group)} files: rc={rc}\n{out}")
        if rc != 0:
            report.append(out.splitlines()[-6:])
    assert not report, f"Python 3.8 violations: {report}"
    assert len(files) > 30 and evaluated  # the closure really was found (cli modules are evaluated)


def test_device_modules_use_nothing_vermin_misses():
    """vermin lets ``x.removeprefix()`` (receiver not a literal) and evaluated ``str | None`` through;
    the AST walk of tests/py39_constructs.py catches them (and the other 3.9/3.10 names it lists)."""
    files = _device_closure() + [REPO / s for s in DEVICE_SCRIPTS]
    found = []
    for f in files:
        tree = ast.parse(f.read_text(encoding="utf-8"))
        evaluated = not _has_future_annotations(tree) or _defines_typer_commands(tree)
        found += violations(tree, str(f.relative_to(REPO)), evaluated)
    assert not found, "Python 3.9+ in code the device imports: " + "; ".join(found)


def test_the_python38_walk_catches_what_vermin_misses():
    typer_command = (
        "from __future__ import annotations\nimport typer\napp = typer.Typer()\n\n"
        "@app.command()\ndef run(name: str | None = typer.Option(None)):\n    return name\n")
    tree = ast.parse(typer_command)
    assert _defines_typer_commands(tree)
    assert violations(tree, "cli.py", True) == ["cli.py:6: 'str | None' union needs 3.10 (use Optional/Union)"]
    assert violations(tree, "cli.py", False) == []  # unevaluated annotations may use it
    trt_api = (REPO / "adtr_edge/engine/trt_api.py").read_text(encoding="utf-8")
    mutated = trt_api.replace("self.version_string = str(trt_module.__version__)",
                              "self.version_string = str(trt_module.__version__).removeprefix('v')")
    assert mutated != trt_api
    assert violations(ast.parse(mutated), "trt_api.py", False)[0].endswith(".removeprefix() needs 3.9")
    runtime = "import functools, math\n@functools.cache\ndef f(a, b):\n    return math.lcm(a, b), isinstance(a, int | None), list[int]\n"
    assert [v.split(": ", 1)[1] for v in violations(ast.parse(runtime), "m.py", False)] == [
        "functools.cache needs 3.9", "'int | None' union needs 3.10 (use Optional/Union)", "'list[int]' needs 3.9 (use typing.List)",
        "math.lcm needs 3.9"]
    assert violations(ast.parse("flags = 1 | 2\nboth = {1} | {2}\nx: list[int] = []\n"), "ok.py", False) == []


def test_pyproject_declares_python38_and_the_check_tool():
    tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
    doc = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    project = doc["project"]
    assert project["requires-python"] == ">=3.8"
    extras = project["optional-dependencies"]
    assert any(d.startswith("vermin") for d in extras["dev"])
    # cuda-python 12/13 has no Python 3.8 wheels: the 3.8 (JetPack 5) pin is the 11.x line.
    cuda = [d for d in extras["tensorrt"] if d.startswith("cuda-python")]
    assert any("<12" in d and "python_version < '3.9'" in d for d in cuda), cuda
    assert any(">=12,<13" in d and "python_version >= '3.9'" in d for d in cuda), cuda
