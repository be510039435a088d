"""A generated scene of parts that are not fixtured: one bolt at a random position and rotation.

Screws, nuts and castings reach a factory camera shifted and turned, so a model that scores each
grid location against what was at that location in normal images sees a different part of the bolt
there every time. This scene exists to measure that case with exact masks (the real ``screw`` data
here has image labels only): a hexagonal head and a threaded shank, drawn at any angle anywhere in
the frame on a plain, unevenly lit background, with sensor noise. Defects are drawn on the part only
(a chip out of its outline, a scratch, a stain, a burr standing off its edge), and each mask is
exactly the pixels that changed.
"""

from __future__ import annotations

import cv2
import numpy as np

from .shapes import smooth_noise

OBJECT_DEFECT_KINDS = ("chip", "scratch", "stain", "burr")


def _bolt_outline(size: tuple[int, int], rng: np.random.Generator) -> tuple[list[np.ndarray], list[np.ndarray], float]:
    """(polygons of the head and shank, thread line segments, the bolt's scale in pixels)."""
    h, w = size
    s = min(h, w)
    length = rng.uniform(0.50, 0.58) * s  # head + shank
    width = rng.uniform(0.085, 0.10) * s
    head_r = width * rng.uniform(0.95, 1.05)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    margin = 0.5 * length + 0.04 * s
    cx, cy = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin)
    d = np.array([np.cos(angle), np.sin(angle)])
    n = np.array([-d[1], d[0]])
    centre = np.array([cx, cy])
    head_c = centre - d * (0.5 * length - head_r)
    hexagon = np.stack([head_c + head_r * np.array([np.cos(angle + k * np.pi / 3), np.sin(angle + k * np.pi / 3)])
                        for k in range(6)])
    start, end = head_c + d * head_r * 0.8, centre + d * 0.5 * length
    tip = end - d * width * 0.4
    shank = np.stack([start + n * width / 2, tip + n * width / 2, end + n * width * 0.2, end - n * width * 0.2,
                      tip - n * width / 2, start - n * width / 2])
    pitch = width * 0.35
    threads = []
    t = np.linalg.norm(tip - start) * 0.35
    while t < np.linalg.norm(tip - start) - pitch * 0.5:
        p = start + d * t
        threads.append(np.stack([p + n * width / 2 + d * pitch * 0.3, p - n * width / 2 - d * pitch * 0.3]))
        t += pitch
    return [hexagon, shank], threads, width


def bolt_image(size: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(image (H, W, 3) uint8 BGR, bool mask of the bolt) of one bolt anywhere, at any angle."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    ramp = np.cos(theta) * (xx / max(w - 1, 1) - 0.5) + np.sin(theta) * (yy / max(h - 1, 1) - 0.5)
    background = rng.uniform(0.78, 0.86) + 0.06 * ramp + 0.02 * smooth_noise(size, 4, rng)
    polygons, threads, width = _bolt_outline(size, rng)
    part = np.zeros((h, w), np.uint8)
    for poly in polygons:
        cv2.fillPoly(part, [np.round(poly).astype(np.int32)], 1, lineType=cv2.LINE_8)
    mask = part.astype(bool)
    metal = rng.uniform(0.28, 0.36) + 0.05 * smooth_noise(size, 6, rng)
    gray = np.where(mask, metal, background).astype(np.float32)
    line = max(1, int(round(width * 0.12)))
    for seg in threads:  # darker thread grooves, only on the shank
        groove = np.zeros((h, w), np.uint8)
        cv2.line(groove, tuple(np.round(seg[0]).astype(int)), tuple(np.round(seg[1]).astype(int)), 1, line, cv2.LINE_8)
        gray[(groove > 0) & mask] -= 0.10
    gray = gray * rng.uniform(0.95, 1.05) + rng.normal(0.0, 0.012, size=(h, w)).astype(np.float32)
    img = np.clip(np.repeat(gray[..., None], 3, axis=2) * 255.0, 0, 255).astype(np.uint8)
    return img, mask


def _blob(size: tuple[int, int], centre: tuple[float, float], radius: float, rng: np.random.Generator) -> np.ndarray:
    m = np.zeros(size, np.uint8)
    for _ in range(int(rng.integers(2, 4))):
        oy, ox = rng.uniform(-0.5, 0.5, size=2) * radius
        axes = (max(1, int(radius * rng.uniform(0.6, 1.0))), max(1, int(radius * rng.uniform(0.6, 1.0))))
        cv2.ellipse(m, (int(centre[1] + ox), int(centre[0] + oy)), axes, rng.uniform(0, 180), 0, 360, 1, -1, cv2.LINE_8)
    return m.astype(bool)


def _edge_point(part: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    edge = part & ~cv2.erode(part.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    ys, xs = np.nonzero(edge)
    k = int(rng.integers(len(ys)))
    return float(ys[k]), float(xs[k])


def draw_object_defect(img: np.ndarray, part: np.ndarray, rng: np.random.Generator, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """One defect of ``kind`` (``OBJECT_DEFECT_KINDS``) on the bolt ``part`` of a copy of ``img``:
    (image, bool mask of exactly the pixels that changed)."""
    out = img.copy()
    h, w = part.shape
    scale = float(np.sqrt(part.sum()))  # about the bolt's width x length, in pixels
    background = np.median(img[~part], axis=0)
    if kind == "chip":  # a bite out of the outline: background where metal was
        area = _blob((h, w), _edge_point(part, rng), rng.uniform(0.10, 0.16) * scale, rng) & part
        out[area] = np.clip(background + rng.normal(0, 3, size=(area.sum(), 3)), 0, 255)
    elif kind == "burr":  # excess metal standing off the edge
        area = _blob((h, w), _edge_point(part, rng), rng.uniform(0.08, 0.12) * scale, rng) & ~part
        out[area] = np.clip(np.median(img[part], axis=0) + rng.normal(0, 3, size=(area.sum(), 3)), 0, 255)
    elif kind == "stain":  # a bright or dark patch on the metal
        ys, xs = np.nonzero(part)
        k = int(rng.integers(len(ys)))
        area = _blob((h, w), (ys[k], xs[k]), rng.uniform(0.07, 0.10) * scale, rng) & part
        tone = rng.choice([rng.uniform(150, 200), rng.uniform(0, 20)])
        out[area] = np.clip(0.3 * out[area] + 0.7 * tone, 0, 255)
    elif kind == "scratch":  # a bright line across the metal
        ys, xs = np.nonzero(part)
        k = int(rng.integers(len(ys)))
        a, length = rng.uniform(0, np.pi), rng.uniform(0.3, 0.5) * scale
        p0 = (int(xs[k] - length / 2 * np.cos(a)), int(ys[k] - length / 2 * np.sin(a)))
        p1 = (int(xs[k] + length / 2 * np.cos(a)), int(ys[k] + length / 2 * np.sin(a)))
        line = np.zeros((h, w), np.uint8)
        cv2.line(line, p0, p1, 1, max(1, int(round(0.03 * scale))), cv2.LINE_8)
        area = line.astype(bool) & part
        out[area] = np.clip(rng.uniform(170, 220) + rng.normal(0, 4, size=(area.sum(), 3)), 0, 255)
    else:
        raise ValueError(f"object defect kind {kind!r}: choose one of {OBJECT_DEFECT_KINDS}")
    changed = np.any(out != img, axis=2)
    return out, changed
