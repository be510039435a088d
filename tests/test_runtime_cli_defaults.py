"""`adtr-edge stream` without MODEL_DIR (engines/ or adtr-demo/onnx), and --cuda-graphs / --cuda-binding."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adtr_edge.engine.builder import BuildOptions, build_engines
from adtr_edge.engine.manifest import Profile
from adtr_edge.engine.trt_api import TrtApi
from adtr_edge.errors import AdtrError
from adtr_edge.runtime.cli import main as cli_main
from adtr_edge.runtime.cli import tensorrt_options
from adtr_edge.cuda import CudaRuntime
from adtr_edge.runtime.loading import default_model_dir
from tests.runtime_fakes import write_fake_export, write_video
from tests.trt_standin.fake_trt import make_cudart, make_tensorrt
from tests.trt_standin.graphs import make_export


@pytest.fixture(scope="module")
def onnx_export(tmp_path_factory):
    return write_fake_export(tmp_path_factory.mktemp("cli_defaults") / "model")


@pytest.fixture(scope="module")
def engine_folder(tmp_path_factory):
    """A real engine folder (built on the simulated TensorRT 10 / fake GPU)."""
    root = tmp_path_factory.mktemp("cli_engines")
    export = make_export(root / "export")
    build_engines(export, root / "engines", "m", BuildOptions(precision="fp32", profile=Profile(1, 1, 2)),
                  api=TrtApi(make_tensorrt("10.3.0.30")), cuda=CudaRuntime(make_cudart()), log=lambda s: None)
    return root / "engines/m"


# -- resolution rules ------------------------------------------------------------------------------


def test_only_engine_folder_is_used(tmp_path, monkeypatch, onnx_export):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "engines/orin-fp16").mkdir(parents=True)
    (tmp_path / "engines/orin-fp16/manifest.json").write_text("{}")
    (tmp_path / "engines/notes").mkdir()  # no manifest: not an engine folder
    shutil.copytree(onnx_export, tmp_path / "adtr-demo/onnx")  # engines win over the demo export
    assert default_model_dir() == Path("engines/orin-fp16")
    assert default_model_dir(tmp_path) == tmp_path / "engines/orin-fp16"


def test_demo_export_when_no_engine_folder(tmp_path, monkeypatch, onnx_export):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "engines").mkdir()
    shutil.copytree(onnx_export, tmp_path / "adtr-demo/onnx")
    assert default_model_dir() == Path("adtr-demo/onnx")


def test_several_engine_folders_are_listed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("b-int8", "a-fp16"):
        (tmp_path / "engines" / name).mkdir(parents=True)
        (tmp_path / "engines" / name / "manifest.json").write_text("{}")
    with pytest.raises(AdtrError, match=r"several engine folders.*engines/a-fp16, engines/b-int8.*MODEL_DIR"):
        default_model_dir()


def test_nothing_found_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AdtrError) as e:
        default_model_dir()
    msg = str(e.value)
    assert "\n" not in msg and "MODEL_DIR" in msg and "adtr-edge demo" in msg and "adtr-edge build-engine" in msg
    assert cli_main(["stream", "--camera", "0"]) == 2
    assert "adtr-edge demo" in capsys.readouterr().err


# -- the stream command ----------------------------------------------------------------------------


def test_camera_without_model_uses_the_demo_export(tmp_path, monkeypatch, onnx_export, captured_run, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(onnx_export, tmp_path / "adtr-demo/onnx")
    assert cli_main(["stream", "--camera", "0"]) == 0
    (call,) = captured_run
    assert call["model_dir"] == Path("adtr-demo/onnx") and call["source"] == 0 and call["backend_options"] == {}
    assert "model: adtr-demo/onnx" in capsys.readouterr().err


def test_stream_without_model_runs_end_to_end(tmp_path, monkeypatch, onnx_export, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(onnx_export, tmp_path / "adtr-demo/onnx")
    video = write_video(tmp_path / "v.mp4", [False, True, False])
    assert cli_main(["stream", "--source", str(video), "--events", "-"]) == 0
    frames = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [f["label"] for f in frames if f["event"] == "frame"] == [False, True, False]


def test_cuda_options_pass_through_to_the_tensorrt_backend(tmp_path, monkeypatch, engine_folder, captured_run):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(engine_folder, tmp_path / "engines/m")
    assert cli_main(["stream", "--camera", "0", "--cuda-graphs", "--cuda-binding", "pycuda"]) == 0
    assert captured_run[-1]["model_dir"] == Path("engines/m")
    assert captured_run[-1]["backend_options"] == {"cuda_graphs": True, "cuda_binding": "pycuda"}
    assert cli_main(["stream", "--camera", "0", "--cuda-binding", "cuda-python"]) == 0
    assert captured_run[-1]["backend_options"] == {"cuda_binding": "cuda-python"}
    # The options are real TensorRTBackend keywords (load_backend refuses unknown ones).
    from adtr_edge.runtime.backends.tensorrt import TensorRTBackend
    be = TensorRTBackend(engine_folder, **captured_run[0]["backend_options"])
    assert be.cuda_graphs and be.cuda_binding == "pycuda"


@pytest.mark.parametrize("args, message", [
    (["--cuda-binding", "cupy"], "--cuda-binding 'cupy': choose one of auto, cuda-python, pycuda"),
    (["--cuda-graphs"], "--cuda-graphs applies to the TensorRT backend only;"),
    (["--cuda-graphs", "--cuda-binding", "pycuda"], "--cuda-graphs and --cuda-binding apply to the TensorRT backend only;"),
    (["--cuda-binding", "pycuda", "--backend", "onnxruntime"], "not --backend onnxruntime"),
])
def test_cuda_option_errors_on_onnx_export(onnx_export, captured_run, capsys, args, message):
    assert cli_main(["stream", str(onnx_export), "--camera", "0", *args]) == 2
    assert message in capsys.readouterr().err
    assert not captured_run  # refused before anything was opened


def test_tensorrt_options_helper(engine_folder, onnx_export):
    assert tensorrt_options(onnx_export, "auto", False, "auto") == {}  # nothing asked: no folder check
    assert tensorrt_options(engine_folder, "tensorrt", True, "auto") == {"cuda_binding": "auto", "cuda_graphs": True}
    with pytest.raises(AdtrError, match="model folder not found"):
        tensorrt_options(Path("nowhere"), "auto", True, "auto")
