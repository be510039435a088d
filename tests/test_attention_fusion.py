"""Attention blocks fused into ONNX Runtime's MultiHeadAttention (``adtr_edge.int8.attention_fusion``, part of ``--target cpu``)."""

from __future__ import annotations

import collections
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from adtr_edge.int8 import attention_fusion

TOKENS, HEADS, WIDTH = 12, 2, 8  # width per head


def _run(model: onnx.ModelProto, feeds: dict) -> list:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(None, feeds)


def _block(mask: str = "constant", extra_output: str | None = None) -> onnx.ModelProto:
    """One attention block laid out as the export writes it: x (N, K, D) projected to q, k, v and split
    into heads, softmax(q k^T * scale + mask) v, merged back; ``mask``: "constant", "none" or "input"."""
    d = HEADS * WIDTH
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((d, d)).astype(np.float32) * 0.3, f"W{r}") for r in "qkv"]
    inits += [numpy_helper.from_array(np.array([0, TOKENS, HEADS, WIDTH], np.int64), "split"),
              numpy_helper.from_array(np.array([0, TOKENS, d], np.int64), "merge"),
              numpy_helper.from_array(np.array(1 / np.sqrt(WIDTH), np.float32), "scale")]
    nodes = []
    for r, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [helper.make_node("MatMul", ["x", f"W{r}"], [f"{r}p"]), helper.make_node("Reshape", [f"{r}p", "split"], [f"{r}4"]),
                  helper.make_node("Transpose", [f"{r}4"], [f"{r}h"], perm=perm)]
    nodes += [helper.make_node("MatMul", ["qh", "kh"], ["s"]), helper.make_node("Mul", ["s", "scale"], ["s2"])]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", TOKENS, d])]
    logits = "s2"
    if mask != "none":
        near = np.abs(np.arange(TOKENS)[:, None] - np.arange(TOKENS)[None, :]) <= 1
        if mask == "constant":
            inits.append(numpy_helper.from_array(np.where(near, -1e4, 0).astype(np.float32), "mask"))  # as the neighbour mask
        else:
            inputs.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [TOKENS, TOKENS]))
        nodes.append(helper.make_node("Add", ["s2", "mask"], ["s3"]))
        logits = "s3"
    nodes += [helper.make_node("Softmax", [logits], ["p"], axis=-1, name="attn/Softmax"), helper.make_node("MatMul", ["p", "vh"], ["o"]),
              helper.make_node("Transpose", ["o"], ["o2"], perm=[0, 2, 1, 3]), helper.make_node("Reshape", ["o2", "merge"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", TOKENS, d])]
    if extra_output:
        outputs.append(helper.make_tensor_value_info(extra_output, TensorProto.FLOAT, None))
    return helper.make_model(helper.make_graph(nodes, "block", inputs, outputs, inits), opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("mask", ["constant", "none"])
def test_a_block_becomes_one_fused_node_with_the_same_output(mask):
    model = _block(mask)
    x = np.random.default_rng(1).standard_normal((3, TOKENS, HEADS * WIDTH)).astype(np.float32)
    (ref,) = _run(model, {"x": x})
    assert attention_fusion.fuse_attention(model) == 1
    onnx.checker.check_model(model)
    ops = collections.Counter(n.op_type for n in model.graph.node)
    assert ops["MultiHeadAttention"] == 1 and not ops["Softmax"] and not ops["Transpose"]  # the unfused ops are gone
    (fused_node,) = [n for n in model.graph.node if n.op_type == "MultiHeadAttention"]
    assert fused_node.domain == "com.microsoft" and len(fused_node.input) == (6 if mask == "constant" else 5)
    (got,) = _run(model, {"x": x})
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    if mask == "constant":  # the mask really travels: without it the output differs
        (unmasked,) = _run(_fused(_block("none")), {"x": x})
        assert np.abs(unmasked - got).max() > 1e-2


def _fused(model: onnx.ModelProto) -> onnx.ModelProto:
    assert attention_fusion.fuse_attention(model) == 1
    return model


@pytest.mark.parametrize("case", ["mask from an input", "logits read elsewhere", "probabilities read elsewhere"])
def test_a_block_that_does_not_match_exactly_is_left_alone(case):
    model = {"mask from an input": lambda: _block("input"), "logits read elsewhere": lambda: _block(extra_output="s2"),
             "probabilities read elsewhere": lambda: _block(extra_output="p")}[case]()
    before = model.SerializeToString()
    assert attention_fusion.fuse_attention(model) == 0 and model.SerializeToString() == before


def test_the_exported_transformer_fuses_every_block_and_keeps_its_outputs(exported_model):
    src = onnx.load(str(exported_model / "transformer.onnx"))
    cfg = json.loads((exported_model / "manifest.json").read_text())["meta"]["model"]
    blocks = cfg["num_encoder_layers"] + 2 * cfg["num_decoder_layers"]  # self-attention each side, cross-attention in the decoder
    shape = [d.dim_value for d in src.graph.input[0].type.tensor_type.shape.dim[1:]]
    fused = onnx.load(str(exported_model / "transformer.onnx"))
    assert attention_fusion.fuse_attention(fused) == blocks == attention_fusion.count_fused(fused)
    assert not any(n.op_type == "Softmax" for n in fused.graph.node)
    for batch in (1, 3):  # the batch stays symbolic
        feats = np.random.default_rng(batch).standard_normal([batch, *shape]).astype(np.float32)
        for a, b in zip(_run(src, {"features": feats}), _run(fused, {"features": feats})):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)


def test_cpu_target_writes_fused_attention(tmp_path, exported_model, sample_dataset):
    from adtr_edge.int8.quantize import quantize_export

    lines = []
    out = quantize_export(exported_model, sample_dataset / "train" / "good", tmp_path / "cpu", None, 8, 4, log=lines.append, target="cpu")
    tr = onnx.load(str(out / "transformer.onnx"))
    assert attention_fusion.count_fused(tr) == 3 and any("3 attention blocks fused" in line for line in lines)
    meta = json.loads((out / "manifest.json").read_text())["meta"]["quantization"]
    assert meta["per_graph"]["transformer"]["fuse_attention"] is True
    off = quantize_export(exported_model, sample_dataset / "train" / "good", tmp_path / "off", None, 8, 4, log=lines.append, target="cpu",
                          fuse_attention=False)  # quantize --no-fuse-attention
    assert attention_fusion.count_fused(onnx.load(str(off / "transformer.onnx"))) == 0
    assert json.loads((off / "manifest.json").read_text())["meta"]["quantization"]["per_graph"]["transformer"]["fuse_attention"] is False
    # the TensorRT target never gets it: TensorRT has no com.microsoft operators
    trt = quantize_export(exported_model, sample_dataset / "train" / "good", tmp_path / "trt", ["transformer"], 8, 4, log=lines.append,
                          target="tensorrt")
    assert attention_fusion.count_fused(onnx.load(str(trt / "transformer.onnx"))) == 0
