"""``adtr-edge export-triton``: the repository's layout, and every config.pbtxt read back with Triton's
own protobuf schema (``tritonclient.grpc.model_config_pb2``). The ``python`` flavour is also served
by a real server in tests/test_triton_server.py; ``onnxruntime_onnx`` and ``tensorrt_plan`` need
backends that server lacks, so the schema and the layout are what is checked here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adtr_edge.cli import main
from adtr_edge.errors import AdtrError
from adtr_edge.export.triton_repo import REPO_MANIFEST, TritonOptions, export_triton
from adtr_edge.fileio import sha256_file
from tests.runtime_fakes import CHANNELS, GRID, SIZE, THRESHOLD, fake_meta, session_config_entry, write_fake_export

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed (pip install -e '.[triton]')")
text_format = pytest.importorskip("google.protobuf.text_format")


def read_config(model_dir: Path):
    """Parse a config.pbtxt strictly (an unknown field or a bad value raises ParseError)."""
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


def params(cfg) -> dict:
    return {k: v.string_value for k, v in cfg.parameters.items()}


def write_fake_engines(folder: Path, export: Path, profile=(1, 2, 4)) -> Path:
    """An engine folder manifest as build-engine writes it, with placeholder plan bytes (no GPU here:
    the plans are copied into the repository, never deserialised)."""
    folder.mkdir(parents=True)
    src = json.loads((export / "manifest.json").read_text())
    engines = {}
    for graph in ("backbone", "transformer"):
        path = folder / f"{graph}.engine"
        path.write_bytes(f"plan bytes of {graph}".encode())
        engines[graph] = {"file": path.name, "sha256": sha256_file(path), "onnx_sha256": src["graphs"][graph]["sha256"],
                          "precision": "fp16", "profile": list(profile)}
    manifest = {"format": "adtr-edge-engine/1", "kind": "tensorrt", "name": "fake", "source": str(export),
                "trt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"}, "engines": engines, "meta": fake_meta().raw}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    return write_fake_export(tmp_path_factory.mktemp("triton_src") / "model")


def test_python_flavour_layout_and_configs(tmp_path, export):
    repo = tmp_path / "repo"
    summary = export_triton(export, repo)
    manifest = json.loads((export / "manifest.json").read_text())
    assert sorted(p.name for p in repo.iterdir()) == ["adtr", "adtr_backbone", "adtr_edge_repository.json", "adtr_transformer"]
    assert json.loads((repo / REPO_MANIFEST).read_text()) == summary
    for graph in ("backbone", "transformer"):
        files = sorted(p.name for p in (repo / f"adtr_{graph}" / "1").iterdir())
        assert files == ["model.onnx", "model.py"]
        assert sha256_file(repo / f"adtr_{graph}" / "1" / "model.onnx") == manifest["graphs"][graph]["sha256"]
    assert list((repo / "adtr" / "1").iterdir()) == []  # the ensemble's (empty) version folder

    bb, tr, ens = (read_config(repo / n) for n in ("adtr_backbone", "adtr_transformer", "adtr"))
    assert bb.backend == tr.backend == "python" and ens.platform == "ensemble"
    assert bb.max_batch_size == tr.max_batch_size == ens.max_batch_size == 8
    assert [(t.name, t.data_type, list(t.dims)) for t in bb.input] == [("images", model_config_pb2.TYPE_UINT8, [SIZE, SIZE, 3])]
    assert [(t.name, list(t.dims)) for t in bb.output] == [("features", [CHANNELS, GRID, GRID])]
    score = {t.name: t for t in tr.output}["score"]
    assert list(score.dims) == [1] and score.HasField("reshape") and list(score.reshape.shape) == []
    assert {t.name: list(t.dims) for t in ens.output} == {"anomaly_map": [1, SIZE, SIZE], "score": [1]}
    for cfg in (bb, tr):
        assert cfg.HasField("dynamic_batching") and list(cfg.dynamic_batching.preferred_batch_size) == [4, 8]
        assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_CPU)]
        assert cfg.version_policy.latest.num_versions == 1
    steps = [(s.model_name, dict(s.input_map), dict(s.output_map)) for s in ens.ensemble_scheduling.step]
    assert steps == [("adtr_backbone", {"images": "images"}, {"features": "features"}),
                     ("adtr_transformer", {"features": "features"}, {"anomaly_map": "anomaly_map", "score": "score"})]
    for cfg, graph in ((bb, "backbone"), (tr, "transformer"), (ens, "ensemble")):
        p = params(cfg)
        assert p["adtr_edge_graph"] == graph and float(p["adtr_edge_threshold"]) == THRESHOLD
        assert p["adtr_edge_backbone_onnx_sha256"] == manifest["graphs"]["backbone"]["sha256"]
        assert p["adtr_edge_transformer_onnx_sha256"] == manifest["graphs"]["transformer"]["sha256"]
        assert json.loads(p["adtr_edge_meta"]) == manifest["meta"]  # the JSON survives pbtxt escaping


def test_onnxruntime_flavour_for_the_full_triton_image(tmp_path, export):
    repo = tmp_path / "repo"
    export_triton(export, repo, TritonOptions(flavour="onnxruntime_onnx", name="line3", max_batch=16, instances=2))
    assert sorted(p.name for p in (repo / "line3_backbone" / "1").iterdir()) == ["model.onnx"]
    bb, ens = read_config(repo / "line3_backbone"), read_config(repo / "line3")
    assert (bb.platform, bb.backend, bb.default_model_filename) == ("onnxruntime_onnx", "onnxruntime", "model.onnx")
    assert bb.max_batch_size == ens.max_batch_size == 16 and list(bb.dynamic_batching.preferred_batch_size) == [8, 16]
    assert [(g.count, g.kind) for g in bb.instance_group] == [(2, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    assert [s.model_name for s in ens.ensemble_scheduling.step] == ["line3_backbone", "line3_transformer"]
    assert "intra_op_threads" not in params(bb)


def test_tensorrt_plan_flavour_from_an_engine_folder(tmp_path, export):
    engines = write_fake_engines(tmp_path / "engines", export, profile=(1, 2, 4))
    repo = tmp_path / "repo"
    summary = export_triton(engines, repo, TritonOptions(flavour="tensorrt_plan"))
    for graph in ("backbone", "transformer"):
        plan = repo / f"adtr_{graph}" / "1" / "model.plan"
        assert plan.read_bytes() == (engines / f"{graph}.engine").read_bytes()
        cfg = read_config(repo / f"adtr_{graph}")
        assert (cfg.platform, cfg.backend, cfg.default_model_filename) == ("tensorrt_plan", "tensorrt", "model.plan")
        assert cfg.max_batch_size == 4  # the engines' profile max
    # The digests are those of the ONNX graphs the engines were built from: the export's.
    export_manifest = json.loads((export / "manifest.json").read_text())
    assert summary["onnx_sha256"] == {g: export_manifest["graphs"][g]["sha256"] for g in ("backbone", "transformer")}
    with pytest.raises(AdtrError, match="--max-batch 8: the engines .* up to 4"):
        export_triton(engines, tmp_path / "big", TritonOptions(flavour="tensorrt_plan", max_batch=8))
    with pytest.raises(AdtrError, match="flavour python needs an ONNX export"):
        export_triton(engines, tmp_path / "py", TritonOptions(flavour="python"))
    with pytest.raises(AdtrError, match="tensorrt_plan needs a TensorRT engine folder"):
        export_triton(export, tmp_path / "plan", TritonOptions(flavour="tensorrt_plan"))
    (engines / "backbone.engine").write_bytes(b"changed")
    with pytest.raises(AdtrError, match="backbone.engine: engine file does not match its manifest"):
        export_triton(engines, tmp_path / "changed", TritonOptions(flavour="tensorrt_plan"))
    assert not (tmp_path / "changed").exists()


def test_written_atomically_and_replaced_only_with_force(tmp_path, export):
    repo = tmp_path / "repo"
    export_triton(export, repo)
    marker = repo / "adtr" / "config.pbtxt"
    before = marker.read_text()
    with pytest.raises(AdtrError, match="already exists .*--force"):
        export_triton(export, repo, TritonOptions(name="other"))
    assert marker.read_text() == before
    export_triton(export, repo, TritonOptions(name="other"), force=True)
    assert sorted(p.name for p in repo.iterdir()) == ["adtr_edge_repository.json", "other", "other_backbone", "other_transformer"]
    # A graph that is not the one its manifest lists stops the export before anything is written.
    broken = write_fake_export(tmp_path / "broken")
    (broken / "transformer.onnx").write_bytes((broken / "transformer.onnx").read_bytes() + b"\0")
    with pytest.raises(AdtrError, match="transformer.onnx: sha256"):
        export_triton(broken, tmp_path / "never")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "repo"]  # no temporary folder left behind


def test_cli_writes_the_repository_and_refuses_bad_options_in_one_line(tmp_path, export, capsys):
    repo = tmp_path / "repo"
    assert main(["export-triton", str(export), "--out", str(repo), "--instances", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "ensemble 'adtr' = adtr_backbone -> adtr_transformer" in out and "tritonserver --model-repository=" in out
    bb = read_config(repo / "adtr_backbone")
    assert bb.instance_group[0].count == 2 and params(bb)["intra_op_threads"] == "1"
    for args, needle in ((["--flavour", "tensorflow"], "--flavour 'tensorflow'"), (["--name", "a b"], "--name 'a b'"),
                         (["--kind", "tpu"], "--kind 'tpu'"), (["--max-batch", "0"], "--max-batch must be >= 1")):
        assert main(["export-triton", str(export), "--out", str(tmp_path / "bad"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "bad").exists()


def tensorrt_form_export(folder: Path) -> Path:
    """A fake export whose metadata says TensorRT-form INT8 (its backbone has a Q/DQ pair)."""
    quant = {"quantization": {"target": "tensorrt"}}
    write_fake_export(folder, qdq=True, graph_meta_override={"backbone": quant, "transformer": quant})
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["meta"].update(quant)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def load_python_model(monkeypatch, model_dir: Path):
    """Run the python flavour's model.py ``initialize`` as Triton's stub does: the config as JSON
    (protobuf's JSON form, field names kept), the version folder's path. The stub's own utilities
    module is not needed by ``initialize``, so an empty module stands in for it."""
    import importlib.util
    import sys
    import types

    from google.protobuf import json_format

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    spec = importlib.util.spec_from_file_location("triton_model_py", model_dir / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = json_format.MessageToDict(read_config(model_dir), preserving_proto_field_name=True)
    model = module.TritonPythonModel()
    model.initialize({"model_config": json.dumps(config), "model_repository": str(model_dir), "model_version": "1"})
    return model


def test_python_flavour_runs_a_tensorrt_form_folder_with_its_session_config(tmp_path, export, monkeypatch):
    pytest.importorskip("onnxruntime")
    trt_form = tensorrt_form_export(tmp_path / "trt-form")
    for source, expected in ((export, None), (trt_form, "1")):
        repo = tmp_path / f"repo-{source.name}"
        export_triton(source, repo)
        for graph in ("backbone", "transformer"):
            cfg = read_config(repo / f"adtr_{graph}")
            assert json.loads(params(cfg)["onnxruntime_session_config"]) == ({"session.disable_quant_qdq": expected} if expected else {})
            model = load_python_model(monkeypatch, repo / f"adtr_{graph}")
            assert session_config_entry(model.session) == expected
    # Triton's onnxruntime backend cannot set the entry: refused on the CPU, allowed on the GPU.
    with pytest.raises(AdtrError, match="trt-form: a TensorRT-form INT8 folder needs .*session.disable_quant_qdq.*--flavour python"):
        export_triton(trt_form, tmp_path / "cpu", TritonOptions(flavour="onnxruntime_onnx", kind="cpu"))
    assert not (tmp_path / "cpu").exists()
    export_triton(trt_form, tmp_path / "gpu", TritonOptions(flavour="onnxruntime_onnx"))
