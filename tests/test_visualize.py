"""Heat maps, overlays, three-pane view and grids: shapes, colours, and where the contour goes."""

from __future__ import annotations

import numpy as np
import pytest

from adtr_edge.evaluation import visualize as V
from adtr_edge.errors import AdtrError
from adtr_edge.postprocessing import Thresholds

T = Thresholds(threshold=0.5, score_min=0.0, score_max=1.0, method="f1")
RED = np.array(V.CONTOUR_BGR, np.uint8)


def hot_square_map(size=16):
    """Low everywhere, 0.9 on a square at rows/cols 4..8 (a quarter of the way in)."""
    m = np.full((size, size), 0.1, np.float32)
    m[4:8, 4:8] = 0.9
    return m


def is_red(img):
    return np.all(img == RED, axis=-1)


def test_colorize_shape_dtype_and_scale():
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    heat = V.colorize(ramp, 0.0, 1.0)
    assert heat.shape == (8, 8, 3) and heat.dtype == np.uint8
    low, high = heat[0, 0].astype(int), heat[-1, -1].astype(int)
    assert low[0] > low[2]  # vmin is blue (BGR)
    assert high[2] > high[0]  # vmax is red
    # Values outside [vmin, vmax] saturate instead of wrapping around.
    np.testing.assert_array_equal(V.colorize(np.full((2, 2), 5.0), 0, 1)[0, 0], high)
    np.testing.assert_array_equal(V.colorize(np.full((2, 2), -5.0), 0, 1)[0, 0], low)
    assert V.colorize(ramp[None], 0, 1).shape == (8, 8, 3)  # (1, H, W) accepted


def test_colorize_rejects_bad_range_and_shape():
    with pytest.raises(AdtrError, match="vmin"):
        V.colorize(np.zeros((2, 2)), 1.0, 0.0)
    with pytest.raises(AdtrError, match="2-D"):
        V.colorize(np.zeros((2, 2, 2)), 0.0, 1.0)


def test_overlay_resizes_map_and_draws_contour_around_hot_region():
    frame = np.full((64, 64), 90, np.uint8)  # grayscale frame, map 4x smaller
    original = frame.copy()
    out = V.overlay(frame, hot_square_map(), T)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(frame, original)  # input untouched

    red = is_red(out)
    assert red.any()
    ys, xs = np.nonzero(red)
    # The hot square covers about rows/cols 16..32 on the frame; the outline hugs it.
    assert ys.min() >= 12 and ys.max() <= 35 and xs.min() >= 12 and xs.max() <= 35
    assert not red[:8].any() and not red[:, 50:].any()

    plain = V.overlay(frame, hot_square_map(), T, contour=False)
    assert not is_red(plain).any()
    np.testing.assert_array_equal(out[~red], plain[~red])  # the contour is the only difference


def test_overlay_without_anomaly_has_no_contour_and_respects_alpha():
    frame = np.zeros((32, 48, 3), np.uint8)
    cold = np.full((8, 12), 0.1, np.float32)
    out = V.overlay(frame, cold, T)
    assert not is_red(out).any()
    np.testing.assert_array_equal(V.overlay(frame, cold, T, alpha=0.0), frame)
    with pytest.raises(AdtrError, match="alpha"):
        V.overlay(frame, cold, T, alpha=1.5)


def test_overlay_threshold_moves_the_contour():
    frame = np.zeros((40, 40, 3), np.uint8)
    ramp = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (40, 1))  # rises left to right
    low = is_red(V.overlay(frame, ramp, Thresholds(0.25, 0.0, 1.0)))
    high = is_red(V.overlay(frame, ramp, Thresholds(0.75, 0.0, 1.0)))
    assert np.nonzero(low)[1].min() < np.nonzero(high)[1].min()


def test_three_pane_layout_and_text():
    frame = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    view = V.three_pane(frame, hot_square_map(), T, score=0.9, normalized_score=0.9, label=True, fps=30.0)
    assert view.dtype == np.uint8 and view.ndim == 3
    assert view.shape[1] == 3 * 80 and view.shape[0] > 60
    bar = view.shape[0] - 60
    np.testing.assert_array_equal(view[bar:, :80], frame)  # left pane is the untouched original
    np.testing.assert_array_equal(view[bar:, 160:], V.overlay(frame, hot_square_map(), T))
    assert (view[:bar] != view[0, 0]).any()  # the bar carries text
    ok = V.three_pane(frame, hot_square_map(), T, 0.1, 0.1, label=False)
    assert ok.shape == view.shape and (ok[:bar] != view[:bar]).any()
    assert V.three_pane(frame, hot_square_map(), T, 0.1, 0.1, label="cam 2").shape == view.shape


def test_grid_layout_titles_and_mixed_sizes():
    images = [np.full((20, 30, 3), 50 * i, np.uint8) for i in range(4)] + [np.full((10, 10), 200, np.uint8)]
    g = V.grid(images, cols=2)
    assert g.shape == (3 * 20, 2 * 30, 3) and g.dtype == np.uint8
    np.testing.assert_array_equal(g[20:40, 30:60], images[3])
    assert (g[40:60, 30:60] == 0).all()  # the empty last cell stays black
    titled = V.grid(images, cols=3, titles=[f"img {i}" for i in range(5)])
    assert titled.shape[1] == 3 * 30 and titled.shape[0] > 2 * 20
    with pytest.raises(AdtrError, match="titles"):
        V.grid(images, cols=2, titles=["one"])
    with pytest.raises(AdtrError, match="no images"):
        V.grid([], cols=2)
    with pytest.raises(AdtrError, match="cols"):
        V.grid(images, cols=0)
