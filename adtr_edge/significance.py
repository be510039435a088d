"""Is one detector really better than another on this test set? Paired, stratified bootstrap.

A difference of 0.3 AUROC points between two methods scored on a few hundred images can be noise.
``paired_bootstrap`` resamples the test images (with replacement, normal and anomalous images
separately, so every resample keeps the class balance), scores both methods on the *same*
resampled images, and reports each metric's confidence interval and that of the difference.

Image AUROC is recomputed exactly on every resample. Pixel AUROC and AUPRO would mean sorting
every pixel of every resample, so each image's map is reduced once to histograms over shared bins
(quantiles of all pixel scores): a resample is then a weighted sum of per-image histograms. With
the default 2048 bins the binned figures agree with ``adtr_edge.metrics`` to about 1e-3 (the
point estimates reported are the exact ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import AdtrError
from .metrics import maps_and_masks, mask_regions, aupro, auroc, pixel_auroc

METRICS = ("image_auroc", "pixel_auroc", "aupro")


@dataclass
class Interval:
    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}


@dataclass
class PairedResult:
    """Per metric: each method's interval, the difference a - b, and the share of resamples with a > b."""

    a: dict[str, Interval]
    b: dict[str, Interval]
    difference: dict[str, Interval]
    a_better: dict[str, float]
    resamples: int
    confidence: float

    def to_dict(self) -> dict:
        return {"a": {k: v.to_dict() for k, v in self.a.items()}, "b": {k: v.to_dict() for k, v in self.b.items()},
                "difference": {k: v.to_dict() for k, v in self.difference.items()}, "a_better": self.a_better,
                "resamples": self.resamples, "confidence": self.confidence}


class _PixelHistograms:
    """One method's maps reduced to per-image histograms over shared bins (see the module doc)."""

    def __init__(self, maps, masks, bins: int):
        m, g = maps_and_masks(maps, masks)
        n = m.shape[0]
        flat = m.reshape(n, -1)
        edges = np.unique(np.quantile(flat, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
        idx = np.searchsorted(edges, flat, side="right")  # bin of every pixel, 0..len(edges)
        nb = len(edges) + 1
        gm = g.reshape(n, -1)
        self.neg = np.stack([np.bincount(idx[i][~gm[i]], minlength=nb) for i in range(n)]).astype(np.float64)
        self.pos = np.stack([np.bincount(idx[i][gm[i]], minlength=nb) for i in range(n)]).astype(np.float64)
        # Regions (8-connected components of each mask): a histogram per region, as fractions of it.
        # mask_regions lists anomalous pixels in g[g] order, image by image, so each pixel's image is known.
        region, sizes = mask_regions(g)
        pixel_image = np.repeat(np.arange(n), gm.sum(axis=1))
        self.region_image = np.zeros(sizes.size, np.int64)
        self.region_image[region] = pixel_image
        hist = np.zeros((sizes.size, nb))
        np.add.at(hist, (region, idx[gm]), 1.0)
        self.region_frac = hist / np.maximum(sizes[:, None], 1)

    def pixel_auroc(self, w: np.ndarray) -> float:
        pos, neg = w @ self.pos, w @ self.neg
        below = np.cumsum(neg) - neg  # negatives in lower bins
        return float((pos * (below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))

    def aupro(self, w: np.ndarray, fpr_limit: float = 0.3) -> float:
        neg = w @ self.neg
        # Thresholds from the top bin down: FPR and PRO of "score in this bin or above".
        fpr = np.cumsum(neg[::-1]) / neg.sum()
        rw = w[self.region_image]
        pro = (rw @ np.cumsum(self.region_frac[:, ::-1], axis=1)) / rw.sum()
        fpr, pro = np.r_[0.0, fpr], np.r_[0.0, pro]
        cut = int(np.searchsorted(fpr, fpr_limit, side="right"))
        xs, ys = fpr[:cut], pro[:cut]
        if cut < fpr.size:  # interpolate the curve at the limit
            x0, x1, y0, y1 = fpr[cut - 1], fpr[cut], pro[cut - 1], pro[cut]
            y = y0 + (y1 - y0) * (fpr_limit - x0) / (x1 - x0) if x1 > x0 else y1
            xs, ys = np.r_[xs, fpr_limit], np.r_[ys, y]
        area = float(((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1])).sum() / 2.0)  # trapezoids (numpy 1.x has no trapezoid)
        return area / fpr_limit


def _stratified_weights(labels: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, N) multiplicities: each class resampled with replacement to its own size."""
    rng = np.random.default_rng(seed)
    w = np.zeros((resamples, labels.size))
    for cls in (0, 1):
        members = np.flatnonzero(labels == cls)
        draws = rng.integers(0, members.size, size=(resamples, members.size))
        for r in range(resamples):
            w[r] += np.bincount(members[draws[r]], minlength=labels.size)
    return w


def paired_bootstrap(a: dict, b: dict, labels, masks=None, *, resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0, bins: int = 2048) -> PairedResult:
    """``a``/``b``: {"scores": (N,), "maps": (N, H, W) or None} of two methods on the same N images;
    ``masks``: (N, H, W) ground truth (pixel metrics only when given and both have maps)."""
    y = np.asarray(labels).astype(np.int64).ravel()
    if not ((y == 0).any() and (y == 1).any()):
        raise AdtrError("paired_bootstrap: needs both normal and anomalous images")
    if not (0.0 < confidence < 1.0) or resamples < 10:
        raise AdtrError(f"paired_bootstrap: confidence {confidence} must be in (0, 1) and resamples {resamples} >= 10")
    pixel = masks is not None and a.get("maps") is not None and b.get("maps") is not None and np.asarray(masks).any()
    metrics = METRICS if pixel else METRICS[:1]
    exact = {}
    for name, method in (("a", a), ("b", b)):
        exact[name] = {"image_auroc": auroc(method["scores"], y)}
        if pixel:
            exact[name]["pixel_auroc"] = pixel_auroc(method["maps"], masks)
            exact[name]["aupro"] = aupro(method["maps"], masks)
    hist = {k: _PixelHistograms(m["maps"], masks, bins) for k, m in (("a", a), ("b", b))} if pixel else {}
    weights = _stratified_weights(y, resamples, seed)
    draws = {k: {m: np.empty(resamples) for m in metrics} for k in ("a", "b")}
    scores = {"a": np.asarray(a["scores"], np.float64).ravel(), "b": np.asarray(b["scores"], np.float64).ravel()}
    for r, w in enumerate(weights):
        picked = np.repeat(np.arange(y.size), w.astype(np.int64))
        for k in ("a", "b"):
            draws[k]["image_auroc"][r] = auroc(scores[k][picked], y[picked])
            if pixel:
                draws[k]["pixel_auroc"][r] = hist[k].pixel_auroc(w)
                draws[k]["aupro"][r] = hist[k].aupro(w)
    lo, hi = 100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2

    def interval(estimate: float, values: np.ndarray) -> Interval:
        return Interval(float(estimate), float(np.percentile(values, lo)), float(np.percentile(values, hi)))

    return PairedResult(
        a={m: interval(exact["a"][m], draws["a"][m]) for m in metrics},
        b={m: interval(exact["b"][m], draws["b"][m]) for m in metrics},
        difference={m: interval(exact["a"][m] - exact["b"][m], draws["a"][m] - draws["b"][m]) for m in metrics},
        a_better={m: float((draws["a"][m] > draws["b"][m]).mean()) for m in metrics},
        resamples=resamples, confidence=confidence)
