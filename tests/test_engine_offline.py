"""GPU-free parts of the engine area: cache format, cache store, precision plans, FP16 conversion,
Q/DQ quantisation, manifest keys, version shim and error paths."""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from adtr_edge.engine import calibration as calib
from adtr_edge.engine import onnx_tools
from adtr_edge.engine.builder import BuildOptions, build_engines, plan_precisions
from adtr_edge.engine.manifest import EngineKey, Profile
from adtr_edge.engine.trt_api import TrtApi, parse_version
from adtr_edge.errors import AdtrError
from adtr_edge.preprocessing import PreprocessSpec
from adtr_edge.cuda import CudaRuntime
from tests.trt_standin.fake_trt import make_cudart, make_tensorrt
from tests.trt_standin.graphs import make_export, write_images
from tests.runtime_fakes import session_config_entry


def test_cache_format_round_trip_and_known_bits():
    data = b"TRT-8601-EntropyCalibration2\nimages: 3c010204\nfeatures: 3f800000\n"
    table = calib.parse_cache(data)
    assert table.header == "TRT-8601-EntropyCalibration2"
    assert table.scales["features"] == 1.0
    assert table.scales["images"] == struct.unpack(">f", bytes.fromhex("3c010204"))[0]
    assert calib.format_cache(table) == data


@pytest.mark.parametrize("bad", [b"", b"images: 3f800000\n", b"TRT-1-X\nimages 3f800000\n", b"TRT-1-X\nimages: zz\n", b"\xff\xfe"])
def test_cache_format_rejects_malformed(bad):
    with pytest.raises(AdtrError):
        calib.parse_cache(bad, "c.cache")


def test_cache_store_reuse_stale_recalibrate(tmp_path):
    spec = PreprocessSpec(32, 32)
    store = calib.CacheStore(tmp_path)
    k1 = calib.make_key("backbone", "a" * 64, "b" * 64, spec, trt_version="10.3.0")
    assert k1.filename.startswith("backbone-aaaaaaaaaaaa-bbbbbbbbbbbb-") and k1.filename.endswith(".cache")
    assert store.lookup(k1) is None
    store.write(k1, b"TRT-8601-EntropyCalibration2\nimages: 3f800000\n")
    assert store.lookup(k1) == tmp_path / k1.filename
    assert json.loads((tmp_path / k1.filename).with_suffix(".json").read_text())["key"]["graph"] == "backbone"
    k2 = calib.make_key("backbone", "a" * 64, "c" * 64, spec, trt_version="10.3.0")
    with pytest.raises(AdtrError, match="--recalibrate"):
        store.lookup(k2)
    assert store.lookup(k2, recalibrate=True) is None and not (tmp_path / k1.filename).exists()
    # the transformer key depends on the backbone that produced its features
    assert calib.make_key("transformer", "t" * 64, "b" * 64, spec, "x" * 64, trt_version="10.3.0") != calib.make_key("transformer", "t" * 64, "b" * 64, spec, "y" * 64, trt_version="10.3.0")
    with pytest.raises(AdtrError):
        store.write(k1, b"garbage")


def test_backbone_batches_use_preprocessing(tmp_path):
    imgs = write_images(tmp_path / "i", n=5, size=(40, 36))
    paths = calib.calibration_images(imgs, 0)
    batches = calib.backbone_batches(paths, PreprocessSpec(32, 32), 2)
    assert len(batches) == 2 and batches[0].shape == (2, 32, 32, 3) and batches[0].dtype == np.uint8
    with pytest.raises(AdtrError, match="at least 8"):
        calib.backbone_batches(paths, PreprocessSpec(32, 32), 8)
    with pytest.raises(AdtrError, match="no images"):
        calib.calibration_images(tmp_path, 4)


def _api(v):
    return TrtApi(make_tensorrt(v))


