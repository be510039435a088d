"""Random shapes and noise shared by the sample-dataset generator and the anomaly sources.

Everything takes an explicit ``np.random.Generator`` so callers stay deterministic per seed, and
every mask is drawn without antialiasing (``cv2.LINE_8``) so it is exactly binary.
"""

from __future__ import annotations

import cv2
import numpy as np


def smooth_noise(shape: tuple[int, int], cells: int, rng: np.random.Generator) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled bicubically."""
    h, w = shape
    cells = max(2, int(cells))
    coarse = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise in about [-1, 1] with ``res`` lattice cells along (y, x).

    Random unit gradients on a lattice, dot products with the offsets to the four corners,
    blended with the quintic fade 6t^5 - 15t^4 + 10t^3 (what gives Perlin noise its smooth blobs).
    """
    h, w = shape
    ry, rx = max(1, int(res[0])), max(1, int(res[1]))
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(ry + 1, rx + 1))
    grad = np.stack([np.cos(angles), np.sin(angles)], axis=-1)
    # Lattice coordinates of every pixel.
    y = np.linspace(0.0, ry, h, endpoint=False)
    x = np.linspace(0.0, rx, w, endpoint=False)
    yy, xx = np.meshgrid(y, x, indexing="ij")
    y0, x0 = yy.astype(int), xx.astype(int)
    fy, fx = yy - y0, xx - x0

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grad[y0 + dy, x0 + dx]
        return g[..., 0] * (fx - dx) + g[..., 1] * (fy - dy)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    u, v = fade(fx), fade(fy)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return ((top * (1 - v) + bottom * v) * np.sqrt(2.0)).astype(np.float32)


def polygon_mask(shape: tuple[int, int], center: tuple[float, float], radius: float,
                 rng: np.random.Generator, n_vertices: tuple[int, int] = (5, 11)) -> np.ndarray:
    """A random star-shaped polygon (vertices at sorted angles, jittered radii) as a bool mask."""
    n = int(rng.integers(n_vertices[0], n_vertices[1] + 1))
    angles = np.sort(rng.uniform(0.0, 2.0 * np.pi, size=n))
    radii = radius * rng.uniform(0.45, 1.0, size=n)
    cy, cx = center
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    mask = np.zeros(shape, dtype=np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def random_walk(start: tuple[float, float], n_steps: int, step: float, rng: np.random.Generator,
                turn: float = 0.6) -> np.ndarray:
    """Points (x, y) of a random walk whose heading drifts by up to ``turn`` radians per step."""
    heading = rng.uniform(0.0, 2.0 * np.pi)
    pts = [np.asarray(start[::-1], dtype=np.float64)]  # start is (y, x); points are (x, y)
    for _ in range(n_steps):
        heading += rng.uniform(-turn, turn)
        length = step * rng.uniform(0.6, 1.4)
        pts.append(pts[-1] + length * np.array([np.cos(heading), np.sin(heading)]))
    return np.round(np.stack(pts)).astype(np.int32)


def rotated_blob(shape: tuple[int, int], center: tuple[float, float], axes: tuple[float, float],
                 angle_deg: float, ellipse: bool) -> np.ndarray:
    """A filled rotated ellipse or rectangle as float32 alpha in {0, 1}."""
    canvas = np.zeros(shape, dtype=np.float32)
    cy, cx = center
    ay, ax = axes
    if ellipse:
        cv2.ellipse(canvas, (int(round(cx)), int(round(cy))), (max(1, int(round(ax))), max(1, int(round(ay)))),
                    angle_deg, 0, 360, 1.0, thickness=-1, lineType=cv2.LINE_8)
    else:
        box = cv2.boxPoints(((cx, cy), (2 * ax, 2 * ay), angle_deg))
        cv2.fillConvexPoly(canvas, np.round(box).astype(np.int32), 1.0, lineType=cv2.LINE_8)
    return canvas
