"""Tiny ONNX graphs that follow the export contract (names, dtypes, dynamic ``batch``, metadata).

backbone:    images uint8 (N,H,W,3) -> Cast, Transpose, scale/shift, Conv, Relu, AveragePool -> features
transformer: features -> LayerNorm (op or decomposed) -> MatMul -> Softmax -> MatMul -> squared error
             -> channel mean -> Resize to (H,W) = anomaly_map; AveragePool + ReduceMax = score
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from adtr_edge.fileio import sha256_file
from adtr_edge.metadata import FORMAT, METADATA_KEY, build_metadata
from adtr_edge.postprocessing import Thresholds
from adtr_edge.preprocessing import PreprocessSpec


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def backbone_graph(h, w, channels, grid, seed=0, opset=17):
    rng = np.random.default_rng(seed)
    spec = PreprocessSpec(height=h, width=w)
    a, b = spec.scale_shift()
    # a, b are RGB; the graph flips BGR->RGB by reversing the channel axis with a Gather.
    k = h // grid[0]
    nodes = [
        helper.make_node("Cast", ["images"], ["f"], to=TensorProto.FLOAT, name="cast_in"),
        helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2], name="to_nchw"),
        helper.make_node("Gather", ["nchw", "rgb_idx"], ["rgb"], axis=1, name="bgr_to_rgb"),
        helper.make_node("Mul", ["rgb", "scale"], ["scaled"], name="scale"),
        helper.make_node("Add", ["scaled", "shift"], ["norm"], name="shift"),
        helper.make_node("Conv", ["norm", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("AveragePool", ["r"], ["features"], kernel_shape=[k, k], strides=[k, k], name="pool"),
    ]
    inits = [
        _init("rgb_idx", np.array([2, 1, 0], dtype=np.int64)),
        _init("scale", a.reshape(1, 3, 1, 1)),
        _init("shift", b.reshape(1, 3, 1, 1)),
        _init("conv_w", (rng.standard_normal((channels, 3, 3, 3)) * 0.3).astype(np.float32)),
        _init("conv_b", (rng.standard_normal(channels) * 0.1).astype(np.float32)),
    ]
    g = helper.make_graph(
        nodes, "backbone",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", h, w, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", channels, grid[0], grid[1]])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def transformer_graph(h, w, channels, grid, pool_kernel=4, seed=1, decomposed_ln=False):
    rng = np.random.default_rng(seed)
    c = channels
    opset = 16 if decomposed_ln else 17
    nodes = [
        helper.make_node("Reshape", ["features", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1], name="to_tokens"),
    ]
    inits = [
        _init("flat_shape", np.array([0, c, -1], dtype=np.int64)),
        _init("grid_shape", np.array([0, c, grid[0], grid[1]], dtype=np.int64)),
        _init("ln_gamma", (1 + 0.1 * rng.standard_normal(c)).astype(np.float32)),
        _init("ln_beta", (0.1 * rng.standard_normal(c)).astype(np.float32)),
        _init("w1", (rng.standard_normal((c, c)) / np.sqrt(c)).astype(np.float32)),
        _init("w2", (rng.standard_normal((c, c)) / np.sqrt(c)).astype(np.float32)),
        _init("two", np.array(2.0, dtype=np.float32)),
        _init("eps", np.array(1e-5, dtype=np.float32)),
        _init("resize_scales", np.array([1, 1, h / grid[0], w / grid[1]], dtype=np.float32)),
    ]
    if decomposed_ln:
        nodes += [
            helper.make_node("ReduceMean", ["tokens"], ["mu"], axes=[-1], name="ln_mean"),
            helper.make_node("Sub", ["tokens", "mu"], ["d"], name="ln_sub"),
            helper.make_node("Pow", ["d", "two"], ["d2"], name="ln_pow"),
            helper.make_node("ReduceMean", ["d2"], ["var"], axes=[-1], name="ln_var"),
            helper.make_node("Add", ["var", "eps"], ["ve"], name="ln_add_eps"),
            helper.make_node("Sqrt", ["ve"], ["sd"], name="ln_sqrt"),
            helper.make_node("Div", ["d", "sd"], ["nrm"], name="ln_div"),
            helper.make_node("Mul", ["nrm", "ln_gamma"], ["nrm_s"], name="ln_mul"),
            helper.make_node("Add", ["nrm_s", "ln_beta"], ["ln"], name="ln_affine"),
        ]
    else:
        nodes.append(helper.make_node("LayerNormalization", ["tokens", "ln_gamma", "ln_beta"], ["ln"], axis=-1, epsilon=1e-5, name="ln"))
    nodes += [
        helper.make_node("MatMul", ["ln", "w1"], ["q"], name="proj1"),
        helper.make_node("Softmax", ["q"], ["attn"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["attn", "w2"], ["rec_t"], name="proj2"),
        helper.make_node("Transpose", ["rec_t"], ["rec_flat"], perm=[0, 2, 1], name="to_channels"),
        helper.make_node("Reshape", ["rec_flat", "grid_shape"], ["rec"], name="unflatten"),
        helper.make_node("Sub", ["rec", "features"], ["diff"], name="err_sub"),
        helper.make_node("Mul", ["diff", "diff"], ["sq"], name="err_sq"),
        helper.make_node("ReduceMean", ["sq"], ["err"], axes=[1], keepdims=1, name="err_mean"),
        helper.make_node("Resize", ["err", "", "resize_scales"], ["anomaly_map"], mode="linear", name="upsample"),
        helper.make_node("AveragePool", ["anomaly_map"], ["pooled"], kernel_shape=[pool_kernel, pool_kernel], strides=[1, 1], name="score_pool"),
        helper.make_node("ReduceMax", ["pooled"], ["score"], axes=[1, 2, 3], keepdims=0, name="score_max"),
    ]
    g = helper.make_graph(
        nodes, "transformer",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", c, grid[0], grid[1]])],
        [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 1, h, w]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def make_export(folder: Path, h=32, w=32, channels=8, grid=(4, 4), pool_kernel=4, decomposed_ln=False) -> Path:
    """Write an export folder (two graphs with metadata + manifest.json) like 'adtr-edge export'."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    spec = PreprocessSpec(height=h, width=w)
    meta = build_metadata(
        model_config={"backbone": "tiny-test", "input_size": [h, w]},
        preprocess=spec, channels=channels, grid=grid, stages=[1],
        thresholds=Thresholds(0.5, 0.0, 1.0), pool_kernel=pool_kernel,
    )
    graphs = {
        "backbone": backbone_graph(h, w, channels, grid),
        "transformer": transformer_graph(h, w, channels, grid, pool_kernel, decomposed_ln=decomposed_ln),
    }
    entry = {}
    for name, model in graphs.items():
        model.ir_version = 8
        d = dict(meta.raw, graph=name)
        helper.set_model_props(model, {METADATA_KEY: json.dumps(d, sort_keys=True)})
        onnx.checker.check_model(model)
        path = folder / f"{name}.onnx"
        onnx.save(model, str(path))
        entry[name] = {"file": path.name, "sha256": sha256_file(path), "graph_sha256": sha256_file(path)}
    manifest = {"format": FORMAT, "toolkit_version": "test", "kind": "onnx", "graphs": entry, "meta": meta.raw}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def write_images(folder: Path, n=6, size=(40, 36), seed=0) -> Path:
    import cv2

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 255, size=size, dtype=np.uint8)
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), img)
    return folder
