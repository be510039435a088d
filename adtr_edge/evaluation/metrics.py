"""Detection metrics and threshold calibration (numpy + OpenCV only).

Image level: ROC curve, AUROC, precision/recall curve, F1-max. Pixel level: pixel AUROC and AUPRO
(the MVTec AD per-region-overlap metric). ``calibrate_threshold`` turns validation scores into the
``Thresholds`` recorded in the exported graphs; ``evaluate`` returns one JSON-ready report.

All areas are exact (no threshold grid): the curves are the piecewise-linear curves through the
points of every distinct threshold, as sklearn's ``roc_auc_score`` and MVTec's reference code draw
them, so tied scores give the usual half credit. They are computed without sorting the positives:
only the negatives are sorted (``np.sort`` is SIMD-fast; ``argsort`` of 40M pixels is ~20x slower)
and every positive pixel is located among them with a binary search. The area under such a curve is
a sum over positives, because each positive lifts the curve by its own weight from the point where
its threshold is crossed (see ``_partial_area``). That keeps 600 maps of 256x256 (40M pixels) to a
few seconds on one core.
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np

from ..errors import AdtrError
from ..postprocessing import Thresholds

# ---------------------------------------------------------------------------------- validation


def _scores_and_labels(scores, labels, what: str = "scores") -> tuple[np.ndarray, np.ndarray]:
    """1-D finite float scores and bool labels of the same length, or one clear error."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1) if np.ndim(scores) else np.asarray([], np.float64)
    raw = np.asarray(labels).reshape(-1)
    if s.size != raw.size:
        raise AdtrError(f"{what}: {s.size} scores but {raw.size} labels")
    if s.size == 0:
        raise AdtrError(f"{what}: no scores given")
    if not np.all(np.isfinite(s)):
        raise AdtrError(f"{what}: contains NaN or infinite values")
    if raw.dtype != bool and not np.all((raw == 0) | (raw == 1)):
        raise AdtrError(f"{what}: labels must be 0/1 or bool, got values {np.unique(raw)[:5].tolist()}")
    return s, raw.astype(bool)


