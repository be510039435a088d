"""The engine layer and the TensorRT backend against NVIDIA's real Python bindings (8.6, 10.3, the
newest 10.x, 11.1 and the newest 11.x), imported over a stub of TensorRT's C libraries (tests/trt_bindings.py).

Every TensorRT name, property write, call arity, base class and override that
``adtr_edge/engine/{trt_api,builder,calibration}.py`` and ``adtr_edge/runtime/backends/tensorrt.py``
use is found in their source (tests/trt_usage.py) and must exist in each version unless the code's
version guards keep that version away from it. The project's ILogger and calibrator subclasses are
constructed through the real base classes. Skips, with one line, where the wheels cannot be installed
(``python -m tests.trt_bindings`` installs them; .ci/run does so before pytest).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests import trt_bindings as tb
from tests.trt_usage import SOURCES

REPO = Path(__file__).resolve().parents[1]
LABELS = [r.label for r in tb.RELEASES]
SHIM = "import sys, tensorrt_bindings; sys.modules['tensorrt'] = tensorrt_bindings; "


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """label -> environment of a subprocess whose ``import tensorrt`` is that real module."""
    envs, skipped = {}, {}
    for release in tb.RELEASES:
        try:
            folder = tb.ensure_installed(release, log=lambda *_: None)
            stub = tb.build_stub(tb.extension(folder), tmp_path_factory.mktemp(f"trtstub-{release.label}"))
        except tb.Unavailable as e:
            skipped[release.label] = str(e)
            continue
        envs[release.label] = tb.environment(folder, stub)
    return envs, skipped


def run_real(real, label: str, code: str, timeout: float = 120) -> dict:
    envs, skipped = real
    if label not in envs:
        pytest.skip(f"TensorRT {label} bindings unavailable: {skipped[label]}")
    r = subprocess.run([sys.executable, "-c", SHIM + code], env=envs[label], cwd=REPO, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def usage(real, label: str, root: Path = REPO) -> dict:
    return run_real(real, label, f"from tests.trt_usage import main; main([{str(root)!r}])")


def table(doc: dict) -> str:
    uses = doc["uses"]
    names = {(u["owner"], u["name"]) for u in uses}
    missing = {(u["owner"], u["name"]) for u in uses if u["problem"]}
    guarded = {(u["owner"], u["name"]) for u in uses if u["problem"] and not u["reached"]}
    return f"TensorRT {doc['version']}: {len(names)} names checked, {len(missing)} missing or mismatched, {len(guarded)} of them guarded"


@pytest.mark.parametrize("label", LABELS)
def test_every_tensorrt_name_the_code_reaches_exists(real, label):
    doc = usage(real, label)
    print(table(doc))
    files = {u["file"] for u in doc["uses"]}
    assert files == set(SOURCES)  # every file was walked and uses TensorRT
    assert len({(u["owner"], u["name"]) for u in doc["uses"]}) > 60
    broken = [f"{u['file']}:{u['line']} {u['kind']} {u['problem']}" for u in doc["uses"] if u["problem"] and u["reached"]]
    assert not broken, f"TensorRT {doc['version']}: " + "; ".join(broken)


def test_what_each_version_lacks_is_guarded_by_version(real):
    """The known differences: 8.6 has no STRONGLY_TYPED flag; 11.x no FP16/INT8 flags, per-layer
    precision, calibrators or EXPLICIT_BATCH. The code reaches none of them there."""
    lacks = {}
    for label in LABELS:
        doc = usage(real, label)
        lacks[label] = {f"{u['owner']}.{u['name']}" for u in doc["uses"] if u["problem"]}
        assert all(not u["reached"] for u in doc["uses"] if u["problem"])
    assert lacks["8.6"] == {"NetworkDefinitionCreationFlag.STRONGLY_TYPED"}
    assert lacks["10.3"] == lacks["10.16"] == set()
    assert {"BuilderFlag.FP16", "BuilderFlag.INT8", "IBuilderConfig.int8_calibrator", "IBuilderConfig.set_calibration_profile",
            "ILayer.precision", "NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "tensorrt.IInt8EntropyCalibrator2"} <= lacks["11.4"]
    assert lacks["11.1"] == lacks["11.4"]


def _mutated_root(tmp_path: Path, rel: str, old: str, new: str) -> Path:
    root = tmp_path / "repo"
    for src in SOURCES:
        (root / src).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / src, root / src)
    text = (root / rel).read_text()
    assert text.count(old) == 1, old
    (root / rel).write_text(text.replace(old, new))
    return root


@pytest.mark.parametrize("rel, old, new, label, expect", [
    # a misspelt enum member, reached on every weakly typed version
    ("adtr_edge/engine/trt_api.py", "config.set_flag(flag.FP16)", "config.set_flag(flag.HALF)", "10.3", "BuilderFlag.HALF does not exist"),
    # a 9.0+ name used without its guard: 8.6 reaches it
    ("adtr_edge/engine/trt_api.py", "            if not self.has_strongly_typed_flag:\n", "            if False:\n", "8.6",
     "STRONGLY_TYPED does not exist"),
    # a wrong arity
    ("adtr_edge/engine/builder.py", "builder.create_builder_config()", "builder.create_builder_config(0)", "10.16",
     "create_builder_config: 1 positional"),
    # a read-only property assigned
    ("adtr_edge/runtime/backends/tensorrt.py", "self.context = self.engine.create_execution_context()",
     "self.context = self.engine.create_execution_context()\n        self.engine.num_io_tensors = 2", "10.3", "read-only"),
    # a calibrator used where TensorRT 11 has none, its guard removed
    ("adtr_edge/engine/calibration.py", "    if not api.has_calibrators:\n", "    if False:\n", "11.4",
     "IInt8EntropyCalibrator2"),
])
def test_a_missing_name_or_signature_fails(real, tmp_path, rel, old, new, label, expect):
    doc = usage(real, label, _mutated_root(tmp_path, rel, old, new))
    broken = [u["problem"] for u in doc["uses"] if u["problem"] and u["reached"]]
    assert any(expect in p for p in broken), broken


@pytest.mark.parametrize("label", LABELS)
def test_the_project_subclasses_construct_through_the_real_bases(real, label):
    doc = run_real(real, label, "import json, tensorrt; from tests.trt_usage import construct; "
                                "print(json.dumps({'version': tensorrt.__version__, 'c': construct(tensorrt)}))")
    c = doc["c"]
    assert c["logger"] == {"is_ilogger": True, "errors": ["an error"], "warnings": ["a warning"]}
    # The real constructors accept the logger as an ILogger; only the stub's NULL factory fails.
    assert c["Builder"] == c["Runtime"] == "pybind11::init(): factory function returned nullptr"
    if label.startswith("11."):
        assert "calibrator" not in c
    else:
        cal = c["calibrator"]
        assert cal["is_base"] and cal["batch_size"] == 1 and cal["first"] == ["int"] and cal["last"] is None
        assert cal["error"] == "None" and cal["algorithm"].endswith("ENTROPY_CALIBRATION_2")
