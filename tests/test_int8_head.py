"""The Mahalanobis head's whitening MatMul in INT8 (``adtr_edge.int8.int8_head``, part of ``--target cpu``)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from adtr_edge.int8 import int8_head
from adtr_edge.errors import AdtrError


def _head_graph(w: np.ndarray, mean: np.ndarray, opset: int = 17) -> onnx.ModelProto:
    """features (L, N, K) - mean -> MatMul by the per-location W (L, K, C): a head as head_nodes finds it."""
    nodes = [helper.make_node("Sub", ["features", "mean"], ["r"], name="/head/Sub"),
             helper.make_node("MatMul", ["r", "W"], ["y"], name="/head/MatMul")]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("features", TensorProto.FLOAT, [w.shape[0], "N", w.shape[1]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [w.shape[0], "N", w.shape[2]])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(mean, "mean")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _run(model: onnx.ModelProto, feeds: dict) -> list:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("opset", [17, 18])
def test_rewrite_matches_the_float_matmul_within_the_rounding_bound(opset):
    rng = np.random.default_rng(0)
    L, K, C = 12, 24, 20
    w = (rng.standard_normal((L, K, C)) * rng.uniform(0.01, 10, (L, 1, 1))).astype(np.float32)  # scales differ per location
    mean = rng.standard_normal((L, 1, K)).astype(np.float32)
    x = (mean + rng.standard_normal((L, 3, K)) * rng.uniform(0.001, 100, (L, 1, 1))).astype(np.float32)
    x[4, 1] = mean[4, 0]  # one residual row exactly zero: its scale must stay finite
    model = _head_graph(w, mean, opset)
    (ref,) = _run(model, {"features": x})
    assert int8_head.quantize_whitening(model) and int8_head.has_int8_head(model)
    onnx.checker.check_model(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    assert "W" not in inits  # the FP32 weights are gone, not carried alongside
    (wq,) = [v for v in inits.values() if v.dtype == np.int8]
    # 7 bits (AVX2's int16 pair sums cannot saturate), each location's column using its whole range
    assert wq.shape == (L, K, C) and (np.abs(wq).max(axis=1) == 63).all()
    (sw,) = [v for v in inits.values() if v.shape == (L, 1, C)]
    assert (np.abs(wq * sw - w) <= sw / 2 * (1 + 1e-5)).all()  # rounded to the nearest step
    (got,) = _run(model, {"features": x})
    assert np.isfinite(got).all() and not got[4, 1].any()
    # exactly the integer arithmetic the module doc states: row scale max|r| / 127, zero point 128
    r64 = (x - mean).astype(np.float32)
    sx = np.maximum(np.abs(r64).max(-1, keepdims=True), np.finfo(np.float32).tiny) / np.float32(127)
    xq = np.clip(np.round(r64 / sx) + 128, 0, 255).astype(np.int64) - 128
    np.testing.assert_allclose(got, (xq @ wq.astype(np.int64)) * (sx * sw), rtol=1e-5, atol=1e-6)
    # per location and image, the error is bounded by the two roundings: |x| <= 127 steps, |w| <= 63 steps
    r = np.abs((x - mean).astype(np.float64))
    sx, sw = r.max(-1, keepdims=True) / 127, np.abs(w).max(1, keepdims=True) / 63  # (L, N, 1), (L, 1, C)
    bound = sx / 2 * np.abs(w).sum(1, keepdims=True) + r.sum(-1, keepdims=True) * sw / 2 + K * sx * sw / 4
    assert (np.abs(got - ref) <= bound + 1e-5 * np.abs(ref) + 1e-6).all()
    rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert 1e-4 < rel < 0.03  # really rounded, and only by a few percent


def test_a_head_without_a_per_location_matmul_is_left_alone():
    w = np.ones((6, 5), np.float32)  # a 2-D weight: not the per-location whitening
    nodes = [helper.make_node("Sub", ["features", "mean"], ["r"]), helper.make_node("MatMul", ["r", "W"], ["y"])]
    graph = helper.make_graph(nodes, "l2", [helper.make_tensor_value_info("features", TensorProto.FLOAT, [2, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.zeros(6, np.float32), "mean")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    before = model.SerializeToString()
    assert not int8_head.quantize_whitening(model) and model.SerializeToString() == before
    with pytest.raises(AdtrError, match="head weight bits must be 2..8, got 9"):
        int8_head.quantize_whitening(_head_graph(np.ones((2, 3, 3), np.float32), np.zeros((2, 1, 3), np.float32)), 9)


def test_cpu_target_writes_the_int8_head_and_keeps_the_scores(tmp_path, exported_model, sample_dataset):
    from adtr_edge.int8.quantize import quantize_export
    from adtr_edge.runtime.detector import Detector

    lines = []
    out = quantize_export(exported_model, sample_dataset / "train" / "good", tmp_path / "cpu", None, 8, 4, log=lines.append, target="cpu")
    tr = onnx.load(str(out / "transformer.onnx"))
    assert int8_head.has_int8_head(tr) and int8_head.whitening_matmul(tr) is None
    assert any("whitening MatMul in INT8" in line for line in lines)
    meta = json.loads((out / "manifest.json").read_text())["meta"]["quantization"]
    assert meta["per_graph"]["transformer"]["head_weight_bits"] == 7
    # the same INT8 backbone features through the float head and the INT8 head
    src = onnx.load(str(exported_model / "transformer.onnx"))
    assert int8_head.whitening_matmul(src) is not None  # the fixture's head is Mahalanobis: the test has a subject
    bb = ort.InferenceSession(str(out / "backbone.onnx"), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    h, w = json.loads((out / "manifest.json").read_text())["meta"]["model"]["input_size"]
    feats = bb.run(None, {"images": rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8)})[0]
    float_head, int8 = (ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"features": feats})
                        for p in (exported_model / "transformer.onnx", out / "transformer.onnx"))
    q = onnx.load(str(exported_model / "transformer.onnx"))
    assert int8_head.quantize_whitening(q)
    (map_q, score_q), (map_f, score_f) = _run(q, {"features": feats}), float_head
    # The map goes through the integer MatMul; the score may not (the regional term can be the larger).
    assert 0 < np.abs(map_q - map_f).max() and np.linalg.norm(map_q - map_f) / np.linalg.norm(map_f) < 0.02
    assert np.allclose(score_q, score_f, rtol=0.02)
    np.testing.assert_allclose(int8[1], score_f, rtol=0.1)  # with the dynamic INT8 transformer too
    result = Detector.load(out, backend="onnxruntime").detect_batches([rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)])
    assert len(list(result)) == 1  # the runtime runs the folder as written
