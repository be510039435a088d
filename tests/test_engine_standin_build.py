"""Engine building, calibration, manifest/key and the TensorRT backend on simulated TensorRT versions."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from adtr_edge.engine.builder import BuildOptions, build_engines
from adtr_edge.engine.manifest import Profile
from adtr_edge.errors import AdtrError
from adtr_edge.runtime.backends.tensorrt import TensorRTBackend
from tests.trt_standin.fake_trt import make_cudart, make_tensorrt
from tests.trt_standin.fixtures import standin, trt_version  # noqa: F401
from tests.trt_standin.graphs import make_export, write_images


@pytest.fixture
def export(tmp_path, standin):
    # TensorRT 8.5 has no LayerNormalization importer: exports for it use opset 16 (decomposed).
    return make_export(tmp_path / "export", decomposed_ln=not standin[2].has_normalization_layer)


def test_layernorm_op_on_85_is_a_clear_error(tmp_path):
    from adtr_edge.engine.trt_api import TrtApi
    from adtr_edge.cuda import CudaRuntime
    exp = make_export(tmp_path / "export")
    with pytest.raises(AdtrError, match="opset 16"):
        build_engines(exp, tmp_path / "e", "m", BuildOptions(), api=TrtApi(make_tensorrt("8.5.2.2")),
                      cuda=CudaRuntime(make_cudart()), log=lambda s: None)


def _build(tmp_path, export, standin, **kw):
    trt, rt, api, cuda = standin
    opts = BuildOptions(calib_dir=tmp_path / "calib", profile=Profile(1, 2, 4), **kw)
    return build_engines(export, tmp_path / "engines", "m", opts, api=api, cuda=cuda, log=lambda s: None)


def test_fp16_build_pins_layernorm_and_softmax_per_version(tmp_path, export, standin):
    trt, rt, api, cuda = standin
    report = _build(tmp_path, export, standin, precision="fp16")
    assert report.built == ["backbone", "transformer"]
    t_header = trt._built[1]
    if api.weakly_typed:
        assert "FP16" in t_header["flags"] and "OBEY_PRECISION_CONSTRAINTS" in t_header["flags"]
        expected = {"ln", "softmax"} if api.has_normalization_layer else {
            "ln_mean", "ln_sub", "ln_pow", "ln_var", "ln_add_eps", "ln_sqrt", "ln_div", "ln_mul", "ln_affine", "softmax"}
        assert set(t_header["pinned"]) == expected
        assert not t_header["strongly_typed"]
        explicit = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if api.major < 10 else 0
        assert t_header["net_flags"] == explicit
    else:  # 11.x: float16 graph copy, no flags, nothing pinned
        assert t_header["flags"] == [] and t_header["pinned"] == []
        assert report.plans["transformer"].convert_fp16
    assert t_header["profile"]["features"] == [[1, 8, 4, 4], [2, 8, 4, 4], [4, 8, 4, 4]]
    assert trt._built[0]["profile"]["images"] == [[1, 32, 32, 3], [2, 32, 32, 3], [4, 32, 32, 3]]
    doc = json.loads((tmp_path / "engines/m/manifest.json").read_text())
    assert doc["trt_version"] == trt.__version__ and doc["gpu"] == {"name": "NVIDIA Fake Orin", "compute_capability": "8.7"}
    assert doc["engines"]["backbone"]["precision"] == "fp16"


def test_int8_calibrated_or_refused_and_cache_reuse(tmp_path, export, standin):
    trt, rt, api, cuda = standin
    images = write_images(tmp_path / "good", n=6)
    if not api.has_calibrators:
        with pytest.raises(AdtrError, match="adtr-edge quantize"):
            _build(tmp_path, export, standin, precision="int8", calib_images=images)
        report = _build(tmp_path, export, standin, precision="best", calib_images=images)
        assert report.plans["backbone"].precision == "fp16"
        return
    report = _build(tmp_path, export, standin, precision="int8", calib_images=images, calib_batches=3)
    bb = trt._built[0]
    assert {"INT8", "FP16"} <= set(bb["flags"])
    assert bb["calibration"]["batches"] == 3 and not bb["calibration"]["from_cache"]
    # The calibrator fed the real preprocessed images: the max |value| seen is the max pixel.
    from adtr_edge.engine import calibration as calib
    from adtr_edge.preprocessing import PreprocessSpec
    batches = calib.backbone_batches(calib.calibration_images(images, 6), PreprocessSpec(32, 32), 2)
    assert bb["calibration"]["amax"] == max(float(b.max()) for b in batches)
    caches = sorted((tmp_path / "calib").glob("backbone-*.cache"))
    assert len(caches) == 1 and caches[0].with_suffix(".json").is_file()
    assert report.plans["transformer"].precision == "fp16"
    # Second build: key matches -> skipped; --force rebuilds from the cache without calibrating.
    again = _build(tmp_path, export, standin, precision="int8", calib_images=images, calib_batches=3)
    assert again.skipped == ["backbone", "transformer"]
    _build(tmp_path, export, standin, precision="int8", calib_images=images, calib_batches=3, force=True)
    assert trt._built[-2]["calibration"]["from_cache"]
    # Other images -> stale cache refused, --recalibrate replaces it.
    other = write_images(tmp_path / "other", n=6, seed=5)
    with pytest.raises(AdtrError, match="--recalibrate"):
        _build(tmp_path, export, standin, precision="int8", calib_images=other, calib_batches=3)
    _build(tmp_path, export, standin, precision="int8", calib_images=other, calib_batches=3, recalibrate=True)
    new = sorted((tmp_path / "calib").glob("backbone-*.cache"))
    assert len(new) == 1 and new != caches


def test_implicit_int8_keeps_the_mixed_precision_plan_in_fp16(tmp_path, export, standin):
    trt, rt, api, cuda = standin
    if not api.has_calibrators:
        pytest.skip(f"TensorRT {api.version_string} has no implicit INT8")
    images = write_images(tmp_path / "good", n=4)
    report = _build(tmp_path, export, standin, precision="int8", calib_images=images, calib_batches=2, keep_float="conv")
    bb = trt._built[0]
    assert report.plans["backbone"].fp16_nodes == ["conv"] and "conv" in bb["pinned"]
    assert "OBEY_PRECISION_CONSTRAINTS" in bb["flags"]
    assert bb["pinned_precision"]["conv"] == "HALF" and bb["output_types"]["conv"] == [0]
    doc = json.loads((tmp_path / "engines/m/manifest.json").read_text())
    assert doc["engines"]["backbone"]["pinned_fp16"] == ["conv"]
    # another plan is another engine (not reused from the manifest), and "none" pins nothing
    again = _build(tmp_path, export, standin, precision="int8", calib_images=images, calib_batches=2, keep_float="none")
    assert "backbone" in again.built and again.plans["backbone"].fp16_nodes == []
    assert "conv" not in trt._built[-2]["pinned"]


def test_transformer_int8_calibrates_on_backbone_features(tmp_path, export, standin):
    trt, rt, api, cuda = standin
    if not api.has_calibrators:
        pytest.skip("no calibrators in 11.x (covered by the refusal test)")
    images = write_images(tmp_path / "good", n=4)
    _build(tmp_path, export, standin, precision="int8", transformer_precision="int8", calib_images=images, calib_batches=2)
    t = trt._built[1]
    assert t["calibration"]["batches"] == 2 and {"softmax"} < set(t["pinned"])
    from adtr_edge.engine import calibration as calib
    from adtr_edge.preprocessing import PreprocessSpec
    feats = calib.transformer_batches(export / "backbone.onnx", calib.backbone_batches(calib.calibration_images(images, 4), PreprocessSpec(32, 32), 2))
    assert t["calibration"]["amax"] == pytest.approx(max(float(np.abs(f).max()) for f in feats), rel=1e-6)


def test_backend_runs_engines_and_matches_onnxruntime(tmp_path, export, standin):
    trt, rt, api, cuda = standin
    _build(tmp_path, export, standin, precision="fp16")
    be = TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda)
    rng = np.random.default_rng(3)
    batches = [rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8) for n in (1, 3, 4, 2)]
    sb = ort.InferenceSession(str(export / "backbone.onnx"))
    st = ort.InferenceSession(str(export / "transformer.onnx"))
    with be:
        results = list(be.infer_many(batches))
        single = be.infer(batches[1])
        feats = be.run_backbone(batches[2])
    for b, r in zip(batches, results):
        f = sb.run(None, {"images": b})[0]
        amap, score = st.run(None, {"features": f})
        tol = 1e-5 if api.weakly_typed else 5e-3  # 11.x ran the float16 copy
        np.testing.assert_allclose(r.anomaly_map, amap, atol=tol, rtol=tol)
        np.testing.assert_allclose(r.score, score, atol=tol, rtol=tol)
        assert {"backbone", "transformer", "backbone_gpu", "transformer_gpu"} <= set(r.timings)
    np.testing.assert_array_equal(single.score, results[1].score)
    np.testing.assert_allclose(feats, sb.run(None, {"images": batches[2]})[0], atol=1e-2)
    assert not rt._device and not rt._host  # everything freed on deactivate


def test_backend_cuda_graphs_replay_same_results(tmp_path, export, standin):
    trt, rt, api, cuda = standin
    _build(tmp_path, export, standin, precision="fp32")
    be = TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda, cuda_graphs=True)
    if not api.cuda_graphs_allowed:
        with pytest.raises(AdtrError, match="TensorRT 10"):
            be.activate()
        return
    rng = np.random.default_rng(4)
    imgs = [rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8) for _ in range(4)]
    with be:
        out = [r.score.copy() for r in be.infer_many(imgs)]
        assert "cudaGraphLaunch" in rt._calls
    plain = TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda)
    with plain:
        ref = [r.score for r in plain.infer_many(imgs)]
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)


def test_engine_refused_on_other_gpu_or_version(tmp_path, export, standin):
    trt, rt, api, cuda = standin
    _build(tmp_path, export, standin, precision="fp32")
    from adtr_edge.engine.trt_api import TrtApi
    from adtr_edge.cuda import CudaRuntime
    other_gpu = CudaRuntime(make_cudart(gpu_name="NVIDIA RTX 4090", cc=(8, 9)))
    with pytest.raises(AdtrError, match="rebuild with adtr-edge build-engine"):
        TensorRTBackend(tmp_path / "engines/m", api=api, cuda=other_gpu).activate()
    other = "10.3.0.30" if trt.__version__ != "10.3.0.30" else "8.6.2.3"
    with pytest.raises(AdtrError, match=f"TensorRT {trt.__version__}.*rebuild"):
        TensorRTBackend(tmp_path / "engines/m", api=TrtApi(make_tensorrt(other)), cuda=cuda).activate()
    # A modified engine file is refused too.
    p = tmp_path / "engines/m/backbone.engine"
    p.write_bytes(p.read_bytes() + b"x")
    with pytest.raises(AdtrError, match="does not match its manifest"):
        TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda).activate()


def test_batch_outside_profile_is_refused(tmp_path, export, standin):
    _build(tmp_path, export, standin, precision="fp32")
    trt, rt, api, cuda = standin
    with TensorRTBackend(tmp_path / "engines/m", api=api, cuda=cuda) as be:
        with pytest.raises(AdtrError, match="max 4"):
            be.infer(np.zeros((5, 32, 32, 3), np.uint8))
        with pytest.raises(AdtrError, match="uint8"):
            be.infer(np.zeros((1, 32, 32, 3), np.float32))


def test_real_export_builds_and_runs_on_standin(tmp_path, exported_model):
    exported = exported_model
    from adtr_edge.engine.trt_api import TrtApi
    from adtr_edge.cuda import CudaRuntime
    # Passed explicitly, not via sys.modules: the fixture above imports torch, which probes for tensorrt.
    rt = make_cudart()
    trt = make_tensorrt("10.3.0.30", cudart=rt)
    api, cuda = TrtApi(trt), CudaRuntime(rt)
    report = build_engines(exported, tmp_path / "engines", "real", BuildOptions(precision="fp16", profile=Profile(1, 2, 2)),
                           api=api, cuda=cuda, log=lambda s: None)
    assert trt._built[1]["pinned"]  # the real transformer's LayerNorm/Softmax were found and pinned
    h, w = report.manifest["meta"]["preprocess"]["height"], report.manifest["meta"]["preprocess"]["width"]
    x = np.random.default_rng(0).integers(0, 255, (2, h, w, 3), dtype=np.uint8)
    f = ort.InferenceSession(str(exported / "backbone.onnx")).run(None, {"images": x})[0]
    amap, score = ort.InferenceSession(str(exported / "transformer.onnx")).run(None, {"features": f})
    with TensorRTBackend(report.folder, api=api, cuda=cuda) as be:
        r = be.infer(x)
    np.testing.assert_allclose(r.score, score, rtol=1e-4, atol=1e-5)
