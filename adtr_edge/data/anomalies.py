"""Anomaly sources for training with anomalies (ADTR+, issue #3).

* ``confetti``: FCDD-style confetti noise, random rotated blobs of a new colour or shifted
  intensity with smoothed edges (the paper's synthetic anomalies for ADTR+).
* ``texture_patch``: a more realistic kind, CutPaste / DRAEM style: a patch from another image, or a
  rotated region of the same one, pasted through a Perlin-noise or random-polygon shaped mask.
* ``scar``: thin curved strokes of shifted intensity or a new colour (CutPaste's "scar", drawn along
  a random walk rather than as a straight box): the cracks and scratches that blobs and patches do
  not resemble.
* ``SyntheticAnomalies``: any of the above applied with a probability, for a training loader.
* ``ExternalAnomalies``: any folder of images used as image-level anomalies (outlier exposure).
* ``load_labelled_anomalies``: real labelled anomalies, from an MVTec-style test split or a folder.

Every generator returns (image, mask) where the mask is exact: pixels outside it are unchanged,
so a pixel-level loss never trains on a wrong label.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence, Union

import cv2
import numpy as np

from ..errors import AdtrError
from ..preprocessing import list_images, read_image, to_bgr
from .datasets import ImageSet, Sample, _anomalous_samples, load_mvtec
from .shapes import perlin_noise, polygon_mask, random_walk, rotated_blob

# Confetti blob sizes in the FCDD paper are given in pixels at 224 px; they scale with the image.
_REFERENCE_SIDE = 224.0


def _check_strength(strength: float) -> float:
    if not 0.0 < float(strength) <= 1.0:
        raise AdtrError(f"anomaly strength must be in (0, 1], got {strength}")
    return float(strength)


def _is_gray(img: np.ndarray) -> bool:
    return bool(np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2]))


def _blob_target(img: np.ndarray, region: np.ndarray, rng: np.random.Generator, colored: bool,
                 gray_image: bool) -> np.ndarray:
    """The float image the blob blends towards: a flat new colour, or the image shifted in intensity."""
    local = img[region].astype(np.float32).mean(axis=0) if region.any() else img.reshape(-1, 3).mean(axis=0)
    if colored:
        # Resample until the colour is clearly different from what it covers. On a grayscale image the
        # colour is a gray level: a hue would be a shortcut no real defect of that camera offers.
        for _ in range(16):
            colour = np.full(3, rng.uniform(0, 255)) if gray_image else rng.uniform(0, 255, size=3)
            if np.abs(colour - local).mean() >= 40.0:
                break
        return np.broadcast_to(colour.astype(np.float32), img.shape)
    # Shift towards the side with room, so saturated pixels still change.
    sign = 1.0 if local.mean() < 128 else -1.0
    return img.astype(np.float32) + sign * rng.uniform(40.0, 120.0)


def confetti(img: np.ndarray, rng: np.random.Generator, *, n_blobs: tuple[int, int] = (1, 6),
             size: tuple[float, float] = (8.0, 54.0), colored_prob: float = 0.5, strength: float = 1.0,
             smooth_sigma: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Paste 1..n rotated ellipse/rectangle blobs; return (image BGR uint8, bool mask).

    ``size`` is the blob side range in pixels at 224 px, scaled to the image's shorter side.
    ``smooth_sigma`` (pixels, default 1 px at 224 scaled likewise) softens the blob alpha. The mask is
    alpha > 0.5; inside it the blend weight ramps from 0 at the edge to ``strength`` in the core, and
    outside it the image is untouched, so the mask is exactly where pixels may change.
    """
    strength = _check_strength(strength)
    lo, hi = int(n_blobs[0]), int(n_blobs[1])
    if not 1 <= lo <= hi:
        raise AdtrError(f"confetti n_blobs must be 1 <= low <= high, got {n_blobs}")
    if not 0 < size[0] <= size[1]:
        raise AdtrError(f"confetti size must be 0 < low <= high, got {size}")
    base = to_bgr(img, name="confetti input")
    h, w = base.shape[:2]
    scale = min(h, w) / _REFERENCE_SIDE
    sigma = max(0.5, (smooth_sigma if smooth_sigma is not None else 1.0) * scale)
    gray_image = _is_gray(base)
    out = base.astype(np.float32)
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(lo, hi + 1))):
        axes = tuple(max(1.0, rng.uniform(size[0], size[1]) * scale / 2.0) for _ in range(2))
        center = (rng.uniform(0, h), rng.uniform(0, w))
        alpha = rotated_blob((h, w), center, axes, rng.uniform(0.0, 180.0), ellipse=bool(rng.random() < 0.5))
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
        region = alpha > 0.5
        if not region.any():
            continue
        weight = np.clip((alpha - 0.5) * 2.0, 0.0, 1.0) * strength
        weight[~region] = 0.0
        target = _blob_target(out.astype(np.uint8), region, rng, bool(rng.random() < colored_prob), gray_image)
        out = out + weight[..., None] * (target - out)
        mask |= region
    result = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    result[~mask] = base[~mask]  # float round trip must not touch a single pixel outside the mask
    return result, mask


