"""Metrics against hand-computed values and independent brute-force implementations."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from adtr_edge.evaluation import metrics as M
from adtr_edge.errors import AdtrError
from adtr_edge.postprocessing import normalize_score

# ------------------------------------------------------------------- brute-force references


def brute_auroc(scores, labels) -> float:
    """Mann-Whitney over every (positive, negative) pair; a tie is worth half."""
    s = np.asarray(scores, float)
    y = np.asarray(labels, bool)
    pos, neg = s[y][:, None], s[~y][None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


def _area_up_to(points, limit):
    """Trapezoid area under a polyline of (x, y) points (x non-decreasing) from x=0 to x=limit."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        if x0 >= limit:
            break
        if x1 <= limit:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_at = y0 + (y1 - y0) * (limit - x0) / (x1 - x0)
            area += (limit - x0) * (y0 + y_at) / 2
    return area


def brute_aupro(maps, masks, limit):
    """PRO curve evaluated threshold by threshold, region by region, then integrated."""
    regions = []
    for m, g in zip(maps, masks):
        count, comp = cv2.connectedComponents(g.astype(np.uint8), connectivity=8)
        regions.extend(m[comp == k] for k in range(1, count))
    normal = maps[~masks]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        fpr = float((normal >= t).mean())
        pro = float(np.mean([(r >= t).mean() for r in regions]))
        points.append((fpr, pro))
    return _area_up_to(points, limit) / limit


def random_maps(seed, n=5, size=12, levels=6):
    """Quantised maps (many ties) whose masks hold several blobs, plus one all-normal image."""
    rng = np.random.default_rng(seed)
    maps = rng.integers(0, levels, (n, size, size)).astype(np.float32) / levels
    masks = np.zeros((n, size, size), bool)
    for i in range(n - 1):
        for _ in range(rng.integers(1, 3)):
            y, x = rng.integers(0, size - 3, 2)
            h, w = rng.integers(1, 4, 2)
            masks[i, y : y + h, x : x + w] = True
    maps[masks] += rng.integers(0, 3, masks.sum()) / levels  # anomalies score somewhat higher
    return maps, masks


# ------------------------------------------------------------------------------ image AUROC

SK_SCORES = [0.1, 0.4, 0.35, 0.8]  # the example in sklearn's documentation
SK_LABELS = [0, 0, 1, 1]


def test_auroc_hand_computed():
    assert M.auroc(SK_SCORES, SK_LABELS) == pytest.approx(0.75)
    # pos {1, 2} vs neg {0, 1}: pairs worth 1, 0.5, 1, 1.
    assert M.auroc([0, 1, 1, 2], [0, 0, 1, 1]) == pytest.approx(0.875)


def test_auroc_ties_all_equal_perfect_inverted():
    assert M.auroc([3.0] * 6, [0, 1, 0, 1, 1, 0]) == pytest.approx(0.5)
    assert M.auroc([0.1, 0.2, 0.8, 0.9], [False, False, True, True]) == pytest.approx(1.0)
    assert M.auroc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == pytest.approx(0.0)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_pairwise_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.random(300) < 0.3
    scores = np.round(rng.normal(labels * 0.7, 1.0), 1)  # rounding makes plenty of ties
    assert M.auroc(scores, labels) == pytest.approx(brute_auroc(scores, labels), abs=1e-12)


def test_roc_curve_points_and_area():
    fpr, tpr, thr = M.roc_curve(SK_SCORES, SK_LABELS)
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tpr, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thr, [np.inf, 0.8, 0.4, 0.35, 0.1])
    rng = np.random.default_rng(7)
    y = rng.random(200) < 0.4
    s = rng.integers(0, 8, 200).astype(float)
    fpr, tpr, _ = M.roc_curve(s, y)
    assert np.trapezoid(tpr, fpr) == pytest.approx(brute_auroc(s, y), abs=1e-12)


@pytest.mark.parametrize(
    "scores,labels",
    [([], []), ([1.0, 2.0], [0]), ([1.0, np.nan], [0, 1]), ([1.0, 2.0], [0, 2]), ([1.0, 2.0], [1, 1])],
)
def test_auroc_rejects_bad_input(scores, labels):
    with pytest.raises(AdtrError):
        M.auroc(scores, labels)


# ------------------------------------------------------------------------------ pixel AUROC