def test_version_parsing_and_predicates():
    assert parse_version("10.3.0.30") == (10, 3) and parse_version("8.6.1") == (8, 6)
    with pytest.raises(AdtrError):
        parse_version("dev")
    with pytest.raises(AdtrError, match="too old"):
        TrtApi(type("M", (), {"__version__": "8.4.3"}))
    a85, a86, a10, a11 = (_api(v) for v in ("8.5.2.2", "8.6.2.3", "10.3.0.30", "11.1.0.7"))
    assert a85.needs_explicit_batch_flag and a86.needs_explicit_batch_flag and not a10.needs_explicit_batch_flag
    assert not a85.supports_qdq and a86.supports_qdq
    assert a10.has_calibrators and not a11.has_calibrators and not a11.weakly_typed
    assert not a85.has_strongly_typed_flag and a10.has_strongly_typed_flag


def test_strict_standin_hides_removed_names():
    trt11, trt10, trt85 = make_tensorrt("11.1.0.7"), make_tensorrt("10.3.0.30"), make_tensorrt("8.5.2.2")
    with pytest.raises(AttributeError):
        trt11.BuilderFlag.FP16
    with pytest.raises(AttributeError):
        trt11.IInt8EntropyCalibrator2
    with pytest.raises(AttributeError):
        trt11.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    with pytest.raises(AttributeError):
        trt85.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    b = trt10.Builder(trt10.Logger())
    with pytest.raises(AttributeError):
        b.build_engine
    with pytest.raises(AttributeError):
        b.create_builder_config().max_workspace_size = 1
    with pytest.raises(AttributeError):
        _api("11.1.0.7").set_precision_flags  # exists on the shim...
        trt11.Builder(trt11.Logger()).create_builder_config().int8_calibrator


def test_precision_plans():
    opts = lambda **kw: BuildOptions(**kw)  # noqa: E731
    p = plan_precisions(_api("10.3.0.30"), opts(precision="int8"), {})
    assert (p["backbone"].precision, p["backbone"].int8_source, p["transformer"].precision) == ("int8", "calibrator", "fp16")
    assert p["transformer"].pin_sensitive and p["backbone"].fp16_flag and p["backbone"].int8_flag
    p = plan_precisions(_api("10.3.0.30"), opts(precision="fp16", backbone_precision="fp32"), {})
    assert p["backbone"].precision == "fp32" and not p["backbone"].fp16_flag
    p = plan_precisions(_api("11.1.0.7"), opts(precision="int8"), {"backbone": True})
    assert p["backbone"].int8_source == "qdq" and p["transformer"].convert_fp16 and not p["backbone"].int8_flag
    with pytest.raises(AdtrError, match="quantize"):
        plan_precisions(_api("11.1.0.7"), opts(precision="int8"), {})
    with pytest.raises(AdtrError, match="Q/DQ"):
        plan_precisions(_api("8.5.2.2"), opts(precision="int8"), {"backbone": True})
    static = Profile(2, 2, 2)
    p = plan_precisions(_api("8.6.2.3"), opts(precision="int8", dla_core=0, profile=static), {"backbone": True})
    assert p["backbone"].int8_source == "qdq" and p["backbone"].int8_flag and p["backbone"].dla_core == 0
    with pytest.raises(AdtrError, match="DLA"):
        plan_precisions(_api("10.3.0.30"), opts(precision="fp32", dla_core=0, profile=static), {})
    with pytest.raises(AdtrError, match="--precision"):
        plan_precisions(_api("10.3.0.30"), opts(precision="int4"), {})
    with pytest.raises(AdtrError, match="min <= opt <= max"):
        Profile(2, 1, 4)


def test_engine_key_covers_every_input():
    base = dict(graph="backbone", onnx_sha256="a", calibration_sha256=None, trt_version="10.3.0.30", gpu_name="Orin",
                compute_capability="8.7", precision="fp16", profile=(1, 1, 4), flags={"dla_core": None})
    k = EngineKey(**base).digest
    for field, value in [("onnx_sha256", "b"), ("calibration_sha256", "c"), ("trt_version", "10.3.0.31"), ("gpu_name", "X"),
                         ("compute_capability", "8.9"), ("precision", "int8"), ("profile", (1, 2, 4)), ("flags", {"dla_core": 0})]:
        assert EngineKey(**dict(base, **{field: value})).digest != k, field


