"""Pictures of anomaly maps for people: heat maps, overlays, side-by-side panes, grids.

numpy + OpenCV only, because the streaming runtime draws its live view with it (no matplotlib,
no torch on a Jetson). Every function returns a new 3-channel uint8 BGR image, ready for
``cv2.imshow`` / ``cv2.imwrite``; inputs are never modified.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import cv2
import numpy as np

from ..errors import AdtrError
from ..postprocessing import Thresholds, map_to_frame, normalize_map
from ..preprocessing import to_bgr

CONTOUR_BGR = (0, 0, 255)  # red
TEXT_BGR = (255, 255, 255)
ANOMALY_BGR = (0, 0, 255)
NORMAL_BGR = (0, 200, 0)
BAR_BGR = (32, 32, 32)


def _plane(map_hw: np.ndarray, name: str = "anomaly map") -> np.ndarray:
    """A 2-D float32 map; (1,H,W) and (H,W,1) are accepted."""
    m = np.asarray(map_hw)
    if m.ndim == 3 and m.shape[0] == 1:
        m = m[0]
    elif m.ndim == 3 and m.shape[2] == 1:
        m = m[:, :, 0]
    if m.ndim != 2 or m.size == 0:
        raise AdtrError(f"{name}: expected a 2-D (H, W) map, got shape {np.shape(map_hw)}")
    return m.astype(np.float32, copy=False)


def colorize(map_hw: np.ndarray, vmin: float, vmax: float) -> np.ndarray:
    """Jet heat map (blue = vmin, red = vmax) of a 2-D map, as (H, W, 3) uint8 BGR."""
    m = _plane(map_hw)
    span = float(vmax) - float(vmin)
    if not np.isfinite(span) or span < 0:
        raise AdtrError(f"colorize: need finite vmin <= vmax, got vmin={vmin}, vmax={vmax}")
    scaled = (m - float(vmin)) / span if span > 0 else np.zeros_like(m)
    # NaN (a broken map) shows as vmin rather than as garbage from an undefined cast.
    scaled = np.nan_to_num(scaled, nan=0.0)
    gray = np.clip(scaled * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return cv2.applyColorMap(gray, cv2.COLORMAP_JET)


def anomaly_mask(map_hw: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Bool (H, W): pixels whose raw value reaches the image threshold (same rule as ``label``)."""
    return _plane(map_hw) >= thresholds.threshold


def overlay(
    frame_bgr: np.ndarray,
    map_hw: np.ndarray,
    thresholds: Thresholds,
    alpha: float = 0.5,
    contour: bool = True,
) -> np.ndarray:
    """Heat map blended onto the frame; red outline around pixels at or above the threshold.

    The map (any size) is resized onto the frame and normalised with ``normalize_map``, so the
    colour scale is the same as the normalised score: green-yellow (0.5) is the threshold.
    """
    if not (0.0 <= float(alpha) <= 1.0):
        raise AdtrError(f"overlay: alpha must be in [0, 1], got {alpha}")
    frame = to_bgr(frame_bgr)
    on_frame = map_to_frame(_plane(map_hw), frame.shape)
    heat = colorize(normalize_map(on_frame, thresholds), 0.0, 1.0)
    out = cv2.addWeighted(heat, float(alpha), frame, 1.0 - float(alpha), 0.0)
    if contour:
        mask = anomaly_mask(on_frame, thresholds).astype(np.uint8)
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        thickness = max(1, round(min(frame.shape[:2]) / 200))
        cv2.drawContours(out, contours, -1, CONTOUR_BGR, thickness)
    return out


def _font_scale(width: int) -> float:
    # Readable on a 256 px tile and on a 4K frame alike.
    return max(0.35, min(2.0, width / 700.0))


