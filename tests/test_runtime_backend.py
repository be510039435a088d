"""ONNX Runtime backend and model-folder loading against small contract-following graphs."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import pytest
from tests.runtime_fakes import SIZE, write_fake_export

from adtr_edge.errors import AdtrError
from adtr_edge.runtime import loading
from adtr_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend


def _images(n=2, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_backend_matches_direct_sessions_and_the_graph_arithmetic(export_dir):
    images = _images(3)
    with OnnxRuntimeBackend(export_dir, intra_op_threads=1) as backend:
        result = backend.infer(images)
    bb = ort.InferenceSession(str(export_dir / "backbone.onnx"), providers=["CPUExecutionProvider"])
    tr = ort.InferenceSession(str(export_dir / "transformer.onnx"), providers=["CPUExecutionProvider"])
    (feats,) = bb.run(None, {"images": images})
    amap, score = tr.run(None, {"features": feats})
    np.testing.assert_array_equal(result.anomaly_map, amap)
    np.testing.assert_array_equal(result.score, score)
    # The fake backbone is an 8x8 average pool: check the numbers, not only the plumbing.
    expected = images.astype(np.float32).reshape(3, 8, 8, 8, 8, 3).mean(axis=(2, 4)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(feats, expected, rtol=1e-5)
    assert result.anomaly_map.shape == (3, 1, SIZE, SIZE) and result.score.shape == (3,)
    assert set(result.timings) >= {"backbone", "transformer"}


def test_backend_reads_metadata_and_checks_io(export_dir):
    backend = OnnxRuntimeBackend(export_dir)
    assert backend.meta.input_size == (SIZE, SIZE)
    backend.activate()
    assert "CPUExecutionProvider" in backend.providers
    assert backend.run_backbone(_images(1)).shape == (1, 3, 8, 8)
    backend.deactivate()
    assert not backend.sessions


def test_sha256_mismatch_is_a_clear_error(tmp_path):
    folder = write_fake_export(tmp_path / "m")
    data = (folder / "transformer.onnx").read_bytes()
    (folder / "transformer.onnx").write_bytes(data + b"\0")
    with pytest.raises(AdtrError, match=r"transformer\.onnx: sha256 .* does not match manifest\.json"):
        OnnxRuntimeBackend(folder)


def test_graph_metadata_that_disagrees_with_the_manifest_is_refused(tmp_path):
    other = {"postprocess": {"thresholds": {"threshold": 9.0, "score_min": 0, "score_max": 1}, "pool_kernel": 8}}
    folder = write_fake_export(tmp_path / "m", graph_meta_override={"transformer": other})
    with pytest.raises(AdtrError, match="'postprocess' differs from manifest.json"):
        OnnxRuntimeBackend(folder).activate()


def test_graph_named_for_the_other_stage_is_refused(tmp_path):
    folder = write_fake_export(tmp_path / "m", graph_meta_override={"backbone": {"graph": "transformer"}})
    with pytest.raises(AdtrError, match="metadata says graph 'transformer'"):
        OnnxRuntimeBackend(folder).activate()


def test_qdq_int8_folder_runs(tmp_path):
    folder = write_fake_export(tmp_path / "q", qdq=True)
    plain = write_fake_export(tmp_path / "p")
    images = _images(2, seed=3)
    with OnnxRuntimeBackend(folder) as q, OnnxRuntimeBackend(plain) as p:
        np.testing.assert_allclose(q.infer(images).score, p.infer(images).score, rtol=1e-6)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
        (lambda d: (d / "manifest.json").write_text("{"), "not valid JSON"),
        (lambda d: _edit(d, kind="pytorch"), "kind 'pytorch'"),
        (lambda d: _edit(d, format="other/9"), "format 'other/9'"),
        (lambda d: (d / "backbone.onnx").unlink(), "graph file missing"),
        (lambda d: _edit_graph(d, file="../x.onnx"), "must be a name inside the folder"),
    ],
)
def test_bad_model_folders(tmp_path, mutate, message):
    folder = write_fake_export(tmp_path / "m")
    mutate(folder)
    with pytest.raises(AdtrError, match=message):
        loading.load_backend(folder).activate()


def _edit(folder, **changes):
    m = json.loads((folder / "manifest.json").read_text())
    m.update(changes)
    (folder / "manifest.json").write_text(json.dumps(m))


def _edit_graph(folder, **changes):
    m = json.loads((folder / "manifest.json").read_text())
    m["graphs"]["backbone"].update(changes)
    (folder / "manifest.json").write_text(json.dumps(m))


def test_missing_folder_names_the_path(tmp_path):
    with pytest.raises(AdtrError, match="model folder not found: .*nope"):
        loading.read_model_folder(tmp_path / "nope")


def test_backend_choice(export_dir, tmp_path, monkeypatch, caplog):
    folder = loading.read_model_folder(export_dir / "manifest.json")  # the manifest path works too
    assert loading.choose_backend(folder, "auto")[0] == "onnxruntime"
    assert loading.choose_backend(folder, "onnxruntime") == ("onnxruntime", "requested")
    with pytest.raises(AdtrError, match="tensorrt backend runs an engine folder"):
        loading.choose_backend(folder, "tensorrt")
    with pytest.raises(AdtrError, match="--backend 'cuda'"):
        loading.choose_backend(folder, "cuda")

    engine = write_fake_export(tmp_path / "engine")
    _edit(engine, kind="tensorrt", format="adtr-edge-engine/1")
    trt_folder = loading.read_model_folder(engine)
    from adtr_edge.runtime.backends import tensorrt as trt_backend  # the registry's probe, looked up when called

    monkeypatch.setattr(trt_backend, "available", lambda: (False, "no libnvinfer"))
    with pytest.raises(AdtrError, match="TensorRT cannot run here: no libnvinfer"):
        loading.choose_backend(trt_folder, "auto")
    with pytest.raises(AdtrError, match="onnxruntime runs the ONNX export"):
        loading.choose_backend(trt_folder, "onnxruntime")
    monkeypatch.setattr(trt_backend, "available", lambda: (True, "TensorRT 10.3"))
    assert loading.choose_backend(trt_folder, "auto") == ("tensorrt", "the folder holds TensorRT engines; TensorRT 10.3")

    with caplog.at_level("INFO", logger="adtr_edge.runtime.loading"):
        loading.load_backend(export_dir)
    assert "backend onnxruntime" in caplog.text and "ONNX export" in caplog.text


def test_engine_format_constant_matches_the_engine_package():
    from adtr_edge.engine.manifest import ENGINE_FORMAT

    assert loading.ENGINE_FORMAT == ENGINE_FORMAT


def test_tensorrt_availability_tolerates_a_missing_module(monkeypatch):
    # tensorrt itself missing: the shim's reason comes through
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    ok, reason = loading.tensorrt_available()
    assert ok is False and "TensorRT is not installed" in reason
    # the backend module itself cannot import (a broken install): named, never an exception
    import adtr_edge.runtime.backends as backends

    monkeypatch.setitem(sys.modules, "adtr_edge.runtime.backends.tensorrt", None)
    monkeypatch.delattr(backends, "tensorrt", raising=False)
    ok, reason = loading.tensorrt_available()
    assert ok is False and reason.startswith("TensorRT backend unavailable (ModuleNotFoundError")


def test_runtime_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; import adtr_edge.runtime.pipeline, adtr_edge.runtime.cli, adtr_edge.runtime.loading, "
        "adtr_edge.runtime.backends.onnxruntime; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_backend_options_that_do_not_apply_are_named(export_dir):
    with pytest.raises(AdtrError, match=r"backend option\(s\) \['cuda_graphs'\] do not apply to the onnxruntime backend"):
        loading.load_backend(export_dir, cuda_graphs=True)
    assert loading.load_backend(export_dir, intra_op_threads=1).intra_op_threads == 1


def test_spinning_option_reaches_the_sessions(export_dir):
    be = loading.load_backend(export_dir, backend="onnxruntime", spinning=False, intra_op_threads=2)
    with be:
        for sess in be.sessions.values():
            assert sess.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = loading.load_backend(export_dir, backend="onnxruntime")
    with default:
        opts = next(iter(default.sessions.values())).get_session_options()
        with pytest.raises(RuntimeError, match="does not have configuration"):  # left to ONNX Runtime's default
            opts.get_session_config_entry("session.intra_op.allow_spinning")


def test_stream_no_spin_flag_is_a_backend_option(export_dir, monkeypatch):
    import adtr_edge.runtime.pipeline as pipeline
    from adtr_edge.runtime.cli import main as cli_main

    calls = []
    monkeypatch.setattr(pipeline, "run_stream", lambda model_dir, source, **kw: calls.append(kw) or {"errors": [], "stopped_by": "end of source"})
    assert cli_main(["stream", str(export_dir), "--camera", "0", "--threads", "4", "--no-spin"]) == 0
    assert calls[-1]["backend_options"] == {"intra_op_threads": 4, "spinning": False}
    assert cli_main(["stream", str(export_dir), "--camera", "0"]) == 0
    assert calls[-1]["backend_options"] == {}