@pytest.mark.parametrize("seed", range(4))
def test_pixel_auroc_matches_brute_force(seed):
    maps, masks = random_maps(seed)
    expected = brute_auroc(maps.reshape(-1), masks.reshape(-1))
    assert M.pixel_auroc(maps, masks) == pytest.approx(expected, abs=1e-12)
    # (N,1,H,W) maps as the transformer graph emits them give the same value.
    assert M.pixel_auroc(maps[:, None], masks) == pytest.approx(expected, abs=1e-12)


def test_pixel_auroc_float64_and_errors():
    maps, masks = random_maps(11)
    assert M.pixel_auroc(maps.astype(np.float64), masks) == pytest.approx(
        brute_auroc(maps.reshape(-1), masks.reshape(-1))
    )
    with pytest.raises(AdtrError, match="anomalous and normal"):
        M.pixel_auroc(maps, np.zeros_like(masks))
    with pytest.raises(AdtrError, match="does not match"):
        M.pixel_auroc(maps, masks[:, :5])
    bad = maps.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(AdtrError, match="NaN"):
        M.pixel_auroc(bad, masks)


# ------------------------------------------------------------------------------------ AUPRO


def one_defect(size=32):
    mask = np.zeros((2, size, size), bool)
    mask[0, 10:18, 12:20] = True
    return mask


def test_aupro_perfect_map_is_one():
    masks = one_defect()
    assert M.aupro(masks.astype(np.float32), masks) == pytest.approx(1.0)
    assert M.aupro(masks.astype(np.float32), masks, fpr_limit=0.05) == pytest.approx(1.0)


def test_aupro_of_map_shifted_off_the_defect_is_low():
    masks = one_defect()
    shifted = np.roll(masks, 12, axis=2).astype(np.float32)  # same blob, next to the defect
    value = M.aupro(shifted, masks)
    assert value < 0.5
    assert value == pytest.approx(brute_aupro(shifted, masks, 0.3), abs=1e-12)


def test_aupro_averages_regions_not_pixels():
    # Region A (2 px) scores above every normal pixel, region B (4 px) below all of them:
    # PRO is 0.5 for every FPR < 1, so AUPRO = 0.5 (pixel-weighted would give 1/3).
    maps = np.full((2, 6, 6), 0.5, np.float32)
    masks = np.zeros_like(maps, bool)
    masks[0, 0, 0:2] = True
    maps[0, 0, 0:2] = 2.0
    masks[1, 3:5, 3:5] = True
    maps[1, 3:5, 3:5] = -1.0
    for limit in (0.1, 0.3, 1.0):
        assert M.aupro(maps, masks, fpr_limit=limit) == pytest.approx(0.5)


def test_aupro_ties_with_normal_pixels_follow_the_diagonal():
    # Every pixel scores the same: the curve is the diagonal, area up to L is L^2/2.
    maps = np.ones((1, 4, 4), np.float32)
    masks = np.zeros_like(maps, bool)
    masks[0, 1:3, 1:3] = True
    assert M.aupro(maps, masks, fpr_limit=1.0) == pytest.approx(0.5)
    assert M.aupro(maps, masks, fpr_limit=0.3) == pytest.approx(0.15)


def test_aupro_uses_8_connectivity():
    # A 2-pixel bar plus a pixel touching it diagonally is ONE region of 3 pixels. The bar is
    # found at FPR 0, the diagonal pixel never: PRO = 2/3 (two 4-connected regions would give 1/2).
    maps = np.zeros((1, 6, 6), np.float32)
    masks = np.zeros_like(maps, bool)
    masks[0, 1, 1:3] = True
    maps[0, 1, 1:3] = 5.0
    masks[0, 2, 3] = True
    maps[0, 2, 3] = -5.0
    assert M.aupro(maps, masks, fpr_limit=1.0) == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("limit", [0.05, 0.3, 1.0])
def test_aupro_matches_brute_force(seed, limit):
    maps, masks = random_maps(seed)
    assert M.aupro(maps, masks, fpr_limit=limit) == pytest.approx(brute_aupro(maps, masks, limit), abs=1e-12)


def test_aupro_fpr_limit_changes_the_value_and_is_checked():
    maps, masks = random_maps(3, size=16, levels=20)
    values = [M.aupro(maps, masks, fpr_limit=lim) for lim in (0.01, 0.3, 1.0)]
    assert len({round(v, 9) for v in values}) == 3
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(AdtrError, match="fpr_limit"):
            M.aupro(maps, masks, fpr_limit=bad)