def test_fp16_conversion_keeps_io_types_and_sensitive_fp32(tmp_path):
    for dec in (False, True):
        exp = make_export(tmp_path / f"e{dec}", decomposed_ln=dec)
        model = onnx_tools.load(exp / "transformer.onnx")
        m16 = onnx_tools.convert_to_fp16(model)
        assert [i.type.tensor_type.elem_type for i in m16.graph.input] == [onnx.TensorProto.FLOAT]
        assert {o.type.tensor_type.elem_type for o in m16.graph.output} == {onnx.TensorProto.FLOAT}
        types = {i.name: i.data_type for i in m16.graph.initializer}
        assert types["w1"] == onnx.TensorProto.FLOAT16 and types["ln_gamma"] == onnx.TensorProto.FLOAT
        assert types["resize_scales"] == onnx.TensorProto.FLOAT
        inferred = {v.name: v.type.tensor_type.elem_type for v in m16.graph.value_info}
        soft = next(n for n in m16.graph.node if n.name == "softmax")
        assert inferred[soft.input[0]] == onnx.TensorProto.FLOAT and inferred[soft.output[0]] == onnx.TensorProto.FLOAT
        feats = np.random.default_rng(0).standard_normal((2, 8, 4, 4)).astype(np.float32)
        ref = ort.InferenceSession(model.SerializeToString()).run(None, {"features": feats})
        got = ort.InferenceSession(m16.SerializeToString()).run(None, {"features": feats})
        np.testing.assert_allclose(got[0], ref[0], rtol=2e-2, atol=2e-3)
    bb16 = onnx_tools.convert_to_fp16(onnx_tools.load(exp / "backbone.onnx"))
    assert bb16.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_quantize_writes_qdq_graphs_that_onnxruntime_runs(tmp_path):
    from adtr_edge.int8.quantize import parse_graphs, quantize_export
    from adtr_edge.metadata import read_onnx_metadata

    exp = make_export(tmp_path / "export")
    imgs = write_images(tmp_path / "imgs", n=8)
    out = quantize_export(exp, imgs, tmp_path / "q", parse_graphs("backbone,transformer"), 8, 4, log=lambda s: None)
    for g in ("backbone", "transformer"):
        model = onnx.load(str(out / f"{g}.onnx"))
        assert onnx_tools.has_qdq(model)
        meta = read_onnx_metadata(model)
        assert meta.raw["quantization"]["activation_symmetric"] and meta.graph == g
        # LayerNorm / Softmax stay float: no DequantizeLinear feeds them directly from their own Q.
        zero_points = [i for i in model.graph.initializer if i.name.endswith("_zero_point")]
        assert zero_points and all(not onnx.numpy_helper.to_array(z).any() for z in zero_points)
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    f_ref = ort.InferenceSession(str(exp / "backbone.onnx")).run(None, {"images": x})[0]
    f_q = ort.InferenceSession(str(out / "backbone.onnx")).run(None, {"images": x})[0]
    assert np.abs(f_q - f_ref).mean() < 0.05 * np.abs(f_ref).max()  # int8: close on average, not exact
    assert np.abs(f_q - f_ref).max() > 0  # and really quantised
    doc = json.loads((out / "manifest.json").read_text())
    assert doc["graphs"]["backbone"]["quantized"] and doc["meta"]["quantization"]["graphs"] == ["backbone", "transformer"]
    with pytest.raises(AdtrError, match="already quantised"):
        quantize_export(out, imgs, tmp_path / "q2", ["backbone"], 8, 4, log=lambda s: None)
    with pytest.raises(AdtrError, match="--graphs"):
        parse_graphs("head")
    # build-engine takes the Q/DQ folder: INT8 from the graph, refused on 8.5
    cuda = CudaRuntime(make_cudart())
    for v in ("8.6.2.3", "10.3.0.30", "11.1.0.7"):
        trt = make_tensorrt(v)
        r = build_engines(out, tmp_path / f"eng{v}", "q", BuildOptions(precision="int8"), api=TrtApi(trt), cuda=cuda, log=lambda s: None)
        assert r.plans["backbone"].int8_source == "qdq" and trt._built[0]["qdq"]
        assert ("INT8" in trt._built[0]["flags"]) == (v != "11.1.0.7")
    with pytest.raises(AdtrError, match="cannot build Q/DQ"):
        build_engines(out, tmp_path / "e85", "q", BuildOptions(precision="int8"), api=_api("8.5.2.2"), cuda=cuda, log=lambda s: None)