def _shape_mask(ph: int, pw: int, rng: np.random.Generator, shape: str) -> np.ndarray:
    """A bool (ph, pw) mask: Perlin blob inside an elliptic envelope, or a random polygon."""
    if shape == "perlin":
        yy, xx = np.mgrid[0:ph, 0:pw].astype(np.float32)
        envelope = 1.0 - ((yy - (ph - 1) / 2) / (ph / 2)) ** 2 - ((xx - (pw - 1) / 2) / (pw / 2)) ** 2
        res = (int(rng.integers(2, 5)), int(rng.integers(2, 5)))
        m = (0.6 * perlin_noise((ph, pw), res, rng) + envelope) > 0.5
        if m.sum() >= 0.05 * ph * pw:
            return m
        # Rare: the noise cancelled the envelope; a polygon keeps the anomaly non-empty.
    return polygon_mask((ph, pw), ((ph - 1) / 2, (pw - 1) / 2), min(ph, pw) / 2, rng)


PATCH_SHAPES = ("perlin", "polygon", "random")


# An image given as pixels or as a file (typing.Union: this module also runs on Python 3.8).
ImageSource = Union[np.ndarray, str, os.PathLike]


def texture_patch(img: np.ndarray, rng: np.random.Generator, *, source_images: Sequence[ImageSource] | None = None,
                  strength: float = 1.0, size: tuple[float, float] = (0.1, 0.35),
                  shape: str = "random") -> tuple[np.ndarray, np.ndarray]:
    """Paste a shaped patch; return (image BGR uint8, bool mask).

    The patch comes from a random ``source_images`` entry (arrays or paths, resized to the image's
    size so texture scale matches), or, without sources, from another place of the same image turned
    by 90/180/270 degrees and mirrored (CutPaste). ``size`` is the patch side as a fraction of the
    shorter image side; ``strength`` the blend weight of the patch inside the mask.
    """
    strength = _check_strength(strength)
    if shape not in PATCH_SHAPES:
        raise AdtrError(f"patch shape must be one of {', '.join(PATCH_SHAPES)}, got {shape!r}")
    if not 0 < size[0] <= size[1] <= 1:
        raise AdtrError(f"patch size must be fractions 0 < low <= high <= 1, got {size}")
    base = to_bgr(img, name="texture_patch input")
    h, w = base.shape[:2]
    side = max(4, int(round(rng.uniform(size[0], size[1]) * min(h, w))))
    ph = pw = min(side, h, w)

    if source_images:
        pick = source_images[int(rng.integers(len(source_images)))]
        src = read_image(pick) if isinstance(pick, (str, os.PathLike)) else to_bgr(pick, name="patch source")
        if src.shape[:2] != (h, w):
            src = cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR)
        sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        patch = src[sy:sy + ph, sx:sx + pw]
    else:
        sy, sx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
        patch = np.rot90(base[sy:sy + ph, sx:sx + pw], k=int(rng.integers(1, 4)))
        if rng.random() < 0.5:
            patch = patch[:, ::-1]
        # A slight gain change as well, like CutPaste's colour jitter.
        patch = np.clip(patch.astype(np.float32) * rng.uniform(0.8, 1.2), 0, 255)

    kind = shape if shape != "random" else ("perlin", "polygon")[int(rng.integers(2))]
    local = _shape_mask(ph, pw, rng, kind)
    ty, tx = int(rng.integers(0, h - ph + 1)), int(rng.integers(0, w - pw + 1))
    out = base.copy()
    region = out[ty:ty + ph, tx:tx + pw].astype(np.float32)
    blended = region + strength * (np.asarray(patch, dtype=np.float32) - region)
    region[local] = blended[local]
    out[ty:ty + ph, tx:tx + pw] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    mask[ty:ty + ph, tx:tx + pw] = local
    out[~mask] = base[~mask]
    return out, mask


