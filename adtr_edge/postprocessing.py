"""The one definition of post-processing on the host (numpy only; every backend uses it).

The transformer graph returns the raw anomaly map (N,1,H,W) at the model's input size and the raw
image score (N,) = max of the average-pooled map. What turns those into a decision lives here,
driven by the thresholds recorded in the graph metadata, so a runtime threshold override works
without re-exporting.

Normalised score (anomalib's convention, which users know): clamp((s - t) / (max - min) + 0.5, 0, 1),
so 0.5 is the decision threshold whatever the raw scale.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from .errors import AdtrError


def finite_threshold(threshold: Any, what: str = "--threshold") -> float:
    """The one check of a raw-score threshold, wherever one comes in (``--threshold``,
    ``Detector.load``, the web view's slider, ``folder.save_threshold``): a finite number, returned
    as a float. NaN would label every frame normal (every comparison with NaN is False), silently;
    a bool or a string is a mistake, not a number. ``what`` names the option in the one-line error."""
    value = float("nan")
    if not isinstance(threshold, (bool, str, bytes)):
        try:
            value = float(threshold)
        except (TypeError, ValueError):
            pass
    if not math.isfinite(value):
        raise AdtrError(f"{what} {threshold!r}: must be a finite number (the raw-score threshold)")
    return value


def check_threshold(threshold: float | None) -> None:
    """A threshold override, if given, is a finite number (``finite_threshold``)."""
    if threshold is not None:
        finite_threshold(threshold)


@dataclass(frozen=True)
class Thresholds:
    threshold: float
    score_min: float
    score_max: float
    method: str = "quantile"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Thresholds":
        return cls(
            threshold=float(d["threshold"]),
            score_min=float(d["score_min"]),
            score_max=float(d["score_max"]),
            method=str(d.get("method", "quantile")),
        )

    def with_threshold(self, threshold: float | None) -> "Thresholds":
        if threshold is None:
            return self
        check_threshold(threshold)
        return Thresholds(float(threshold), self.score_min, self.score_max, "override")


def normalize_score(score, t: Thresholds):
    """Map raw scores so that the threshold lands on 0.5; clamps to [0, 1]."""
    span = max(t.score_max - t.score_min, 1e-12)
    return np.clip((np.asarray(score, dtype=np.float64) - t.threshold) / span + 0.5, 0.0, 1.0)


def normalize_map(anomaly_map: np.ndarray, t: Thresholds) -> np.ndarray:
    """The same mapping for an anomaly map, for display and pixel masks."""
    span = max(t.score_max - t.score_min, 1e-12)
    return np.clip((anomaly_map.astype(np.float32) - t.threshold) / span + 0.5, 0.0, 1.0)


def label(score, t: Thresholds):
    """True where the raw score reaches the threshold."""
    return np.asarray(score) >= t.threshold


def pooled_max_score(anomaly_map: np.ndarray, kernel: int) -> np.ndarray:
    """Numpy reference of the in-graph image score: max over the average-pooled map (stride 1).

    ``anomaly_map`` is (N, H, W) or (N, 1, H, W). Used by tests to pin the graph's score.
    """
    m = anomaly_map.reshape(anomaly_map.shape[0], anomaly_map.shape[-2], anomaly_map.shape[-1])
    k = max(1, min(kernel, m.shape[-1], m.shape[-2]))
    out = []
    for plane in m.astype(np.float64):
        c = plane.cumsum(0).cumsum(1)
        c = np.pad(c, ((1, 0), (1, 0)))
        s = c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]
        out.append((s / (k * k)).max())
    return np.asarray(out, dtype=np.float32)


def map_to_frame(anomaly_map_hw: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
    """Resize one (H, W) model-size map back onto the original frame's size (bilinear)."""
    h, w = frame_shape[:2]
    if anomaly_map_hw.shape == (h, w):
        return anomaly_map_hw
    return cv2.resize(anomaly_map_hw.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