def test_cpu_target_writes_the_onnxruntime_form_that_tensorrt_refuses(tmp_path):
    from adtr_edge.int8.quantize import parse_graphs, parse_target, quantize_export
    from adtr_edge.metadata import quantization_target as target_of, read_onnx_metadata

    exp = make_export(tmp_path / "export")
    imgs = write_images(tmp_path / "imgs", n=8)
    lines = []
    out = quantize_export(exp, imgs, tmp_path / "q", None, 8, 4, log=lines.append, target="cpu")
    bb, tr = (onnx.load(str(out / f"{g}.onnx")) for g in ("backbone", "transformer"))
    # backbone: static, uint8 activations (non-zero zero points), weights int8
    zps = {i.name: onnx.numpy_helper.to_array(i) for i in bb.graph.initializer if i.name.endswith("_zero_point")}
    assert any(z.dtype == np.uint8 and z.any() for z in zps.values())
    assert any(z.dtype == np.int8 for z in zps.values())
    # transformer: dynamic (no calibration), the head and LayerNorm/Softmax untouched
    ops = {n.op_type for n in tr.graph.node}
    assert "DynamicQuantizeLinear" in ops and onnx_tools.is_quantized(tr)
    kept = set(onnx_tools.sensitive_nodes(onnx.load(str(exp / "transformer.onnx"))))
    assert kept and kept <= {n.name for n in tr.graph.node}  # LayerNorm, Softmax (and a head) kept as they were
    assert any("dynamic" in line for line in lines)
    meta = read_onnx_metadata(tr).raw
    assert target_of(meta) == "cpu" and meta["quantization"]["per_graph"]["transformer"]["mode"] == "dynamic"
    assert parse_graphs(None, "cpu") == ["backbone", "transformer"] and parse_graphs(None, "tensorrt") == ["backbone"]
    x = np.random.default_rng(0).integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
    ref = [ort.InferenceSession(str(exp / f"{g}.onnx")) for g in ("backbone", "transformer")]
    got = [ort.InferenceSession(str(out / f"{g}.onnx")) for g in ("backbone", "transformer")]
    f_ref, f_q = (s[0].run(None, {"images": x})[0] for s in (ref, got))
    assert 0 < np.abs(f_q - f_ref).mean() < 0.05 * np.abs(f_ref).max()
    s_ref, s_q = (s[1].run(None, {"features": f_ref})[1] for s in (ref, got))
    np.testing.assert_allclose(s_q, s_ref, rtol=0.1)
    with pytest.raises(AdtrError, match="already quantised"):  # a dynamic graph counts as quantised too
        quantize_export(out, imgs, tmp_path / "q2", ["transformer"], 8, 4, log=lambda s: None, target="cpu")
    with pytest.raises(AdtrError, match="--target 'gpu'"):
        parse_target("gpu")
    with pytest.raises(AdtrError, match="TensorRT cannot build; make the TensorRT form with 'adtr-edge quantize --target tensorrt'"):
        build_engines(out, tmp_path / "eng", "q", BuildOptions(precision="int8"), api=_api("10.3.0.30"),
                      cuda=CudaRuntime(make_cudart()), log=lambda s: None)
    assert target_of({}) is None and target_of({"quantization": {"graphs": ["backbone"]}}) == "tensorrt"  # older folders


