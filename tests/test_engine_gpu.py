"""Real TensorRT on a real GPU: build fp16 and int8 engines and compare with ONNX Runtime.
Skipped cleanly where tensorrt does not import or no GPU answers."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def real_trt():
    from adtr_edge.runtime.backends.tensorrt import available

    ok, why = available()
    if not ok:
        pytest.skip(f"TensorRT/GPU not available: {why}")
    from adtr_edge.engine.trt_api import load_api

    return load_api()


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_real_engine_matches_onnxruntime(tmp_path, real_trt, precision):
    from adtr_edge.engine.builder import BuildOptions, build_engines
    from adtr_edge.engine.manifest import Profile
    from adtr_edge.runtime.backends.tensorrt import TensorRTBackend
    from tests.trt_standin.graphs import make_export, write_images

    api = real_trt
    export = make_export(tmp_path / "export", decomposed_ln=not api.has_normalization_layer)
    if precision == "int8" and not api.has_calibrators:
        from adtr_edge.int8.quantize import quantize_export

        export = quantize_export(export, write_images(tmp_path / "imgs", n=8), tmp_path / "q", ["backbone"], 8, 4, log=print)
    opts = BuildOptions(precision=precision, profile=Profile(1, 2, 4), calib_images=write_images(tmp_path / "cal", n=8),
                        calib_batches=4, calib_dir=tmp_path / "calib", build_log=tmp_path / "build.log")
    report = build_engines(export, tmp_path / "engines", "m", opts, api=api, log=print)
    x = np.random.default_rng(0).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    f = ort.InferenceSession(str(export / "backbone.onnx")).run(None, {"images": x})[0]
    amap, score = ort.InferenceSession(str(export / "transformer.onnx")).run(None, {"features": f})
    with TensorRTBackend(report.folder) as be:
        r = be.infer(x)
        many = list(be.infer_many([x, x[:1], x]))
    tol = 0.05 if precision == "fp16" else 0.25
    scale = float(np.abs(amap).max()) + 1e-6
    assert np.abs(r.anomaly_map - amap).max() <= tol * scale
    assert np.abs(r.score - score).max() <= tol * (float(np.abs(score).max()) + 1e-6)
    np.testing.assert_allclose(many[2].score, r.score, rtol=1e-3, atol=1e-5)
    assert r.timings["backbone_gpu"] > 0 and r.timings["transformer_gpu"] > 0
