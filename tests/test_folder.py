"""The one model-folder reader (adtr_edge.folder) and the commands that all go through it."""

from __future__ import annotations

import json

import pytest
from tests.runtime_fakes import write_fake_export

from adtr_edge import folder as mf
from adtr_edge.bench import resolve_targets
from adtr_edge.errors import AdtrError
from adtr_edge.runtime import loading


def _edit(path, **changes):
    m = json.loads((path / "manifest.json").read_text())
    m.update(changes)
    (path / "manifest.json").write_text(json.dumps(m))
    return path


def _qdq(tmp_path):
    return _edit(write_fake_export(tmp_path / "int8", qdq=True), kind="onnx-qdq")


def test_the_kinds_table_names_every_folder_the_toolkit_writes():
    assert set(mf.KINDS) == {"onnx", "onnx-qdq", "tensorrt", "checkpoint"}
    assert {k: v.backend for k, v in mf.KINDS.items()} == {
        "onnx": "onnxruntime", "onnx-qdq": "onnxruntime", "tensorrt": "tensorrt", "checkpoint": "torch"}
    assert set(mf.RUNTIME_KINDS) == {"onnx", "onnx-qdq", "tensorrt"}
    assert loading.ENGINE_FORMAT == mf.ENGINE_FORMAT  # the runtime re-exports the table's constants


def test_every_kind_is_read(tmp_path):
    assert mf.read_model_folder(write_fake_export(tmp_path / "e")).kind == "onnx"
    qdq = mf.read_model_folder(_qdq(tmp_path))
    assert qdq.kind == "onnx-qdq" and qdq.is_onnx and qdq.backend == "onnxruntime"
    engine = mf.read_model_folder(_edit(write_fake_export(tmp_path / "t"), kind="tensorrt", format="adtr-edge-engine/1"))
    assert engine.kind == "tensorrt" and not engine.is_onnx
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "checkpoint.json").write_text("{}")
    found = mf.read_model_folder(ckpt)
    assert found.kind == "checkpoint" and found.meta is None and found.backend == "torch"


def test_read_export_refuses_a_graph_outside_the_folder(tmp_path):
    folder = write_fake_export(tmp_path / "e")
    m = json.loads((folder / "manifest.json").read_text())
    m["graphs"]["transformer"]["file"] = "../transformer.onnx"
    (folder / "manifest.json").write_text(json.dumps(m))
    (tmp_path / "transformer.onnx").write_bytes((folder / "transformer.onnx").read_bytes())
    with pytest.raises(AdtrError, match="must be a name inside the folder"):
        mf.read_export(folder)


def test_a_folder_of_the_wrong_kind_is_named(tmp_path):
    engine = _edit(write_fake_export(tmp_path / "t"), kind="tensorrt", format="adtr-edge-engine/1")
    with pytest.raises(AdtrError, match=r"is a TensorRT engine folder \(adtr-edge build-engine\); quantize needs an ONNX export or a Q/DQ"):
        mf.read_export(engine, purpose="quantize")


def test_bench_runs_a_qdq_folder_that_stream_runs(tmp_path):
    qdq = _qdq(tmp_path)
    assert loading.choose_backend(mf.read_model_folder(qdq))[0] == "onnxruntime"
    (target,) = resolve_targets([qdq])
    assert target.available, target.reason
    assert (target.kind, target.backend, target.precision) == ("onnx-qdq", "onnxruntime", "int8-qdq-emulated")


def test_the_runtime_refuses_a_checkpoint_with_the_fix(tmp_path):
    (tmp_path / "checkpoint.json").write_text("{}")
    with pytest.raises(AdtrError, match="is a training checkpoint; the runtime runs an ONNX export of it"):
        loading.load_backend(tmp_path)


def test_recorded_sha256_reads_an_export_and_names_a_missing_entry(tmp_path):
    import json

    from adtr_edge.errors import AdtrError
    from adtr_edge.folder import MANIFEST, ModelFolder, ONNX, recorded_sha256

    manifest = {"graphs": {"backbone": {"file": "backbone.onnx", "sha256": "ab" * 32}, "transformer": {"file": "transformer.onnx"}}}
    (tmp_path / MANIFEST).write_text(json.dumps(manifest))
    folder = ModelFolder(path=tmp_path, kind=ONNX, manifest=manifest, meta=None)
    with pytest.raises(AdtrError, match=r"manifest.json: graph 'transformer' has no sha256"):
        recorded_sha256(folder)
    manifest["graphs"]["transformer"]["sha256"] = "cd" * 32
    assert recorded_sha256(folder) == {"backbone": "ab" * 32, "transformer": "cd" * 32}
