"""A generated sample dataset and video: procedural woven textures with drawn defects.

The quick tests, the demo and the streaming examples need data that exists everywhere, is the same
on every machine, and has exact masks. Normal images share one structure (a basket weave) but vary
(phase, thread period, a slight warp, illumination, sensor noise), so a detector has to learn the
texture, not one picture. Defects are drawn onto a copy of the texture and the mask is exactly the
set of drawn pixels; images are written as PNG so no compression blurs that correspondence.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import cv2
import numpy as np

from ..errors import AdtrError
from ..fileio import staged_folder
from .objects import OBJECT_DEFECT_KINDS, bolt_image, draw_object_defect
from .shapes import polygon_mask, random_walk, smooth_noise

DEFECT_KINDS = ("scratch", "spot", "crack", "missing")
# Base tint (B, G, R on [0, 1]) of the generated textile; each image jitters it slightly.
_BASE_TINT = np.array([0.62, 0.72, 0.80], dtype=np.float32)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    # One independent stream per (seed, split, index): image k is the same whatever the counts.
    return np.random.default_rng(np.random.SeedSequence([int(seed), *map(int, stream)]))


# --- texture ------------------------------------------------------------------------------------


def weave_texture(size: tuple[int, int], rng: np.random.Generator, *, period: float | None = None,
                  angle: float | None = None) -> np.ndarray:
    """A basket-weave texture (H, W, 3) uint8 BGR with random phase, warp, light and noise."""
    h, w = size
    period = period if period is not None else rng.uniform(9.0, 11.0) * max(h, w) / 128.0
    angle = angle if angle is not None else rng.uniform(-0.04, 0.04)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # A slight rotation and a smooth warp: the pattern repeats but never exactly.
    ca, sa = np.cos(angle), np.sin(angle)
    u = (ca * xx - sa * yy) + 0.8 * smooth_noise(size, 4, rng) * period / 10.0
    v = (sa * xx + ca * yy) + 0.8 * smooth_noise(size, 4, rng) * period / 10.0
    u = u / period + rng.uniform(0.0, 2.0)
    v = v / period + rng.uniform(0.0, 2.0)
    cell_u, frac_u = np.floor(u), u - np.floor(u)
    cell_v, frac_v = np.floor(v), v - np.floor(v)
    # Checkerboard of cells: horizontal threads in one colour of cell, vertical in the other;
    # sin(pi * frac) shades each thread round, darker at the gaps between threads.
    horizontal = ((cell_u + cell_v) % 2) == 0
    profile = np.where(horizontal, np.sin(np.pi * frac_v), np.sin(np.pi * frac_u)) ** 0.7
    gray = 0.30 + 0.55 * profile
    # Illumination: a gentle linear gradient in a random direction and a global gain.
    theta = rng.uniform(0.0, 2.0 * np.pi)
    ramp = (np.cos(theta) * (xx / max(w - 1, 1) - 0.5) + np.sin(theta) * (yy / max(h - 1, 1) - 0.5))
    gray = gray * (1.0 + 0.15 * ramp) * rng.uniform(0.92, 1.08)
    tint = _BASE_TINT * rng.uniform(0.96, 1.04, size=3).astype(np.float32)
    img = gray[..., None] * tint[None, None, :] * 255.0 / _BASE_TINT.max()
    img = img + rng.normal(0.0, 3.0, size=img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


# --- defects ------------------------------------------------------------------------------------


def _contrast_value(img: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A BGR value far from the local mean under ``mask``: bright on dark ground, dark on bright."""
    local = img[mask].mean() if mask.any() else img.mean()
    level = rng.uniform(215, 250) if local < 128 else rng.uniform(10, 45)
    return np.full(3, level, dtype=np.float32)


def _thickness(h: int, w: int, scale: float, base: float) -> int:
    return max(1, int(round(base * scale * min(h, w) / 128.0)))


