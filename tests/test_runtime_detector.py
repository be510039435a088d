"""The Detector embedding API on single frames and batches."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from tests.runtime_fakes import SIZE, THRESHOLD, make_frame

from adtr_edge.errors import AdtrError
from adtr_edge.postprocessing import normalize_score
from adtr_edge.preprocessing import prepare_batch
from adtr_edge.runtime.detector import Detection, Detector

STAGES = {"preprocess", "backbone", "transformer", "postprocess"}


@pytest.fixture(scope="module")
def det(export_dir):
    with Detector.load(export_dir, backend="onnxruntime", intra_op_threads=1) as d:
        yield d


def _direct(export_dir, frames, spec):
    images = prepare_batch(frames, spec)
    bb = ort.InferenceSession(str(export_dir / "backbone.onnx"), providers=["CPUExecutionProvider"])
    tr = ort.InferenceSession(str(export_dir / "transformer.onnx"), providers=["CPUExecutionProvider"])
    (feats,) = bb.run(None, {"images": images})
    return tr.run(None, {"features": feats})


def test_single_frame(det):
    d = det(make_frame(True))
    assert isinstance(d, Detection)
    assert d.label is True and d.score > THRESHOLD and d.normalized_score > 0.5
    assert d.anomaly_map.shape == (SIZE, SIZE) and d.anomaly_map.dtype == np.float32
    assert d.map_for_frame().shape == (96, 128)
    assert set(d.timings) >= STAGES and all(v >= 0 for v in d.timings.values())
    ok = det(make_frame(False))
    assert ok.label is False and ok.normalized_score < 0.5


def test_batches_match_direct_session_outputs(det, export_dir):
    rng = np.random.default_rng(1)
    # Mixed sizes, grayscale included: the Detector resizes each one with the shared preprocessing.
    frames = [make_frame(True), make_frame(False, 50, 70), rng.integers(0, 256, (80, 80), dtype=np.uint8)]
    dets = det(frames)
    amap, score = _direct(export_dir, frames, det.spec)
    assert [x.score for x in dets] == pytest.approx(score.tolist(), rel=1e-6)
    for i, x in enumerate(dets):
        np.testing.assert_array_equal(x.anomaly_map, amap[i, 0])
        assert x.normalized_score == pytest.approx(float(normalize_score(score[i], det.thresholds)))
        assert x.batch_size == 3
    assert [x.map_for_frame().shape for x in dets] == [(96, 128), (50, 70), (80, 80)]


def test_numpy_batch(det, export_dir):
    batch = np.stack([make_frame(False), make_frame(True), make_frame(False)])
    dets = det(batch)
    assert [x.label for x in dets] == [False, True, False]
    amap, score = _direct(export_dir, batch, det.spec)
    assert [x.score for x in dets] == pytest.approx(score.tolist(), rel=1e-6)


def test_threshold_override(export_dir):
    frame = make_frame(False)  # scores about 0.118
    with Detector.load(export_dir, threshold=0.05) as low:
        assert low.thresholds.threshold == 0.05 and low.thresholds.method == "override"
        assert low(frame).label is True
        low.set_threshold(None)
        assert low.thresholds.threshold == THRESHOLD and low(frame).label is False


def test_bad_inputs(det):
    with pytest.raises(AdtrError, match="empty batch"):
        det([])
    with pytest.raises(AdtrError, match="expected a numpy frame"):
        det("frame.png")
    with pytest.raises(AdtrError, match="shape"):
        det(np.zeros((1, 2, 3, 4, 5), np.uint8))


def test_close_releases_the_backend(export_dir):
    d = Detector.load(export_dir)
    assert d.backend.is_active
    d.close()
    assert not d.backend.is_active
