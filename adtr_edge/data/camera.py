"""What a camera on a line does to an image over weeks: it is knocked (shifted, turned), its light
changes, its focus drifts, its stream is compressed harder.

Two users of the same operations: the robustness report (``adtr_edge.evaluation.robustness``) applies each at
fixed strengths to a test set, and the score head may be fitted on *drifted views* of the normals
(``DRIFTS``, ``drifted``) so that a softened or relit normal part is not an anomaly.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from ..errors import AdtrError


def shift(img: np.ndarray, fraction: float) -> np.ndarray:
    """Down and right by whole pixels: a fractional shift resamples (blurs) every pixel, and on fine
    texture (a screw's thread) that blur, not the new position, is what a model sees."""
    h, w = img.shape[:2]
    dy, dx = int(round(fraction * h)), int(round(fraction * w))
    return cv2.copyMakeBorder(img, dy, 0, dx, 0, cv2.BORDER_REFLECT_101)[:h, :w]


def rotate(img: np.ndarray, degrees: float, interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    """About the centre; the uncovered border mirrored from the image, as a camera that moved still
    sees a scene there (replicated edge pixels draw flat streaks that no camera sees)."""
    return _turn_and_move(img, degrees, 0, 0, interp)


def _turn_and_move(img: np.ndarray, degrees: float, dx: int, dy: int, interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Turned about the centre, then moved by whole pixels, in one resampling; border mirrored."""
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), degrees, 1.0)
    m[0, 2] += dx
    m[1, 2] += dy
    return cv2.warpAffine(img, m, (w, h), flags=interp, borderMode=cv2.BORDER_REFLECT_101)


def knock(img: np.ndarray, strength: float) -> np.ndarray:
    """A knocked camera: turned by ``5 * strength`` degrees about the centre and moved by ``0.05 *
    strength`` of each side in whole pixels (down and right for a positive strength, up and left for a
    negative one), in one resampling; the uncovered border mirrored as in ``rotate``. Strength 1 is the
    robustness report's larger shift and larger turn at once."""
    h, w = img.shape[:2]
    return _turn_and_move(img, 5.0 * strength, round(0.05 * strength * w), round(0.05 * strength * h))


def gain(img: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of ``sigma`` pixels at 256 px, scaled to the image's size."""
    s = sigma * min(img.shape[:2]) / 256.0
    return cv2.GaussianBlur(img, (0, 0), s)


def jpeg(img: np.ndarray, quality: float) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise AdtrError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR if img.ndim == 3 else cv2.IMREAD_GRAYSCALE)


# Drifted views for fitting a score head: each draws its strength uniformly from a range a line can
# expect between two calibrations (exposure +-30%, focus softening up to 2.5 px at 256 px, stream
# quality down to 15, a knock of up to 5% of the side and 5 degrees). One view of each fit normal per
# family; the strength is a function of the image's path, so a view is the same every time (and
# cacheable) without a global random state.
DRIFTS: dict[str, tuple[Callable[[np.ndarray, float], np.ndarray], tuple[float, float]]] = {
    "light": (gain, (0.70, 1.35)),
    "focus": (blur, (0.5, 2.5)),
    "compression": (jpeg, (15.0, 60.0)),
    "pose": (knock, (-1.0, 1.0)),
}
# What ``--fit-drift auto`` weighs: the drifts that change how a normal part looks where it sits.
AUTO_DRIFTS = ("light", "focus", "compression")


def check_drifts(names, option: str = "--fit-drift", auto: bool = True) -> tuple[str, ...]:
    """The drift families named (a comma-separated string or a sequence), checked; () for none, every
    ``AUTO_DRIFTS`` for "auto" where ``auto`` allows it (fit on them where the held-out normals say so:
    ``train.drift_choice``). ``option`` names the setting in the error."""
    if isinstance(names, str):
        if names.strip() == "auto" and auto:
            return AUTO_DRIFTS
        names = [n.strip() for n in names.split(",") if n.strip() and n.strip() != "none"]
    names = tuple(names)
    unknown = [n for n in names if n not in DRIFTS]
    if unknown:
        raise AdtrError(f"{option} {','.join(unknown)}: not a drift (choose from {', '.join(DRIFTS)}"
                        f"{', or auto' if auto else ''}, or none)")
    return names


def threshold_drifts(names) -> tuple[str, ...]:
    """``threshold_drift`` checked: the drift families whose views of the held-out normals calibrate the threshold too."""
    return check_drifts(names, "--threshold-drift", auto=False)


def drift_strength(name: str, key: str) -> float:
    """The strength of drift ``name`` for the image identified by ``key`` (its path): uniform in the
    drift's range, fixed by the key."""
    lo, hi = DRIFTS[name][1]
    u = int.from_bytes(hashlib.sha256(f"{name}:{key}".encode()).digest()[:8], "big") / 2.0 ** 64
    return lo + (hi - lo) * u


def drifted(img: np.ndarray, name: str, key: str) -> np.ndarray:
    """``img`` through drift ``name`` at the strength its ``key`` fixes."""
    return DRIFTS[name][0](img, drift_strength(name, key))


def drifted_image(imageset, i: int, name: str) -> np.ndarray:
    """Image ``i`` of ``imageset`` through drift ``name``, at the strength its file name fixes: the
    same view wherever the head is fitted or calibrated on it (PyTorch or INT8 features)."""
    return drifted(imageset.image(i), name, Path(imageset.paths[i]).name)
