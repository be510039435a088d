"""The scripts in benchmarks/ run as ``python benchmarks/NAME.py`` with no ``sys.path`` edit: what they
share is in the package (``adtr_edge.bench.scripts``, ``adtr_edge.bench.evaluation``), none imports
another, and a script the docs name either exists or was removed with its entry on docs/decisions.md."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "benchmarks").glob("*.py"))


def test_no_script_edits_sys_path_or_imports_another():
    names = {p.stem for p in SCRIPTS}
    for path in SCRIPTS:
        text = path.read_text()
        assert "sys.path" not in text, f"{path.name} edits sys.path"
        for node in ast.walk(ast.parse(text)):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for m in modules:
                assert m.split(".")[0] not in names, f"{path.name} imports the script {m}"


def test_the_shared_modules_import_light():
    code = "import adtr_edge.bench.scripts, sys; print(' '.join(sys.modules))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout.split())
    assert not loaded & {"torch", "onnx", "onnxruntime", "tensorrt"}


def test_a_script_the_docs_name_exists_or_its_removal_is_recorded():
    decisions = (REPO / "docs" / "decisions.md").read_text()
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    named = {m for page in pages for m in re.findall(r"benchmarks/(\w+)\.py", page.read_text())}
    for name in sorted(named):
        if not (REPO / "benchmarks" / f"{name}.py").is_file():
            assert re.search(rf"Probe: `benchmarks/{name}\.py`, removed on \d{{4}}-\d\d-\d\d, last at commit `[0-9a-f]{{7,}}`",
                             decisions), f"benchmarks/{name}.py is named in the docs but neither exists nor is recorded as removed"