def _draw_scratch(img: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = np.zeros((h, w), dtype=np.uint8)
    length = rng.uniform(0.3, 0.6) * min(h, w) * min(scale, 1.5)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    a = rng.uniform(0.0, np.pi)
    p0 = (int(round(cx - length / 2 * np.cos(a))), int(round(cy - length / 2 * np.sin(a))))
    p1 = (int(round(cx + length / 2 * np.cos(a))), int(round(cy + length / 2 * np.sin(a))))
    cv2.line(m, p0, p1, 1, thickness=_thickness(h, w, scale, 1.0), lineType=cv2.LINE_8)
    mask = m.astype(bool)
    value = _contrast_value(img, mask, rng)
    img[mask] = np.clip(value + rng.normal(0, 4, size=(mask.sum(), 3)), 0, 255).astype(np.uint8)
    return mask


def _draw_spot(img: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = np.zeros((h, w), dtype=np.uint8)
    r = rng.uniform(0.05, 0.10) * min(h, w) * scale
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    for _ in range(int(rng.integers(2, 5))):  # a few overlapping ellipses: an irregular stain
        oy, ox = rng.uniform(-0.6, 0.6, size=2) * r
        axes = (max(1, int(r * rng.uniform(0.5, 1.0))), max(1, int(r * rng.uniform(0.5, 1.0))))
        cv2.ellipse(m, (int(cx + ox), int(cy + oy)), axes, rng.uniform(0, 180), 0, 360, 1, -1, cv2.LINE_8)
    mask = m.astype(bool)
    # A brownish or dark stain that keeps some of the texture underneath, as real stains do.
    stain = np.array([rng.uniform(20, 60), rng.uniform(40, 90), rng.uniform(60, 130)], dtype=np.float32)
    if rng.random() < 0.5:
        stain = np.full(3, rng.uniform(10, 40), dtype=np.float32)
    mix = rng.uniform(0.6, 0.8)
    img[mask] = np.clip(img[mask] * (1 - mix) + stain * mix, 0, 255).astype(np.uint8)
    return mask


def _draw_crack(img: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = np.zeros((h, w), dtype=np.uint8)
    start = (rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w)
    pts = random_walk(start, int(rng.integers(8, 16)), 0.05 * min(h, w) * min(scale, 1.5), rng)
    cv2.polylines(m, [pts], False, 1, thickness=_thickness(h, w, scale, 1.5), lineType=cv2.LINE_8)
    mask = m.astype(bool)
    dark = np.full(3, rng.uniform(5, 35), dtype=np.float32)
    img[mask] = np.clip(dark + rng.normal(0, 3, size=(mask.sum(), 3)), 0, 255).astype(np.uint8)
    return mask


def _draw_missing(img: np.ndarray, rng: np.random.Generator, scale: float) -> np.ndarray:
    h, w = img.shape[:2]
    r = rng.uniform(0.10, 0.16) * min(h, w) * scale
    center = (rng.uniform(0.25, 0.75) * h, rng.uniform(0.25, 0.75) * w)
    mask = polygon_mask((h, w), center, r, rng)
    # The hole shows a backing of a different weave: a coarser period turned by ~45 degrees.
    backing = weave_texture((h, w), rng, period=rng.uniform(4.0, 6.0) * max(h, w) / 128.0,
                            angle=rng.uniform(0.6, 0.9))
    backing = (backing.astype(np.float32) * rng.uniform(0.35, 0.55)).astype(np.uint8)
    img[mask] = backing[mask]
    return mask


_DRAWERS: dict[str, Callable[[np.ndarray, np.random.Generator, float], np.ndarray]] = {
    "scratch": _draw_scratch,
    "spot": _draw_spot,
    "crack": _draw_crack,
    "missing": _draw_missing,
}


def draw_defect(img: np.ndarray, rng: np.random.Generator, kind: str,
                scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect of ``kind`` on a copy of ``img``: (image, bool mask of exactly the drawn pixels)."""
    if kind not in _DRAWERS:
        raise AdtrError(f"unknown defect kind {kind!r}; choose from {', '.join(DEFECT_KINDS)}")
    out = img.copy()
    mask = _DRAWERS[kind](out, rng, scale)
    return out, mask


# --- dataset ------------------------------------------------------------------------------------


def _write_png(path: Path, img: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise AdtrError(f"cannot encode PNG for {path}")
    path.write_bytes(buf.tobytes())


def _check_size(size: tuple[int, int], option: str = "size") -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise AdtrError(f"{option} must be (height, width), got {size!r}") from None
    if h < 32 or w < 32:
        raise AdtrError(f"{option} must be at least 32x32 pixels, got {h}x{w}")
    return h, w


def _weave_normal(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    return weave_texture(size, rng)


def _weave_defect(size: tuple[int, int], rng: np.random.Generator, i: int) -> tuple[str, np.ndarray, np.ndarray]:
    kind = DEFECT_KINDS[i % len(DEFECT_KINDS)]
    return (kind, *draw_defect(weave_texture(size, rng), rng, kind))


def _bolt_normal(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    return bolt_image(size, rng)[0]


def _bolt_defect(size: tuple[int, int], rng: np.random.Generator, i: int) -> tuple[str, np.ndarray, np.ndarray]:
    kind = OBJECT_DEFECT_KINDS[i % len(OBJECT_DEFECT_KINDS)]
    img, part = bolt_image(size, rng)
    return (kind, *draw_object_defect(img, part, rng, kind))


# What a generated dataset shows: (normal image maker, defect image maker -> (kind, image, mask)).
# "weave": a fixtured texture (the default); "bolts": one part anywhere in the frame at any angle.
SCENES: dict[str, tuple[Callable, Callable]] = {"weave": (_weave_normal, _weave_defect), "bolts": (_bolt_normal, _bolt_defect)}


def generate_sample_dataset(root: str | os.PathLike, *, n_train: int = 60, n_test_good: int = 20,
                            n_test_defect: int = 20, size: tuple[int, int] = (128, 128), seed: int = 0,
                            category: str = "tiles", overwrite: bool = False, scene: str = "weave") -> Path:
    """Write an MVTec-AD category ``<root>/<category>`` of a generated ``scene``; return its path.

    ``size`` is (height, width). Defect images cycle through the scene's kinds (weave: scratch, spot,
    crack, missing; bolts: chip, scratch, stain, burr), each with an exact {0,255} PNG mask. The
    folder appears only when complete.
    """
    if scene not in SCENES:
        raise AdtrError(f"scene {scene!r}: choose one of {sorted(SCENES)}")
    normal_image, defect_image = SCENES[scene]
    h, w = _check_size(size)
    for name, n in (("n_train", n_train), ("n_test_good", n_test_good), ("n_test_defect", n_test_defect)):
        if int(n) < 0:
            raise AdtrError(f"{name} must be >= 0, got {n}")
    if n_train < 1:
        raise AdtrError(f"n_train must be >= 1, got {n_train}")
    if not category or Path(category).name != category or category.startswith("."):
        raise AdtrError(f"category must be a plain folder name, got {category!r}")
    root = Path(root)
    final = root / category
    if final.exists() and not overwrite:
        raise AdtrError(f"dataset folder already exists: {final} (remove it or pass overwrite)")
    with staged_folder(final) as tmp:  # the final name never holds a half-written or half-replaced tree
        train = tmp / "train" / "good"
        train.mkdir(parents=True)
        for i in range(n_train):
            _write_png(train / f"{i:03d}.png", normal_image((h, w), _rng(seed, 0, i)))
        good = tmp / "test" / "good"
        good.mkdir(parents=True)
        for i in range(n_test_good):
            _write_png(good / f"{i:03d}.png", normal_image((h, w), _rng(seed, 1, i)))
        counters: dict[str, int] = {}
        for i in range(n_test_defect):
            kind, img, mask = defect_image((h, w), _rng(seed, 2, i), i)
            k = counters.get(kind, 0)
            counters[kind] = k + 1
            (tmp / "test" / kind).mkdir(parents=True, exist_ok=True)
            (tmp / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            _write_png(tmp / "test" / kind / f"{k:03d}.png", img)
            _write_png(tmp / "ground_truth" / kind / f"{k:03d}_mask.png", mask.astype(np.uint8) * 255)
    return final


# --- video --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedVideo:
    """The written file (its real path: .avi where mp4v was unavailable) and per-frame truth.

    Iterates, indexes and measures like its ``frames`` list of (index, is_defective).
    """

    path: Path
    frames: list[tuple[int, bool]] = field(default_factory=list)
    fps: float = 10.0
    size: tuple[int, int] = (128, 128)
    fourcc: str = "mp4v"

    def __iter__(self) -> Iterator[tuple[int, bool]]:
        return iter(self.frames)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> tuple[int, bool]:
        return self.frames[i]


def _open_writer(path: Path, fourcc: str, fps: float,
                 size: tuple[int, int]) -> tuple[cv2.VideoWriter | None, Path | None]:
    h, w = size
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; like every other artefact, the video is meant to be shared
    writer = cv2.VideoWriter(tmp, cv2.VideoWriter_fourcc(*fourcc), float(fps), (w, h))
    if not writer.isOpened():
        writer.release()
        os.unlink(tmp)
        return None, None
    return writer, Path(tmp)


def generate_video(path: str | os.PathLike, *, n_frames: int = 60,
                   defect_frames: set[int] | frozenset[int] = frozenset(), size: tuple[int, int] = (128, 128),
                   fps: float = 10.0, seed: int = 0) -> GeneratedVideo:
    """Write a video of a texture moving past the camera; ``defect_frames`` show a clear defect.

    ``size`` is (height, width). Writes .mp4 with the 'mp4v' codec, or MJPG .avi where mp4v is
    unavailable (``GeneratedVideo.path`` says which). The file appears only when complete.
    """
    h, w = _check_size(size)
    if int(n_frames) < 1:
        raise AdtrError(f"n_frames must be >= 1, got {n_frames}")
    if fps <= 0:
        raise AdtrError(f"fps must be > 0, got {fps}")
    bad = sorted(i for i in defect_frames if not 0 <= int(i) < n_frames)
    if bad:
        raise AdtrError(f"defect_frames {bad} outside 0..{n_frames - 1}")
    path = Path(path)
    if path.suffix.lower() not in (".mp4", ".avi"):
        raise AdtrError(f"video path must end in .mp4 or .avi: {path}")
    path.parent.mkdir(parents=True, exist_ok=True)

    attempts = [(path, "MJPG")]
    if path.suffix.lower() == ".mp4":
        attempts = [(path, "mp4v"), (path.with_suffix(".avi"), "MJPG")]
    writer = tmp = None
    for target, fourcc in attempts:
        writer, tmp = _open_writer(target, fourcc, fps, (h, w))
        if writer is not None:
            break
    if writer is None:
        raise AdtrError(f"OpenCV cannot write video (neither mp4v nor MJPG available): {path}")

    # One long strip of texture panned by a few pixels per frame: consecutive frames overlap,
    # as on a conveyor belt, and wrap around so any number of frames works.
    step = max(1, w // 32)
    rng = _rng(seed, 3, 0)
    strip = weave_texture((h, w * 4), rng, period=rng.uniform(9.0, 11.0) * max(h, w) / 128.0)
    defects = {int(i) for i in defect_frames}
    truth: list[tuple[int, bool]] = []
    try:
        for i in range(n_frames):
            x0 = (i * step) % (strip.shape[1] - w)
            frame = np.ascontiguousarray(strip[:, x0:x0 + w])
            frame_rng = _rng(seed, 4, i)
            if i in defects:
                kind = ("spot", "missing", "scratch", "crack")[i % 4]
                # Twice the size and thickness: visible after lossy video compression.
                frame, _ = draw_defect(frame, frame_rng, kind, scale=2.0)
            noise = frame_rng.normal(0.0, 2.0, size=frame.shape)
            writer.write(np.clip(frame + noise, 0, 255).astype(np.uint8))
            truth.append((i, i in defects))
        writer.release()
        if tmp.stat().st_size == 0:
            raise AdtrError(f"OpenCV wrote an empty video for {target}")
        os.replace(tmp, target)
    finally:
        writer.release()
        if tmp.exists():
            tmp.unlink()
    return GeneratedVideo(path=target, frames=truth, fps=float(fps), size=(h, w), fourcc=fourcc)
