"""The engine CLI commands (registered by adtr_edge.cli) on a simulated TensorRT."""

from __future__ import annotations

import sys

import pytest
import typer
from typer.testing import CliRunner

from adtr_edge.engine.cli import register
from tests.trt_standin.fake_trt import make_cudart, make_tensorrt
from tests.trt_standin.graphs import make_export, write_images


@pytest.fixture
def app(monkeypatch):
    rt = make_cudart()
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10.3.0.30", cudart=rt))
    import adtr_edge.cuda.cudart as cuda_mod
    monkeypatch.setattr(cuda_mod, "import_cudart", lambda: rt)
    a = typer.Typer()
    register(a)
    return a


def test_build_engine_prints_plan_and_skips_second_time(tmp_path, app, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exp = make_export(tmp_path / "export")
    imgs = write_images(tmp_path / "imgs", n=4)
    args = ["build-engine", str(exp), "--precision", "int8", "--calib-images", str(imgs), "--calib-batches", "2",
            "--opt-batch", "2", "--max-batch", "4"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "TensorRT 10.3.0.30" in r.output and "backbone: int8 (calibrator)" in r.output and "transformer: fp16" in r.output
    assert (tmp_path / "engines/export/backbone.engine").is_file()
    assert list((tmp_path / "calibration/export").glob("backbone-*.cache"))
    r2 = CliRunner().invoke(app, args)
    assert r2.exit_code == 0 and "up to date" in r2.output


def test_quantize_command(tmp_path, app):
    exp = make_export(tmp_path / "export")
    imgs = write_images(tmp_path / "imgs", n=4)
    r = CliRunner().invoke(app, ["quantize", str(exp), "--calib-images", str(imgs), "--out", str(tmp_path / "q"), "--batch-size", "2"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "q/backbone.onnx").is_file() and (tmp_path / "q/manifest.json").is_file()