def test_aupro_normal_images_only_add_false_positives():
    maps, masks = random_maps(5)
    base = M.aupro(maps, masks)
    quiet = np.concatenate([maps, np.full((3, 12, 12), -1.0, np.float32)])
    loud = np.concatenate([maps, np.full((3, 12, 12), 9.0, np.float32)])
    more = np.concatenate([masks, np.zeros((3, 12, 12), bool)])
    # Normal pixels below every score only dilute the FPR, so AUPRO cannot drop; normal pixels
    # above every score are false positives at every threshold, so it must drop.
    assert M.aupro(quiet, more) >= base
    assert M.aupro(loud, more) < base
    assert M.aupro(loud, more) == pytest.approx(brute_aupro(loud, more, 0.3), abs=1e-12)


# ------------------------------------------------------------------------------- F1 and PR


def test_precision_recall_curve_and_f1_hand_computed():
    precision, recall, thr = M.precision_recall_curve(SK_SCORES, SK_LABELS)
    np.testing.assert_allclose(thr, [0.8, 0.4, 0.35, 0.1])
    np.testing.assert_allclose(precision, [1, 0.5, 2 / 3, 0.5])
    np.testing.assert_allclose(recall, [0.5, 0.5, 1, 1])
    f1, t = M.f1_max(SK_SCORES, SK_LABELS)
    assert f1 == pytest.approx(0.8)
    assert t == pytest.approx(0.35)


@pytest.mark.parametrize("seed", range(3))
def test_f1_max_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(120) < 0.3
    s = np.round(rng.normal(y * 1.0, 1.0), 1)
    best = 0.0
    for t in np.unique(s):
        pred = s >= t
        tp = (pred & y).sum()
        f1 = 2 * tp / (pred.sum() + y.sum())
        best = max(best, f1)
    f1, t = M.f1_max(s, y)
    assert f1 == pytest.approx(best)
    pred = s >= t
    assert 2 * (pred & y).sum() / (pred.sum() + y.sum()) == pytest.approx(f1)


def test_f1_needs_anomalies():
    with pytest.raises(AdtrError, match="anomalous"):
        M.f1_max([0.1, 0.2], [0, 0])


# ------------------------------------------------------------------------------- thresholds


def test_calibrate_threshold_f1_mode():
    t = M.calibrate_threshold([0.1, 0.4], [0.35, 0.8])
    assert t.method == "f1"
    assert t.threshold == pytest.approx(0.35)
    assert (t.score_min, t.score_max) == pytest.approx((0.1, 0.8))
    assert float(normalize_score(0.35, t)) == pytest.approx(0.5)
    assert float(normalize_score(0.8, t)) > 0.5 > float(normalize_score(0.1, t))


def test_calibrate_threshold_quantile_mode():
    normal = np.arange(101, dtype=float)
    t = M.calibrate_threshold(normal)
    assert t.method == "quantile"
    assert t.threshold == pytest.approx(99.0)
    assert (t.score_min, t.score_max) == (0.0, 100.0)
    assert M.calibrate_threshold(normal, quantile=1.0).threshold == 100.0
    assert M.calibrate_threshold(normal, quantile=0.5).threshold == pytest.approx(50.0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(normal_scores=[]), "no normal scores"),
        (dict(normal_scores=[1.0, np.nan]), "NaN"),
        (dict(normal_scores=[1.0], anomalous_scores=[]), "empty"),
        (dict(normal_scores=[1.0], anomalous_scores=[np.inf]), "NaN or infinite"),
        (dict(normal_scores=[1.0, 2.0], quantile=0.0), "quantile"),
        (dict(normal_scores=[1.0, 2.0], quantile=1.5), "quantile"),
    ],
)
def test_calibrate_threshold_errors(kwargs, match):
    with pytest.raises(AdtrError, match=match):
        M.calibrate_threshold(**kwargs)


# --------------------------------------------------------------------------------- evaluate


def evaluation_set(seed=0):
    """8 good images, 4 'crack' (easy: map hot on the defect) and 4 'spot' (map off the defect)."""
    rng = np.random.default_rng(seed)
    n, size = 16, 16
    maps = rng.random((n, size, size)).astype(np.float32) * 0.5
    masks = np.zeros((n, size, size), bool)
    defects = ["good"] * 8 + ["crack"] * 4 + ["spot"] * 4
    for i in range(8, 16):
        masks[i, 4:8, 4:10] = True
    maps[8:12][masks[8:12]] += 1.0
    maps[12:16, 10:14, 10:14] += 0.3
    labels = np.r_[np.zeros(8), np.ones(8)].astype(int)
    scores = maps.reshape(n, -1).max(1)
    return scores, labels, maps, masks, defects