def maps_and_masks(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    """(N,H,W) float maps and bool masks of one shape; (N,1,H,W) is accepted and squeezed."""
    m = np.asarray(maps)
    g = np.asarray(masks)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if g.ndim == 4 and g.shape[1] == 1:
        g = g[:, 0]
    if m.ndim != 3:
        raise AdtrError(f"anomaly maps: expected shape (N,H,W), got {m.shape}")
    if g.shape != m.shape:
        raise AdtrError(f"masks: shape {g.shape} does not match anomaly maps {m.shape}")
    # float32 halves the memory of 40M pixels; float64 input keeps its precision.
    if m.dtype != np.float64:
        m = m.astype(np.float32, copy=False)
    if not np.all(np.isfinite(m)):
        raise AdtrError("anomaly maps: contain NaN or infinite values")
    return m, g.astype(bool, copy=False)


# ------------------------------------------------------------------------------- curve areas


def _partial_area(neg_sorted: np.ndarray, pos: np.ndarray, pos_weight, limit: float) -> float:
    """Area under the (FPR, weighted TPR) curve from FPR 0 to ``limit``.

    ``neg_sorted``: negative scores, ascending. ``pos``: positive scores (any order), each lifting
    the curve by ``pos_weight`` (scalar or per-positive; they sum to 1).

    A positive with score s is counted as detected once the threshold reaches s. If ``a``/``b`` are
    the fractions of negatives scoring > s / >= s, its share of the curve is 0 before FPR a, rises
    linearly to its weight at FPR b (the diagonal drawn through tied scores) and stays there. Its
    share of the area up to ``limit`` is therefore weight * (ramp part + flat part) -- no sort of
    the positives and no threshold loop needed. With limit=1 and equal weights this is the
    Mann-Whitney statistic with half credit for ties, i.e. the exact AUROC.
    """
    # Binary searches for ascending queries walk the big array in order (cache friendly):
    # ~4x faster than random order on 40M negatives.
    if np.ndim(pos_weight) == 0:
        pos = np.sort(pos)
    else:
        order = np.argsort(pos)
        pos, pos_weight = pos[order], np.asarray(pos_weight)[order]
    n = neg_sorted.size
    above = n - np.searchsorted(neg_sorted, pos, side="right")  # negatives scoring > s
    at_or_above = n - np.searchsorted(neg_sorted, pos, side="left")  # negatives scoring >= s
    a = above / n
    b = at_or_above / n
    end = np.minimum(b, limit)
    width = b - a
    with np.errstate(divide="ignore", invalid="ignore"):
        ramp = np.where(width > 0, np.square(np.maximum(end - a, 0.0)) / (2.0 * width), 0.0)
    flat = np.maximum(limit - b, 0.0)
    share = ramp + flat
    if np.ndim(pos_weight) == 0:
        return float(share.sum(dtype=np.float64) * float(pos_weight))
    return float(np.dot(share, pos_weight))


def roc_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: (fpr, tpr, thresholds), one point per distinct score, thresholds descending.

    A sample is predicted anomalous when score >= threshold. The first point is (0, 0) with
    threshold +inf, the last (1, 1). Unlike sklearn, collinear points are kept.
    """
    s, y = _scores_and_labels(scores, labels)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise AdtrError("roc_curve: needs both normal and anomalous samples")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(y)[last_of_value]
    fps = (last_of_value + 1) - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    thresholds = np.r_[np.inf, s[last_of_value]]
    return fpr, tpr, thresholds


def auroc(scores, labels) -> float:
    """Exact area under the ROC curve; ties count half (same value as sklearn's roc_auc_score)."""
    s, y = _scores_and_labels(scores, labels)
    if y.all() or not y.any():
        raise AdtrError("auroc: needs both normal and anomalous samples")
    return _partial_area(np.sort(s[~y]), s[y], 1.0 / y.sum(), 1.0)


def pixel_auroc(maps, masks) -> float:
    """Exact pixel-level AUROC over all pixels of all images (masks: True = anomalous pixel).

    Exact, not binned: negatives are sorted, positives binary-searched among them.
    """
    m, g = maps_and_masks(maps, masks)
    pos = m[g]
    if pos.size == 0 or pos.size == g.size:
        raise AdtrError("pixel_auroc: masks need both anomalous and normal pixels")
    neg = np.sort(m[~g])
    return _partial_area(neg, pos, 1.0 / pos.size, 1.0)


def mask_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Region id (0..R-1) of every anomalous pixel, in ``masks[masks]`` order, and region sizes.

    Regions are the 8-connected components of each image's mask; a defect touching itself only
    diagonally is one region, as in the MVTec AD evaluation code.
    """
    ids, sizes = [], []
    next_id = 0
    for mask in masks:
        if not mask.any():
            continue
        count, comp = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        region = comp[mask].astype(np.int64) - 1  # component 0 is the background
        ids.append(region + next_id)
        sizes.append(np.bincount(region, minlength=count - 1))
        next_id += count - 1
    if not ids:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(ids), np.concatenate(sizes)


def aupro(maps, masks, fpr_limit: float = 0.3) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit``.

    The MVTec AD definition: for a threshold t, PRO(t) is the mean over all ground-truth regions
    (8-connected components of each mask) of the fraction of the region's pixels scoring >= t;
    FPR(t) is the fraction of normal pixels (of every image) scoring >= t. The curve PRO(FPR) is
    integrated exactly (every distinct threshold, linear between points) from 0 to ``fpr_limit``.
    Images with empty masks only add normal pixels. A perfect map scores 1.
    """
    if not (0.0 < float(fpr_limit) <= 1.0):
        raise AdtrError(f"aupro: fpr_limit must be in (0, 1], got {fpr_limit}")
    m, g = maps_and_masks(maps, masks)
    region, sizes = mask_regions(g)
    if region.size == 0 or region.size == g.size:
        raise AdtrError("aupro: masks need both anomalous and normal pixels")
    # Each region weighs 1/R in the mean and each of its pixels 1/size of that.
    weight = 1.0 / (sizes[region] * float(sizes.size))
    area = _partial_area(np.sort(m[~g]), m[g], weight, float(fpr_limit))
    return area / float(fpr_limit)


# ------------------------------------------------------------------------ precision / recall


def precision_recall_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds), one entry per distinct score, thresholds descending.

    Entry i describes the rule "anomalous when score >= thresholds[i]".
    """
    s, y = _scores_and_labels(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise AdtrError("precision_recall_curve: needs at least one anomalous sample")
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tps = np.cumsum(y)[last_of_value].astype(np.float64)
    predicted = (last_of_value + 1).astype(np.float64)
    return tps / predicted, tps / n_pos, s[last_of_value]


def f1_max(scores, labels) -> tuple[float, float]:
    """Best F1 over all thresholds and that threshold (highest one on ties)."""
    precision, recall, thresholds = precision_recall_curve(scores, labels)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    return float(f1[best]), float(thresholds[best])


# --------------------------------------------------------------------------------- thresholds


def calibrate_threshold(normal_scores, anomalous_scores=None, quantile: float = 0.99) -> Thresholds:
    """Decision threshold and normalisation range from held-out validation scores.

    With anomalous scores: the F1-optimal threshold (method "f1"). With normal scores only: their
    ``quantile`` (linear interpolation; method "quantile"); quantile=1 is the highest normal score.
    Since ``label`` flags score >= threshold, a normal image scoring exactly the threshold is
    flagged. score_min/score_max span every given score, so normalised scores use all of [0, 1].
    """
    normal = np.asarray(normal_scores, dtype=np.float64).reshape(-1)
    if normal.size == 0:
        raise AdtrError("calibrate_threshold: no normal scores given")
    if not np.all(np.isfinite(normal)):
        raise AdtrError("calibrate_threshold: normal scores contain NaN or infinite values")
    anomalous = None
    if anomalous_scores is not None:
        anomalous = np.asarray(anomalous_scores, dtype=np.float64).reshape(-1)
        if anomalous.size == 0:
            raise AdtrError("calibrate_threshold: anomalous scores given but empty")
        if not np.all(np.isfinite(anomalous)):
            raise AdtrError("calibrate_threshold: anomalous scores contain NaN or infinite values")
    if anomalous is not None:
        scores = np.concatenate([normal, anomalous])
        labels = np.r_[np.zeros(normal.size, bool), np.ones(anomalous.size, bool)]
        _, threshold = f1_max(scores, labels)
        method = "f1"
    else:
        q = float(quantile)
        if not (0.0 < q <= 1.0):
            raise AdtrError(f"calibrate_threshold: quantile must be in (0, 1], got {quantile}")
        scores = normal
        threshold = float(np.quantile(normal, q))
        method = "quantile"
    return Thresholds(
        threshold=float(threshold),
        score_min=float(scores.min()),
        score_max=float(scores.max()),
        method=method,
    )


# --------------------------------------------------------------------------------- evaluation


def _or_none(fn, *args, **kwargs):
    """The metric's value, or None where the data cannot define it (e.g. one class only)."""
    try:
        value = fn(*args, **kwargs)
    except AdtrError:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _pixel_metrics(maps, masks, fpr_limit: float) -> dict:
    if maps is None or masks is None or not masks.any() or masks.all():
        return {"pixel_auroc": None, "aupro": None}
    return {
        "pixel_auroc": _or_none(pixel_auroc, maps, masks),
        "aupro": _or_none(aupro, maps, masks, fpr_limit=fpr_limit),
    }


def evaluate(
    image_scores,
    labels,
    maps=None,
    masks=None,
    defects: Sequence[str] | None = None,
    fpr_limit: float = 0.3,
) -> dict:
    """All metrics as a JSON-ready dict (None where undefined, never NaN).

    Keys: image_auroc, pixel_auroc, aupro, f1_max, f1_threshold, n_images, n_anomalous,
    per_defect. Pixel metrics need ``maps`` and ``masks`` with anomalous pixels. ``defects`` names
    each image's defect type; per_defect[d] compares the images of defect d with all normal
    images (label 0): image_auroc, and pixel_auroc/aupro over those images' pixels, plus n.
    """
    s, y = _scores_and_labels(image_scores, labels, what="image scores")
    m = g = None
    if (maps is None) != (masks is None):
        raise AdtrError("evaluate: give both anomaly maps and masks, or neither")
    if maps is not None:
        m, g = maps_and_masks(maps, masks)
        if m.shape[0] != s.size:
            raise AdtrError(f"evaluate: {m.shape[0]} anomaly maps but {s.size} image scores")
    if not (0.0 < float(fpr_limit) <= 1.0):
        raise AdtrError(f"evaluate: fpr_limit must be in (0, 1], got {fpr_limit}")

    f1 = threshold = None
    if y.any():
        f1, threshold = f1_max(s, y)
    report = {
        "image_auroc": _or_none(auroc, s, y),
        **_pixel_metrics(m, g, fpr_limit),
        "f1_max": f1,
        "f1_threshold": threshold,
        "n_images": int(s.size),
        "n_anomalous": int(y.sum()),
        "per_defect": {},
    }
    if defects is None:
        return report

    names = np.asarray([str(d) for d in defects])
    if names.size != s.size:
        raise AdtrError(f"evaluate: {names.size} defect names but {s.size} image scores")
    normal = ~y
    for defect in sorted(set(names[y].tolist())):
        chosen = normal | (y & (names == defect))
        entry = {
            "image_auroc": _or_none(auroc, s[chosen], y[chosen]),
            **_pixel_metrics(None if m is None else m[chosen], None if g is None else g[chosen], fpr_limit),
            "n": int((y & (names == defect)).sum()),
        }
        report["per_defect"][defect] = entry
    return report