@lru_cache(maxsize=32)
def _bar_height(width: int) -> int:
    """The text bar's height for frames this wide (a stream asks once per frame; the answer is fixed)."""
    scale = _font_scale(width)
    (_, h), baseline = cv2.getTextSize("Ag", cv2.FONT_HERSHEY_SIMPLEX, scale, max(1, round(scale * 1.5)))
    return h + baseline + 2 * max(4, h // 2)


def _text_bar(width: int, parts: Sequence[tuple[str, tuple[int, int, int]]]) -> np.ndarray:
    """A dark strip with coloured text segments, left to right, shrunk to fit the width.

    Its height depends on the width alone, so every frame of a stream has the same size whatever
    its text ("OK" or "ANOMALY", with or without FPS): a video writer refuses a frame that differs."""
    font, scale = cv2.FONT_HERSHEY_SIMPLEX, _font_scale(width)
    height = _bar_height(width)
    full_text = "  ".join(text for text, _ in parts) + "  "
    (needed, _), _ = cv2.getTextSize(full_text, font, scale, 1)
    if needed > width:
        # Narrow frames (a 220 px tile) get smaller text rather than a cut-off threshold.
        scale = max(0.3, scale * width / needed)
    thickness = max(1, round(scale * 1.5))
    (_, text_h), baseline = cv2.getTextSize("Ag", font, scale, thickness)
    margin = (height - text_h - baseline) // 2  # max(4, text_h // 2) when the text was not shrunk
    bar = np.full((height, width, 3), BAR_BGR, dtype=np.uint8)
    x = max(4, text_h // 2)
    y = height - baseline - margin + text_h // 4
    for text, color in parts:
        cv2.putText(bar, text, (x, y), font, scale, color, thickness, cv2.LINE_AA)
        (w, _), _ = cv2.getTextSize(text + "  ", font, scale, thickness)
        x += w
    return bar



def preview_overlay(frame_bgr: np.ndarray, map_hw: np.ndarray, thresholds: Thresholds, alpha: float = 0.5) -> np.ndarray:
    """``overlay`` for a live preview at a fraction of the cost: the heat map is coloured at the
    map's own (model) size and then resized, and the outline is traced there and scaled, instead of
    resizing the float map onto the frame first. Colours differ from ``overlay`` only by the
    interpolation order; a browser view refreshed many times a second does not need more."""
    frame = to_bgr(frame_bgr)
    h, w = frame.shape[:2]
    plane = _plane(map_hw)
    heat = cv2.resize(colorize(normalize_map(plane, thresholds), 0.0, 1.0), (w, h), interpolation=cv2.INTER_LINEAR)
    out = cv2.addWeighted(heat, float(alpha), frame, 1.0 - float(alpha), 0.0)
    mask = anomaly_mask(plane, thresholds).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    if contours:
        scale = np.array([w / plane.shape[1], h / plane.shape[0]], np.float32)
        scaled = [np.round(c.astype(np.float32) * scale).astype(np.int32) for c in contours]
        cv2.drawContours(out, scaled, -1, CONTOUR_BGR, max(1, round(min(h, w) / 200)))
    return out

def three_pane(
    frame: np.ndarray,
    map_hw: np.ndarray,
    thresholds: Thresholds,
    score: float,
    normalized_score: float,
    label,
    fps: float | None = None,
) -> np.ndarray:
    """Original | heat map | overlay side by side, under a bar with score, label and FPS.

    ``label`` is the decision (bool: True = anomalous) or a text to show as is.
    """
    original = to_bgr(frame)
    plane = map_to_frame(_plane(map_hw), original.shape)
    heat = colorize(normalize_map(plane, thresholds), 0.0, 1.0)
    blended = overlay(original, plane, thresholds)
    panes = np.hstack([original, heat, blended])

    if isinstance(label, (bool, np.bool_)):
        label_text, label_color = ("ANOMALY", ANOMALY_BGR) if label else ("OK", NORMAL_BGR)
    else:
        label_text, label_color = str(label), TEXT_BGR
    parts = [
        (label_text, label_color),
        (f"score {float(score):.4g}", TEXT_BGR),
        (f"normalised {float(normalized_score):.3f}", TEXT_BGR),
        (f"threshold {thresholds.threshold:.4g}", TEXT_BGR),
    ]
    if fps is not None:
        parts.append((f"{float(fps):.1f} FPS", TEXT_BGR))
    return np.vstack([_text_bar(panes.shape[1], parts), panes])


def grid(
    images: Sequence[np.ndarray],
    cols: int,
    titles: Sequence[str] | None = None,
) -> np.ndarray:
    """Tile images row by row; each is fitted (aspect kept) into a cell the size of the largest.

    Empty cells of the last row stay black. ``titles`` (optional, one per image) are written in a
    bar above each cell.
    """
    if len(images) == 0:
        raise AdtrError("grid: no images given")
    if int(cols) < 1:
        raise AdtrError(f"grid: cols must be >= 1, got {cols}")
    if titles is not None and len(titles) != len(images):
        raise AdtrError(f"grid: {len(titles)} titles for {len(images)} images")
    tiles = [to_bgr(np.asarray(img), name=f"grid image {i}") for i, img in enumerate(images)]
    cell_h = max(t.shape[0] for t in tiles)
    cell_w = max(t.shape[1] for t in tiles)
    cols = min(int(cols), len(tiles))
    rows = -(-len(tiles) // cols)

    cells = []
    for i in range(rows * cols):
        cell = np.zeros((cell_h, cell_w, 3), np.uint8)
        if i < len(tiles):
            t = tiles[i]
            scale = min(cell_h / t.shape[0], cell_w / t.shape[1])
            h, w = max(1, round(t.shape[0] * scale)), max(1, round(t.shape[1] * scale))
            if (h, w) != t.shape[:2]:
                t = cv2.resize(t, (w, h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
            y0, x0 = (cell_h - h) // 2, (cell_w - w) // 2
            cell[y0 : y0 + h, x0 : x0 + w] = t
        if titles is not None:
            text = str(titles[i]) if i < len(tiles) else ""
            cell = np.vstack([_text_bar(cell_w, [(text, TEXT_BGR)]), cell])
        cells.append(cell)
    row_images = [np.hstack(cells[r * cols : (r + 1) * cols]) for r in range(rows)]
    return np.vstack(row_images)