def test_keep_float_plan_and_exact_qdq_for_the_tensorrt_form(tmp_path):
    from adtr_edge.int8.quantize import float_plan, quantize_export
    from adtr_edge.runtime.backends.onnxruntime import OnnxRuntimeBackend

    exp = make_export(tmp_path / "export")
    imgs = write_images(tmp_path / "imgs", n=8)
    bb = onnx.load(str(exp / "backbone.onnx"))
    assert float_plan(bb, "none", [1]) == [] and float_plan(bb, "auto", [1]) == []  # no timm names: nothing kept
    assert float_plan(bb, "conv", [1]) == ["conv"]
    with pytest.raises(AdtrError, match="--keep-float 'nope': no backbone node"):
        float_plan(bb, "nope", [1])
    trt_form = quantize_export(exp, imgs, tmp_path / "t", ["backbone"], 8, 4, log=lambda s: None, keep_float="conv")
    meta = json.loads((trt_form / "manifest.json").read_text())["meta"]["quantization"]
    assert meta["float_nodes"] == {"backbone": ["conv"]} and meta["keep_float"] == "conv"
    # the only Conv kept float: no Q/DQ left around it
    q = onnx.load(str(trt_form / "backbone.onnx"))
    assert not any(n.op_type == "DequantizeLinear" and n.output[0] in {i for c in q.graph.node if c.name == "conv" for i in c.input}
                   for n in q.graph.node)
    cpu_form = quantize_export(exp, imgs, tmp_path / "c", None, 8, 4, log=lambda s: None, target="cpu")
    for folder, exact in ((trt_form, "1"), (cpu_form, None), (exp, None)):
        b = OnnxRuntimeBackend(folder).activate()
        entry = session_config_entry(b.sessions["backbone"])
        assert entry == exact, folder
        b.deactivate()


def test_keep_float_auto_differs_per_target_on_timm_names(tmp_path, exported_model, sample_dataset):
    """``auto`` keeps the stem and blocks 0..first feature stage float for TensorRT, and the first
    feature stage's block in INT8 for the CPU form (docs/benchmarks.md section 11.8)."""
    from adtr_edge.int8.quantize import auto_float_modules, float_plan, quantize_export

    bb = onnx.load(str(exported_model / "backbone.onnx"))
    assert auto_float_modules([1, 2, 3]) == ["conv_stem", "bn1", "blocks.0", "blocks.1"]
    assert auto_float_modules([1, 2, 3], "cpu") == ["conv_stem", "bn1", "blocks.0"]
    assert auto_float_modules([], "cpu") == []
    trt, cpu = float_plan(bb, "auto", [1, 2, 3]), float_plan(bb, "auto", [1, 2, 3], "cpu")
    assert any(n.startswith("/cnn/blocks.1/") for n in trt) and not any(n.startswith("/cnn/blocks.1/") for n in cpu)
    assert set(cpu) < set(trt) and any(n.startswith("/cnn/blocks.0/") for n in cpu) and any(n.startswith("/cnn/bn1/") for n in cpu)
    with pytest.raises(AdtrError, match="--target 'gpu'"):
        auto_float_modules([1], "gpu")
    # quantize passes its target on: the CPU folder records (and leaves float) the CPU plan
    out = quantize_export(exported_model, sample_dataset / "train" / "good", tmp_path / "c", ["backbone"], 8, 4, log=lambda s: None,
                          target="cpu")
    meta = json.loads((out / "manifest.json").read_text())["meta"]["quantization"]
    stages = json.loads((exported_model / "manifest.json").read_text())["meta"]["features"]["stages"]
    assert meta["keep_float"] == "auto" and meta["float_nodes"]["backbone"] == float_plan(bb, "auto", stages, "cpu") != []


