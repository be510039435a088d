"""folder.save_threshold: the folder's threshold changes atomically, the old one is kept in the
manifest's history, and every loader still accepts the folder (the graphs keep the exported value)."""

from __future__ import annotations

import json

import pytest

from tests.runtime_fakes import write_fake_export

from adtr_edge import folder as mf
from adtr_edge.errors import AdtrError
from adtr_edge.runtime.detector import Detector


def _manifest(path):
    return json.loads((path / "manifest.json").read_text())


def test_saved_threshold_is_what_the_next_load_uses_and_history_grows(tmp_path):
    model = write_fake_export(tmp_path / "model")
    first = mf.save_threshold(model, 0.4, by="test")
    assert first["threshold"] == 0.5 and first["method"] == "quantile" and first["new_threshold"] == 0.4
    assert first["replaced_by"] == "test" and first["replaced_at"].endswith("Z")
    mf.save_threshold(model, 0.3)
    m = _manifest(model)
    t = m["meta"]["postprocess"]["thresholds"]
    assert t["threshold"] == 0.3 and t["method"] == "saved" and (t["score_min"], t["score_max"]) == (0.0, 1.0)
    assert [(h["threshold"], h["new_threshold"]) for h in m["threshold_history"]] == [(0.5, 0.4), (0.4, 0.3)]
    assert [p.name for p in model.iterdir() if p.name.startswith(".tmp-")] == []  # written by rename
    with Detector.load(model, backend="onnxruntime") as det:  # the graphs still carry 0.5: accepted
        assert det.thresholds.threshold == 0.3


def test_bad_values_and_folders_leave_the_manifest_untouched(tmp_path):
    model = write_fake_export(tmp_path / "model")
    before = (model / "manifest.json").read_bytes()
    for bad in (float("nan"), float("inf"), "high", None):
        with pytest.raises(AdtrError, match="must be a finite number"):
            mf.save_threshold(model, bad)
    with pytest.raises(AdtrError, match="model folder not found"):
        mf.save_threshold(tmp_path / "nowhere", 0.4)
    assert (model / "manifest.json").read_bytes() == before


def test_a_graph_from_another_calibration_is_still_refused(tmp_path):
    """Only the host-side decision (threshold, method) may differ between manifest and graphs."""
    model = write_fake_export(tmp_path / "model", graph_meta_override={
        "transformer": {"postprocess": {"thresholds": {"threshold": 0.5, "score_min": 0.0, "score_max": 9.0, "method": "quantile"},
                                        "pool_kernel": 8, "map_size": [64, 64],
                                        "normalized_score": "clamp((score - threshold) / (score_max - score_min) + 0.5, 0, 1)"}}})
    with pytest.raises(AdtrError, match="metadata 'postprocess' differs"):
        Detector.load(model, backend="onnxruntime")
