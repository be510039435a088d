"""Is the camera still seeing what the model was trained on? Exposure and focus, watched per source.

A knocked focus ring, a dimmed lamp or a fogged lens raise anomaly scores on every frame, and each
frame then looks like a defect (``eval --perturb``: a 2 px blur made 45 of magnetic tile's 135
held-out normals alarm, docs/benchmarks.md 1.6). An operator should hear "the camera changed", once,
rather than a flood of defect alarms. Training records how bright and how sharp its normal images
are (``normal_ranges``); the export carries the ranges in the model's metadata; ``stream`` watches
each source's recent frames against them (``QualityWatch``) and sends a ``camera_drift`` event when
the median of the last frames leaves the normals' range, and ``camera_ok`` when it returns.

Two measures, both on the grey frame at the model's input size, so that a camera's resolution does
not change them: the mean grey level (exposure) and the variance of the Laplacian over the frame's
own variance (focus: a blurred frame loses the fine detail that the Laplacian responds to; dividing
by the contrast keeps a darker frame from reading as a blurred one).
"""

from __future__ import annotations

from collections import deque
from typing import Dict, Iterable, List, Optional, Tuple

import cv2
import numpy as np

QUALITY_KEY = "frame_quality"  # in a checkpoint's extra and in the model metadata
QUANTILES = (0.005, 0.995)  # the normals' range: one image in 200 may fall outside it either side
MARGIN = 0.1  # the range widened by this share of its ends, so a borderline normal frame stays inside
WINDOW = 15  # frames whose median is compared: one odd frame is not a camera that changed
MEASURES = {"grey": ("darker", "brighter", "mean grey"), "sharpness": ("blurrier", "sharper or noisier", "sharpness")}


def measure(image: np.ndarray, size: Tuple[int, int]) -> Dict[str, float]:
    """{"grey", "sharpness"} of a BGR (or grey) uint8 frame, seen at ``size`` (height, width)."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (int(size[1]), int(size[0])), interpolation=cv2.INTER_AREA)
    small = small.astype(np.float32)
    # Relative to the frame's own contrast, so that a darker frame (less contrast) is not also called blurred.
    contrast = float(small.var())
    sharpness = float(cv2.Laplacian(small, cv2.CV_32F).var()) / contrast if contrast > 1e-6 else 0.0
    return {"grey": float(small.mean()), "sharpness": sharpness}


def normal_ranges(images: Iterable[np.ndarray], size: Tuple[int, int]) -> Optional[dict]:
    """The range of each measure over normal images (``QUANTILES``, widened by ``MARGIN``), as the
    model metadata stores it; None for fewer than 2 images."""
    values = [measure(im, size) for im in images]
    if len(values) < 2:
        return None
    ranges = {}
    for key in MEASURES:
        lo, hi = np.quantile([v[key] for v in values], QUANTILES)
        ranges[key] = [round(float(lo) * (1 - MARGIN), 4), round(float(hi) * (1 + MARGIN), 4)]
    return {**ranges, "images": len(values), "size": [int(size[0]), int(size[1])], "window": WINDOW}


class QualityWatch:
    """One source's recent frames against the normals' ranges. ``update`` returns the changes this
    frame makes: (kind "camera_drift" | "camera_ok", measure, reason), one when the median of the last
    ``window`` frames leaves a measure's range and one when it returns."""

    def __init__(self, ranges: dict):
        self.ranges = {k: tuple(ranges[k]) for k in MEASURES if k in ranges}
        self.size = tuple(ranges["size"])
        self.window = int(ranges.get("window") or WINDOW)
        self.recent: Dict[str, deque] = {k: deque(maxlen=self.window) for k in self.ranges}
        self.out: Dict[str, Optional[str]] = {k: None for k in self.ranges}  # "below" | "above" | None

    def update(self, image: np.ndarray) -> List[Tuple[str, str, str]]:
        values = measure(image, self.size)
        changes = []
        for key, (lo, hi) in self.ranges.items():
            self.recent[key].append(values[key])
            if len(self.recent[key]) < self.window:
                continue
            median = float(np.median(self.recent[key]))
            side = "below" if median < lo else "above" if median > hi else None
            if side == self.out[key]:
                continue
            low_word, high_word, name = MEASURES[key]
            if side is None:
                changes.append(("camera_ok", key, f"{name} back within the normals' range: {median:.4g} over the last "
                                                  f"{self.window} frames (normals {lo:.4g} to {hi:.4g})"))
            else:
                word = low_word if side == "below" else high_word
                changes.append(("camera_drift", key, f"frames {word} than the training normals: {name} {median:.4g} over the "
                                                     f"last {self.window} frames (normals {lo:.4g} to {hi:.4g}); defect "
                                                     "alarms may be the camera, not the parts"))
            self.out[key] = side
        return changes
