"""Small stand-ins for the runtime tests: a two-graph ONNX "model" that follows the export contract,
generated videos with a bright-square defect, and a scriptable fake camera.

The fake model scores brightness: features = 8x8 average pool of the pixels, anomaly map =
channel mean / 255 upsampled to 64x64, score = max of the 8x8-average-pooled map. Dark frames score
about 0.12, a bright square scores about 1.0, and the threshold is 0.5.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper

from adtr_edge.fileio import sha256_file
from adtr_edge.metadata import METADATA_KEY, build_metadata
from adtr_edge.postprocessing import Thresholds
from adtr_edge.preprocessing import PreprocessSpec

SIZE = 64
GRID = 8
CHANNELS = 3
POOL = 8
THRESHOLD = 0.5
DARK = 30
BRIGHT = 255


def session_config_entry(session, key: str = "session.disable_quant_qdq"):
    """A live ONNX Runtime session's config entry, or None when unset."""
    try:
        return session.get_session_options().get_session_config_entry(key) or None
    except Exception:  # an unset entry raises on some onnxruntime versions
        return None


def fake_meta(thresholds: Thresholds | None = None):
    return build_metadata(
        model_config={"backbone": "fake-brightness", "input_size": [SIZE, SIZE]},
        preprocess=PreprocessSpec(height=SIZE, width=SIZE),
        channels=CHANNELS,
        grid=(GRID, GRID),
        stages=[1],
        thresholds=thresholds or Thresholds(THRESHOLD, 0.0, 1.0),
        pool_kernel=POOL,
    )


def _backbone(qdq: bool) -> onnx.GraphProto:
    nodes = [helper.make_node("Cast", ["images"], ["x_f"], to=TensorProto.FLOAT)]
    inits = []
    src = "x_f"
    if qdq:  # a Q/DQ pair like a quantised export has (uint8, scale 1: exact on 0..255)
        inits += [helper.make_tensor("q_scale", TensorProto.FLOAT, [], [1.0]),
                  helper.make_tensor("q_zero", TensorProto.UINT8, [], [0])]
        nodes += [helper.make_node("QuantizeLinear", ["x_f", "q_scale", "q_zero"], ["x_q"]),
                  helper.make_node("DequantizeLinear", ["x_q", "q_scale", "q_zero"], ["x_dq"])]
        src = "x_dq"
    nodes += [
        helper.make_node("Transpose", [src], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("AveragePool", ["x_nchw"], ["features"], kernel_shape=[SIZE // GRID] * 2, strides=[SIZE // GRID] * 2),
    ]
    return helper.make_graph(
        nodes, "backbone",
        [helper.make_tensor_value_info("images", TensorProto.UINT8, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", CHANNELS, GRID, GRID])],
        inits,
    )


def _transformer() -> onnx.GraphProto:
    up = float(SIZE // GRID)
    nodes = [
        helper.make_node("ReduceMean", ["features"], ["m"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["m", "inv255"], ["m01"]),
        helper.make_node("Resize", ["m01", "", "scales"], ["anomaly_map"], mode="nearest"),
        helper.make_node("AveragePool", ["anomaly_map"], ["pooled"], kernel_shape=[POOL, POOL], strides=[1, 1]),
        helper.make_node("ReduceMax", ["pooled"], ["score"], axes=[1, 2, 3], keepdims=0),
    ]
    inits = [
        helper.make_tensor("inv255", TensorProto.FLOAT, [], [1.0 / 255.0]),
        helper.make_tensor("scales", TensorProto.FLOAT, [4], [1.0, 1.0, up, up]),
    ]
    return helper.make_graph(
        nodes, "transformer",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", CHANNELS, GRID, GRID])],
        [helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["batch", 1, SIZE, SIZE]),
         helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        inits,
    )


def write_fake_export(folder: Path, *, qdq: bool = False, graph_meta_override: dict | None = None,
                      thresholds: Thresholds | None = None) -> Path:
    """Write backbone.onnx, transformer.onnx and manifest.json following the export contract;
    ``thresholds``: another calibration (e.g. one whose normal range is far below the defects')."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = fake_meta(thresholds)
    graphs = {}
    for name, graph in (("backbone", _backbone(qdq)), ("transformer", _transformer())):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        gm = dict(meta.for_graph(name).raw)
        if graph_meta_override and name in graph_meta_override:
            gm.update(graph_meta_override[name])
        helper.set_model_props(model, {METADATA_KEY: json.dumps(gm, sort_keys=True)})
        onnx.checker.check_model(model)
        path = folder / f"{name}.onnx"
        onnx.save(model, str(path))
        graphs[name] = {"file": path.name, "sha256": sha256_file(path), "graph_sha256": sha256_file(path)}
    manifest = {"format": "adtr-edge/1", "toolkit_version": "test", "kind": "onnx", "graphs": graphs, "meta": meta.raw}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return folder


def make_frame(defect: bool, h: int = 96, w: int = 128) -> np.ndarray:
    """A dark BGR frame; with ``defect`` a bright square covers its middle."""
    img = np.full((h, w, 3), DARK, np.uint8)
    if defect:
        img[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = BRIGHT
    return img


def write_video(path: Path, defects: list[bool], fps: float = 10.0) -> Path:
    fourcc = cv2.VideoWriter_fourcc(*("MJPG" if path.suffix == ".avi" else "mp4v"))
    frame = make_frame(False)
    writer = cv2.VideoWriter(str(path), fourcc, fps, (frame.shape[1], frame.shape[0]))
    assert writer.isOpened(), f"cannot write test video {path}"
    for d in defects:
        writer.write(make_frame(d))
    writer.release()
    return path


class FakeCapture:
    """A cv2.VideoCapture look-alike playing a script: ``frames`` good reads, then failing reads
    forever (a cable pulled). ``period`` seconds between frames (a camera's frame rate)."""

    def __init__(self, frames: int | None, period: float = 0.002, opened: bool = True, defect_every: int = 0):
        self.remaining = frames
        self.period = period
        self.opened = opened
        self.defect_every = defect_every
        self.count = 0
        self.released = False

    def isOpened(self):
        return self.opened and not self.released

    def read(self):
        if self.released:
            return False, None
        time.sleep(self.period)
        if self.remaining is not None:
            if self.remaining <= 0:
                return False, None
            self.remaining -= 1
        self.count += 1
        defect = bool(self.defect_every) and self.count % self.defect_every == 0
        return True, make_frame(defect)

    def get(self, prop):
        return 0.0  # "unknown" fps, as many cameras report

    def release(self):
        self.released = True


class ScriptedOpener:
    """An opener returning prepared captures in turn (None = the open fails); records calls."""

    def __init__(self, captures):
        self.captures = list(captures)
        self.calls: list = []
        self.lock = threading.Lock()

    def __call__(self, target, api):
        with self.lock:
            self.calls.append((target, api))
            if not self.captures:
                return FakeCapture(0, opened=False)
            cap = self.captures.pop(0)
        return cap if cap is not None else FakeCapture(0, opened=False)
