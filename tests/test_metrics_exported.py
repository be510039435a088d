"""Metrics and pictures on real anomaly maps from an exported model (the lead's fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adtr_edge.evaluation import metrics as M
from adtr_edge.evaluation import visualize as V
from adtr_edge.metadata import ANOMALY_MAP, FEATURES, IMAGES, SCORE, ModelMeta


@pytest.fixture
def exported(exported_model) -> Path:
    return Path(exported_model)


def run_onnx(folder: Path, images: np.ndarray):
    ort = pytest.importorskip("onnxruntime")
    opts = dict(providers=["CPUExecutionProvider"])
    backbone = ort.InferenceSession(str(folder / "backbone.onnx"), **opts)
    transformer = ort.InferenceSession(str(folder / "transformer.onnx"), **opts)
    (features,) = backbone.run([FEATURES], {IMAGES: images})
    anomaly_map, score = transformer.run([ANOMALY_MAP, SCORE], {FEATURES: features})
    return anomaly_map, score


def test_metrics_and_overlay_on_exported_model_maps(exported):
    meta = ModelMeta(json.loads((exported / "manifest.json").read_text())["meta"])
    h, w = meta.input_size
    rng = np.random.default_rng(0)
    # Smooth "normal" frames, and the same frames with a bright patch pasted on: the patch is the
    # ground-truth defect. Whatever the tiny model learned, every metric must be defined and in range.
    normal = np.repeat(np.linspace(60, 120, w, dtype=np.float32)[None, :, None], h, 0)
    normal = np.stack([normal + rng.normal(0, 3, normal.shape) for _ in range(6)]).clip(0, 255)
    normal = np.repeat(normal, 3, axis=-1).astype(np.uint8)
    defect = normal.copy()
    masks = np.zeros((12, h, w), bool)
    y0, x0 = h // 4, w // 3
    masks[6:, y0 : y0 + h // 4, x0 : x0 + w // 4] = True
    defect[masks[6:]] = 255
    anomaly_map, score = run_onnx(exported, np.concatenate([normal, defect]))
    assert anomaly_map.shape == (12, 1, h, w)

    labels = np.r_[np.zeros(6), np.ones(6)].astype(int)
    report = M.evaluate(score, labels, anomaly_map, masks, ["good"] * 6 + ["patch"] * 6)
    json.dumps(report, allow_nan=False)
    for key in ("image_auroc", "pixel_auroc", "aupro", "f1_max"):
        assert report[key] is not None and 0.0 <= report[key] <= 1.0
    assert report["per_defect"]["patch"]["n"] == 6

    view = V.three_pane(defect[0], anomaly_map[6, 0], meta.thresholds, float(score[6]), 0.5, True)
    assert view.shape[1] == 3 * w and view.dtype == np.uint8
