"""The runtime on a real exported model (the lead's ``exported_model`` session fixture)."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from adtr_edge.postprocessing import pooled_max_score
from adtr_edge.preprocessing import list_images, prepare_batch, read_image
from adtr_edge.runtime.detector import Detector
from adtr_edge.runtime.pipeline import run_stream


@pytest.fixture
def exported(exported_model):
    return exported_model


@pytest.fixture
def test_images(sample_dataset):
    root = sample_dataset
    files = sorted(p for d in (root / "test").iterdir() if d.is_dir() for p in list_images(d))
    assert files, f"no test images under {root}"
    return files


def test_detector_on_the_real_export_matches_direct_sessions(exported, test_images):
    frames = [read_image(p) for p in test_images[:4]]
    with Detector.load(exported, backend="onnxruntime") as det:
        dets = det(frames)
        single = det(frames[0])
        h, w = det.meta.input_size
        images = prepare_batch(frames, det.spec)
    bb = ort.InferenceSession(str(exported / "backbone.onnx"), providers=["CPUExecutionProvider"])
    tr = ort.InferenceSession(str(exported / "transformer.onnx"), providers=["CPUExecutionProvider"])
    (feats,) = bb.run(["features"], {"images": images})
    amap, score = tr.run(["anomaly_map", "score"], {"features": feats})
    np.testing.assert_allclose([d.score for d in dets], score, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dets[0].anomaly_map, amap[0, 0], rtol=1e-5, atol=1e-6)
    assert single.score == pytest.approx(dets[0].score, rel=1e-5, abs=1e-6)
    assert dets[0].anomaly_map.shape == (h, w)
    assert dets[0].map_for_frame().shape == frames[0].shape[:2]
    # The in-graph image score is the larger of two z-scores, one of them the pooled max of the map it
    # returns (the other, the regional term, needs the residual: test_model pins it).
    norm = det.meta.image_score["score_norm"]
    map_z = (pooled_max_score(amap, det.meta.pool_kernel) - norm["map_mean"]) / norm["map_std"]
    assert np.all(score >= map_z - 1e-4) and norm["map_std"] > 0 and norm["region_std"] > 0


def test_stream_a_folder_through_the_real_export(exported, test_images, tmp_path):
    folder = test_images[0].parent
    events = tmp_path / "events.jsonl"
    summary = run_stream(exported, str(folder), events=events, batch=3, print_summary=False)
    frames = [e for e in map(json.loads, events.read_text().splitlines()) if e["event"] == "frame"]
    assert len(frames) == summary["frames"] == len(list_images(folder))
    assert all(0.0 <= e["normalized_score"] <= 1.0 for e in frames)
    assert summary["backend"] == "onnxruntime" and not summary["errors"]
