"""Report figures: each call leaves one complete, decodable PNG and no temp files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from adtr_edge.evaluation import plots  # noqa: E402
from adtr_edge.errors import AdtrError  # noqa: E402
from adtr_edge.postprocessing import Thresholds  # noqa: E402


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape[0] > 50 and image.shape[1] > 50
    assert image.std() > 0  # something was drawn
    assert not list(path.parent.glob(".tmp-*"))


def test_roc_plot(tmp_path):
    out = plots.roc_plot(
        {"fp32": ([0, 0.2, 1], [0, 0.9, 1], 0.93), "int8": (np.array([0, 0.5, 1]), np.array([0, 0.8, 1]), 0.8)},
        tmp_path / "roc.png",
    )
    assert out == tmp_path / "roc.png"
    assert_png(out)
    with pytest.raises(AdtrError):
        plots.roc_plot({}, tmp_path / "empty.png")
    assert not (tmp_path / "empty.png").exists()


def test_score_histogram(tmp_path):
    rng = np.random.default_rng(0)
    assert_png(plots.score_histogram(rng.normal(0, 1, 100), rng.normal(3, 1, 40), 1.5, tmp_path / "h.png"))
    assert_png(plots.score_histogram([1.0, 1.0], None, None, tmp_path / "normal_only.png"))
    with pytest.raises(AdtrError, match="NaN"):
        plots.score_histogram([1.0, np.nan], [2.0], 1.5, tmp_path / "bad.png")


def test_overlay_grid(tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (48, 64), dtype=np.uint8) for _ in range(5)]
    maps = [rng.random((16, 16)).astype(np.float32) for _ in range(5)]
    t = Thresholds(0.8, 0.0, 1.0)
    assert_png(plots.overlay_grid(frames, maps, t, [f"#{i}" for i in range(5)], tmp_path / "g.png", max_items=4))
    with pytest.raises(AdtrError, match="maps"):
        plots.overlay_grid(frames, maps[:2], t, None, tmp_path / "bad.png")


def test_accuracy_vs_time_plot(tmp_path):
    series = {"fp16 batch 8": [(10, 0.7), (60, 0.85), (3600, 0.95)], "small": [(5, 0.6), (30, 0.8)]}
    assert_png(plots.accuracy_vs_time_plot(series, {"paper ADTR": 0.96}, tmp_path / "acc.png"))
    assert_png(plots.accuracy_vs_time_plot({"one": [(0, 0.5), (1, 0.9)]}, None, tmp_path / "acc2.png"))
    with pytest.raises(AdtrError, match="empty"):
        plots.accuracy_vs_time_plot({"none": []}, {}, tmp_path / "bad.png")
