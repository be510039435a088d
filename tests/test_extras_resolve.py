"""What pyproject's ``tensorrt`` and ``cuda13`` extras install, as pip resolves them on Python 3.8,
3.10 and 3.12: the CUDA 12 build of TensorRT (drivers >= 525) for ``tensorrt``, the CUDA 13 build for
``cuda13``, and the cuda-python line each driver takes.

Each interpreter runs ``pip install --dry-run --no-deps --report`` on the extra's requirement lines
(markers evaluated by that interpreter). ``--no-deps`` because the TensorRT metapackages depend on
``tensorrt-cuXX-libs``, a placeholder on PyPI that downloads from NVIDIA's own index; their metadata
pins the libs and bindings to their own version, and the bindings wheel is then resolved for that
Python too (a real wheel). Interpreters that are not installed, or an index that cannot be reached,
skip with one line.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="tomllib is Python 3.11+")
# About 40 s on 2 cores (nine pip resolutions against the index): run with -m slow.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
PYTHONS = ("3.8", "3.10", "3.12")


def interpreter(version: str) -> str | None:
    if f"{sys.version_info.major}.{sys.version_info.minor}" == version:
        return sys.executable
    root = os.environ.get("PYENV_ROOT", str(Path.home() / ".pyenv"))
    found = sorted(glob.glob(f"{root}/versions/{version}.*/bin/python{version}"))
    return found[-1] if found else shutil.which(f"python{version}")


def resolve(python: str, requirements: list[str]) -> dict:
    """name -> (version, requires_dist) of what pip would install for these requirement lines."""
    cmd = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet",
           "--disable-pip-version-check", "--report", "-", *requirements]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.strip().splitlines() if not ln.startswith("WARNING")]
        raise RuntimeError((lines or ["no output"])[-1])
    report = json.loads(r.stdout)
    return {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): (i["metadata"]["version"], i["metadata"].get("requires_dist") or [])
            for i in report["install"]}


@pytest.fixture(scope="module")
def resolved():
    """(python, extra) -> resolved packages, with each TensorRT build's bindings wheel added."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    jobs = {(py, extra): (interpreter(py), extras[extra]) for py in PYTHONS for extra in ("tensorrt", "cuda13")}
    missing = sorted({py for (py, _), (exe, _) in jobs.items() if exe is None})
    if missing:
        pytest.skip(f"no Python {', '.join(missing)} interpreter here to resolve the extras with")

    def run(key):
        exe, reqs = jobs[key]
        got = resolve(exe, reqs)
        for name, (version, requires) in list(got.items()):
            bindings = [r for r in requires if re.match(rf"{name.replace('-', '[-_]')}[-_]bindings==", r)]
            if bindings:  # the bindings wheel the metapackage pins, for this Python
                got.update(resolve(exe, [bindings[0].split(";")[0]]))
        return key, got

    try:
        with ThreadPoolExecutor(max_workers=6) as pool:  # pip waits on the index, not the CPU
            return dict(pool.map(run, jobs))
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        pytest.skip(f"pip cannot resolve the extras here: {e}")


def _major(version: str) -> int:
    return int(version.split(".")[0])


@pytest.mark.parametrize("py", PYTHONS)
def test_tensorrt_extra_is_the_cuda12_build(resolved, py):
    got = resolved[(py, "tensorrt")]
    print(py, "tensorrt:", {k: v[0] for k, v in got.items()})
    assert "tensorrt" not in got and "tensorrt-cu13" not in got  # the metapackage is the CUDA 13 build from 10.13.2
    version, requires = got["tensorrt-cu12"]
    assert _major(version) >= 10 and any(re.match(r"tensorrt[-_]cu12[-_]libs==", r) for r in requires)
    assert got["tensorrt-cu12-bindings"][0] == version  # a wheel of that version exists for this Python
    assert _major(got["cuda-python"][0]) == (11 if py == "3.8" else 12)


@pytest.mark.parametrize("py", PYTHONS)
def test_cuda13_extra_is_the_cuda13_build(resolved, py):
    got = resolved[(py, "cuda13")]
    print(py, "cuda13:", {k: v[0] for k, v in got.items()})
    assert "tensorrt" not in got and "tensorrt-cu12" not in got
    version, requires = got["tensorrt-cu13"]
    assert _major(version) >= 10 and any(re.match(r"tensorrt[-_]cu13[-_]libs==", r) for r in requires)
    assert got["tensorrt-cu13-bindings"][0] == version
    if py == "3.8":
        assert "cuda-python" not in got  # cuda-python 13 has no Python 3.8 wheels
    else:
        assert _major(got["cuda-python"][0]) == 13