def test_export_folder_errors(tmp_path):
    cuda = CudaRuntime(make_cudart())
    with pytest.raises(AdtrError, match="no manifest.json"):
        build_engines(tmp_path, tmp_path / "e", "m", api=_api("10.3.0.30"), cuda=cuda, log=lambda s: None)
    exp = make_export(tmp_path / "export")
    (exp / "backbone.onnx").write_bytes(b"xx")
    # the one folder reader (adtr_edge.folder) names the file and both digests
    with pytest.raises(AdtrError, match=r"backbone\.onnx: sha256 .* does not match manifest\.json"):
        build_engines(exp, tmp_path / "e", "m", api=_api("10.3.0.30"), cuda=cuda, log=lambda s: None)


def test_parse_error_names_the_file(tmp_path):
    exp = make_export(tmp_path / "export")
    m = onnx.load(str(exp / "transformer.onnx"))
    m.graph.node[3].op_type = "AdtrNoSuchOp"  # an op no parser has an importer for
    onnx.save(m, str(exp / "transformer.onnx"))
    from adtr_edge.fileio import sha256_file
    doc = json.loads((exp / "manifest.json").read_text())
    doc["graphs"]["transformer"]["sha256"] = sha256_file(exp / "transformer.onnx")
    (exp / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(AdtrError, match=r"cannot parse .*transformer.onnx: node 3"):
        build_engines(exp, tmp_path / "e", "m", BuildOptions(precision="fp32"), api=_api("10.3.0.30"), cuda=CudaRuntime(make_cudart()), log=lambda s: None)


def test_timing_cache_saved_and_foreign_cache_refused(tmp_path):
    exp = make_export(tmp_path / "export")
    tc = tmp_path / "tc.bin"
    cuda = CudaRuntime(make_cudart())
    build_engines(exp, tmp_path / "e", "m", BuildOptions(precision="fp16", timing_cache=tc), api=_api("10.3.0.30"), cuda=cuda, log=lambda s: None)
    assert tc.read_bytes().startswith(b"FAKE-TIMING-CACHE 10.3.0.30")
    with pytest.raises(AdtrError, match="timing cache"):
        build_engines(exp, tmp_path / "e2", "m", BuildOptions(precision="fp16", timing_cache=tc), api=_api("8.6.2.3"), cuda=cuda, log=lambda s: None)


def test_dla_and_build_log(tmp_path):
    exp = make_export(tmp_path / "export")
    trt = make_tensorrt("8.6.2.3")
    log = tmp_path / "build.log"
    build_engines(exp, tmp_path / "e", "m", BuildOptions(precision="fp16", dla_core=1, build_log=log, profile=Profile(2, 2, 2)),
                  api=TrtApi(trt), cuda=CudaRuntime(make_cudart()), log=lambda s: None)
    assert trt._built[0]["dla"] == 1 and "GPU_FALLBACK" in trt._built[0]["flags"] and trt._built[1]["dla"] is None
    assert log.exists()


def test_backend_available_reports_reason(monkeypatch):
    from adtr_edge.runtime.backends import tensorrt as trt_backend

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # not installed
    ok, why = trt_backend.available()
    assert ok is False and "TensorRT is not installed" in why
    # tensorrt imports, but no GPU answers: the CUDA reason is the one reported
    monkeypatch.setitem(sys.modules, "tensorrt", make_tensorrt("10.3.0.30"))
    monkeypatch.setattr(trt_backend, "gpu_available", lambda: (False, "no CUDA GPU found"))
    assert trt_backend.available() == (False, "no CUDA GPU found")
    monkeypatch.setattr(trt_backend, "gpu_available", lambda: (True, "Orin"))
    ok, why = trt_backend.available()
    assert ok is True and why.endswith(" on Orin")