def scar(img: np.ndarray, rng: np.random.Generator, *, n_strokes: tuple[int, int] = (1, 3),
         length: tuple[float, float] = (24.0, 110.0), width: tuple[float, float] = (1.0, 5.0),
         colored_prob: float = 0.3, strength: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw 1..n thin strokes along random walks; return (image BGR uint8, bool mask).

    ``length`` (along the walk) and ``width`` are in pixels at 224 px, scaled to the image's shorter
    side like confetti. CutPaste's scar is a straight box 2-16 px wide; real cracks and scratches
    bend, so each stroke follows a walk whose heading drifts. Inside the mask the image blends by
    ``strength`` towards a shifted intensity or a flat colour (a gray level on grayscale images);
    outside it nothing changes.
    """
    strength = _check_strength(strength)
    lo, hi = int(n_strokes[0]), int(n_strokes[1])
    if not 1 <= lo <= hi:
        raise AdtrError(f"scar n_strokes must be 1 <= low <= high, got {n_strokes}")
    if not 0 < length[0] <= length[1] or not 0 < width[0] <= width[1]:
        raise AdtrError(f"scar length and width must be 0 < low <= high, got {length} and {width}")
    base = to_bgr(img, name="scar input")
    h, w = base.shape[:2]
    scale = min(h, w) / _REFERENCE_SIDE
    gray_image = _is_gray(base)
    out = base.astype(np.float32)
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(lo, hi + 1))):
        total = rng.uniform(length[0], length[1]) * scale
        steps = int(rng.integers(3, 9))
        pts = random_walk((rng.uniform(0, h), rng.uniform(0, w)), steps, total / steps, rng, turn=0.5)
        thickness = max(1, int(round(rng.uniform(width[0], width[1]) * scale)))
        canvas = np.zeros((h, w), dtype=np.uint8)
        cv2.polylines(canvas, [pts.reshape(-1, 1, 2)], False, 1, thickness=thickness, lineType=cv2.LINE_8)
        # Where strokes cross, the first one stays: a second, opposite shift could undo it.
        region = canvas.astype(bool) & ~mask
        if not region.any():
            continue  # the walk left the image
        if rng.random() < colored_prob:
            target = _blob_target(out.astype(np.uint8), region, rng, True, gray_image)[region]
        else:
            # Darker or brighter at random (cracks are dark, scratches often bright), towards the side
            # with room when the stroke sits near black or white.
            local = float(out[region].mean())
            sign = 1.0 if rng.random() < 0.5 else -1.0
            if not 0.0 <= local + sign * 40.0 <= 255.0:
                sign = -sign
            target = out[region] + sign * rng.uniform(30.0, 100.0)
        out[region] = out[region] + strength * (target - out[region])
        mask |= region
    if not mask.any():
        # Every walk left the image (tiny images): one short stroke through the centre keeps it non-empty.
        canvas = np.zeros((h, w), dtype=np.uint8)
        cv2.line(canvas, (w // 4, h // 2), (3 * w // 4, h // 2), 1, thickness=1, lineType=cv2.LINE_8)
        mask = canvas.astype(bool)
        target = _blob_target(base, mask, rng, False, gray_image)
        out[mask] = out[mask] + strength * (target[mask] - out[mask])
    result = np.clip(out + 0.5, 0, 255).astype(np.uint8)
    result[~mask] = base[~mask]
    return result, mask


# Each kind's drawing, (image, rng, strength, source images) -> (image, mask): the one list of kinds,
# read by SyntheticAnomalies (which checks the name for the CLI) and by the benchmarks.
_DRAW = {
    "confetti": lambda img, rng, strength, sources: confetti(img, rng, strength=strength),
    "patch": lambda img, rng, strength, sources: texture_patch(img, rng, source_images=sources, strength=strength),
    "scar": lambda img, rng, strength, sources: scar(img, rng, strength=strength),
}
SYNTHETIC_KINDS = tuple(_DRAW)


class SyntheticAnomalies:
    """Apply one synthetic anomaly kind with probability ``probability``, for a training loader."""

    def __init__(self, kind: str = "confetti", probability: float = 0.5, strength: float = 1.0, seed: int = 0,
                 source_images: Sequence[ImageSource] | None = None):
        if kind not in SYNTHETIC_KINDS:
            raise AdtrError(f"anomaly kind must be one of {', '.join(SYNTHETIC_KINDS)}, got {kind!r}")
        if not 0.0 <= float(probability) <= 1.0:
            raise AdtrError(f"anomaly probability must be in [0, 1], got {probability}")
        self.kind = kind
        self.probability = float(probability)
        self.strength = _check_strength(strength)
        self.seed = int(seed)
        self.source_images = list(source_images) if source_images else None
        self._rng = np.random.default_rng(self.seed)

    def __repr__(self) -> str:
        return (f"SyntheticAnomalies(kind={self.kind!r}, probability={self.probability}, "
                f"strength={self.strength}, seed={self.seed})")

    def __call__(self, img: np.ndarray, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
        """(image, bool mask, applied); the image is returned untouched when not applied."""
        rng = rng if rng is not None else self._rng
        if rng.random() >= self.probability:
            return img, np.zeros(img.shape[:2], dtype=bool), False
        out, mask = _DRAW[self.kind](img, rng, self.strength, self.source_images)
        return out, mask, True


class ExternalAnomalies:
    """Images from any folder, used as image-level anomalies (outlier exposure)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise AdtrError(f"external anomaly folder not found: {self.folder}")
        self.paths: list[Path] = list_images(self.folder)
        if not self.paths:
            raise AdtrError(f"external anomaly folder has no images: {self.folder}")

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, i: int) -> np.ndarray:
        return read_image(self.paths[i])

    def random_image(self, rng: np.random.Generator) -> np.ndarray:
        return self.image(int(rng.integers(len(self.paths))))

    def as_imageset(self, defect: str = "external") -> ImageSet:
        return ImageSet((Sample(p, 1, defect, None) for p in self.paths), root=self.folder)


def load_labelled_anomalies(path: str | os.PathLike, mask_dir: str | os.PathLike | None = None) -> ImageSet:
    """Real anomalies: the defect images of an MVTec-style category (``test/<defect>`` with
    ``ground_truth``), or a plain folder (images directly, or one subfolder per defect) with masks
    from ``mask_dir`` (pixel labels) or without (image labels).
    """
    root = Path(path)
    if not root.is_dir():
        raise AdtrError(f"labelled anomaly folder not found: {root}")
    if (root / "test").is_dir():
        if mask_dir is not None:
            raise AdtrError(f"mask_dir {mask_dir} is not used with an MVTec layout "
                            f"({root} has test/; masks come from ground_truth/)")
        anomalies = load_mvtec(root, "test").filter(label=1)
        if not len(anomalies):
            raise AdtrError(f"no defect images under {root / 'test'} (only good/)")
        return anomalies
    masks = None
    if mask_dir is not None:
        masks = Path(mask_dir)
        if not masks.is_dir():
            raise AdtrError(f"mask folder not found: {masks}")
    samples = _anomalous_samples(root, masks)
    if not samples:
        raise AdtrError(f"labelled anomaly folder has no images: {root}")
    return ImageSet(samples, root=root)