def test_evaluate_report_keys_and_values():
    scores, labels, maps, masks, defects = evaluation_set()
    report = M.evaluate(scores, labels, maps, masks, defects)
    assert set(report) == {
        "image_auroc", "pixel_auroc", "aupro", "f1_max", "f1_threshold", "n_images", "n_anomalous", "per_defect",
    }
    assert report["n_images"] == 16 and report["n_anomalous"] == 8
    assert report["image_auroc"] == pytest.approx(brute_auroc(scores, labels))
    assert report["pixel_auroc"] == pytest.approx(brute_auroc(maps.reshape(-1), masks.reshape(-1)))
    assert report["aupro"] == pytest.approx(brute_aupro(maps, masks, 0.3))
    assert (report["f1_max"], report["f1_threshold"]) == pytest.approx(M.f1_max(scores, labels))
    assert set(report["per_defect"]) == {"crack", "spot"}
    good = np.arange(8)
    for name, idx in (("crack", np.arange(8, 12)), ("spot", np.arange(12, 16))):
        sel = np.r_[good, idx]
        entry = report["per_defect"][name]
        assert entry["n"] == 4
        assert entry["image_auroc"] == pytest.approx(brute_auroc(scores[sel], labels[sel]))
        assert entry["pixel_auroc"] == pytest.approx(brute_auroc(maps[sel].reshape(-1), masks[sel].reshape(-1)))
        assert entry["aupro"] == pytest.approx(brute_aupro(maps[sel], masks[sel], 0.3))
    assert report["per_defect"]["crack"]["aupro"] == pytest.approx(1.0)
    assert report["per_defect"]["spot"]["aupro"] < 0.5
    json.dumps(report, allow_nan=False)


def test_evaluate_without_pixels_or_anomalies_uses_none():
    scores, labels, maps, masks, defects = evaluation_set()
    report = M.evaluate(scores, labels)
    assert report["pixel_auroc"] is None and report["aupro"] is None and report["per_defect"] == {}
    assert report["image_auroc"] is not None
    normal_only = M.evaluate(scores[:8], labels[:8], maps[:8], masks[:8], defects[:8])
    assert normal_only["image_auroc"] is None and normal_only["f1_max"] is None
    assert normal_only["pixel_auroc"] is None and normal_only["aupro"] is None
    json.dumps(normal_only, allow_nan=False)
    # Masks present but empty (e.g. the four empty 'uneven' masks): pixel metrics undefined.
    empty = M.evaluate(scores, labels, maps, np.zeros_like(masks), defects)
    assert empty["pixel_auroc"] is None and empty["per_defect"]["crack"]["aupro"] is None
    assert empty["image_auroc"] == pytest.approx(brute_auroc(scores, labels))


def test_evaluate_rejects_inconsistent_input():
    scores, labels, maps, masks, defects = evaluation_set()
    with pytest.raises(AdtrError, match="both"):
        M.evaluate(scores, labels, maps=maps)
    with pytest.raises(AdtrError, match="anomaly maps but"):
        M.evaluate(scores[:-1], labels[:-1], maps, masks)
    with pytest.raises(AdtrError, match="defect names"):
        M.evaluate(scores, labels, defects=defects[:-1])
    with pytest.raises(AdtrError, match="labels"):
        M.evaluate(scores, labels[:-1])


# ------------------------------------------------------------------------------- real data

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "magnetic_tile"


@pytest.mark.data
def test_real_masks_as_maps_score_perfectly():
    from adtr_edge.preprocessing import PreprocessSpec, read_mask, resize_mask

    files = sorted((DATA / "ground_truth" / "crack").glob("*_mask.png"))[:20]
    if not files:
        pytest.skip(f"magnetic_tile dataset not found at {DATA}")
    spec = PreprocessSpec(height=128, width=128)
    masks = np.stack([resize_mask(read_mask(f), spec) for f in files])
    masks = np.concatenate([masks, np.zeros((5, 128, 128), bool)])
    perfect = masks.astype(np.float32)
    assert M.pixel_auroc(perfect, masks) == pytest.approx(1.0)
    assert M.aupro(perfect, masks) == pytest.approx(1.0)
    # Quantised so the threshold-by-threshold brute force stays fast.
    blurred = np.round(np.stack([cv2.GaussianBlur(m, (0, 0), 3) for m in perfect]) * 50) / 50
    assert M.aupro(blurred, masks) == pytest.approx(brute_aupro(blurred, masks, 0.3), abs=1e-9)
