"""The export opset follows the target TensorRT: 16 below 8.6 (no LayerNormalization importer), 17 otherwise."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from adtr_edge.errors import AdtrError
from adtr_edge.export.opset import choose_opset, opset_for_trt
from tests.trt_standin.fake_trt import make_tensorrt

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("version, opset", [("8.5", 16), ("8.5.2.2", 16), ("8.6", 17), ("10.3.0.30", 17), ("11.1", 17)])
def test_opset_for_trt(version, opset):
    assert opset_for_trt(version) == opset


def test_choose_opset_explicit_wins_and_conflicts_are_one_line():
    assert choose_opset() == 17
    assert choose_opset(None, "8.5") == 16
    assert choose_opset(15, "8.5") == 15 and choose_opset(16, "10.3") == 16 and choose_opset(17, "8.6") == 17
    with pytest.raises(AdtrError, match=r"--opset 17 conflicts with --trt-version 8.5") as e:
        choose_opset(17, "8.5")
    assert "\n" not in str(e.value)
    with pytest.raises(AdtrError, match="--trt-version 'eight'"):
        choose_opset(None, "eight")


@pytest.fixture
def fake_exporter(monkeypatch):
    """Replace the torch exporter module: the CLI test checks the opset it is handed, fast."""
    calls = []

    def export_checkpoint(checkpoint, out, *, opset, force, do_simplify):
        calls.append(opset)
        return types.SimpleNamespace(manifest={"graphs": {}})

    monkeypatch.setitem(sys.modules, "adtr_edge.export.onnx_export", types.SimpleNamespace(export_checkpoint=export_checkpoint))
    return calls


@pytest.mark.parametrize("args, opset", [([], 17), (["--trt-version", "8.5"], 16), (["--trt-version", "10.3"], 17),
                                         (["--opset", "16"], 16), (["--opset", "16", "--trt-version", "10.3"], 16)])
def test_export_cli_picks_the_opset(tmp_path, fake_exporter, args, opset):
    from adtr_edge.cli import app

    r = CliRunner().invoke(app, ["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "o"), *args])
    assert r.exit_code == 0, r.output
    assert fake_exporter == [opset] and f"opset {opset}" in r.output


def test_export_cli_conflict_is_an_error(tmp_path, fake_exporter):
    from adtr_edge.cli import main

    assert main(["export", str(tmp_path / "ckpt"), "--out", str(tmp_path / "o"), "--opset", "17", "--trt-version", "8.5"]) == 2
    assert fake_exporter == []


def _load(relpath: str, name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / relpath)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("relpath", ["scripts/validate_device.py", "adtr_edge.bench.scripts"])
def test_device_scripts_export_for_the_installed_tensorrt(monkeypatch, relpath):
    """The device script and the benchmark scripts' shared module (``adtr_edge.bench.scripts``)."""
    mod = _load(relpath, "adtr_test_" + Path(relpath).stem) if relpath.endswith(".py") else importlib.import_module(relpath)
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("8.5.2.2"))
    assert mod.export_opset() == 16
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10.3.0.30"))
    assert mod.export_opset() == 17
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not importable: the default
    assert mod.export_opset() == 17
