"""Report figures as PNG files: ROC curves, score histograms, overlay grids, accuracy vs time.

matplotlib is imported inside each function (it is a training/evaluation extra, absent on edge
devices) and only through ``Figure`` + the Agg canvas, never ``pyplot``: no GUI backend is touched
and no global figure state leaks between calls or threads. Files are written atomically.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import AdtrError
from ..fileio import atomic_path
from ..postprocessing import Thresholds


def figure(width_in: float, height_in: float):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise AdtrError("plots need matplotlib: pip install 'adtr-edge[train]'") from exc
    fig = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig, path: str | os.PathLike) -> Path:
    # The temp name has no .png suffix, so the format must be given explicitly.
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return Path(path)


def style_panel(ax, legend: bool = False, **labels) -> None:
    """The benchmark plots' panel style: ``labels`` (title, xlabel, ylabel), a light grid, and a
    small legend in the lower left where ``legend`` (the first panel of a row)."""
    ax.set(**labels)
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="lower left")


def write_figure(fig, path: str | os.PathLike, rect: tuple | None = None) -> int:
    """Lay out a benchmark's figure, save it atomically and say where: the end of every plot script
    (``rect`` leaves room for a suptitle or an outside legend). Returns 0, the script's exit code."""
    fig.tight_layout(**({"rect": rect} if rect else {}))
    save_png(fig, path)
    print(f"wrote {path}")
    return 0


def roc_plot(curves: Mapping[str, tuple], path: str | os.PathLike) -> Path:
    """ROC curves, one line per name: ``curves[name] = (fpr, tpr, auc)``; AUC shown in the legend."""
    if not curves:
        raise AdtrError("roc_plot: no curves given")
    fig = figure(5.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance")
    for name, (fpr, tpr, auc) in curves.items():
        fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
        if fpr.shape != tpr.shape or fpr.ndim != 1:
            raise AdtrError(f"roc_plot: curve {name!r} has fpr {fpr.shape} and tpr {tpr.shape}")
        text = name if auc is None else f"{name} (AUROC {float(auc):.3f})"
        ax.plot(fpr, tpr, linewidth=1.8, label=text)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    return save_png(fig, path)


def score_histogram(normal_scores, anomalous_scores, threshold: float | None, path: str | os.PathLike) -> Path:
    """Overlaid histograms of normal and anomalous image scores, with the threshold as a line."""
    normal = np.asarray(normal_scores, float).reshape(-1)
    anomalous = np.asarray([] if anomalous_scores is None else anomalous_scores, float).reshape(-1)
    if normal.size + anomalous.size == 0:
        raise AdtrError("score_histogram: no scores given")
    both = np.concatenate([normal, anomalous])
    if not np.all(np.isfinite(both)):
        raise AdtrError("score_histogram: scores contain NaN or infinite values")
    low, high = float(both.min()), float(both.max())
    if threshold is not None:
        low, high = min(low, float(threshold)), max(high, float(threshold))
    if high <= low:
        high = low + 1.0
    bins = np.linspace(low, high, int(np.clip(math.sqrt(both.size) * 2, 10, 60)) + 1)

    fig = figure(6.5, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    if normal.size:
        ax.hist(normal, bins=bins, alpha=0.6, color="tab:green", label=f"normal (n={normal.size})")
    if anomalous.size:
        ax.hist(anomalous, bins=bins, alpha=0.6, color="tab:red", label=f"anomalous (n={anomalous.size})")
    if threshold is not None:
        ax.axvline(float(threshold), color="black", linestyle="--", label=f"threshold {float(threshold):.4g}")
    ax.set(xlabel="image score", ylabel="images", title="Score distribution")
    ax.legend(fontsize="small")
    return save_png(fig, path)


def robustness_plot(report: dict, path: str | os.PathLike) -> Path:
    """``eval --perturb`` as a picture: per condition, each method's false-alarm rate on the normal
    images (top) and share of defective images flagged (bottom) at its threshold, as grouped bars.
    A method without a threshold, or a set without normals or defects, leaves its bars out."""
    rows = report.get("conditions") or []
    if not rows:
        raise AdtrError("robustness_plot: the report has no conditions")
    methods = sorted((k for k in rows[0] if k != "condition"), key=lambda m: m != "ADTR")  # the model first
    names = [r["condition"] for r in rows]
    x = np.arange(len(names))
    width = 0.8 / max(len(methods), 1)
    fig = figure(max(8.0, 0.75 * len(names)), 6.5)
    panels = (("false_alarm_rate", "normal images alarmed", "False alarms at each threshold"),
              ("detection_rate", "defective images flagged", "Defects flagged at each threshold"))
    for i, (key, ylabel, title) in enumerate(panels):
        ax = fig.add_subplot(2, 1, i + 1)
        for j, m in enumerate(methods):
            values = [r[m].get(key) for r in rows]
            ax.bar(x + (j - (len(methods) - 1) / 2) * width, [np.nan if v is None else 100 * v for v in values], width,
                   label=m)
        shown = [100 * r[m][key] for r in rows for m in methods if r[m].get(key) is not None]
        ax.set_xticks(x)
        ax.set_xticklabels(names if i else [], rotation=35, ha="right", fontsize=7)
        ax.set(ylabel=f"% {ylabel}", title=title, ylim=(0, min(101.0, max(5.0, 1.15 * max(shown, default=0.0)))))
        ax.grid(axis="y", alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, ncol=len(methods), loc="upper left")
    fig.tight_layout()
    return save_png(fig, path)


def overlay_grid(
    frames: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    thresholds: Thresholds,
    titles: Sequence[str] | None,
    path: str | os.PathLike,
    max_items: int = 16,
) -> Path:
    """Up to ``max_items`` overlays (``visualize.overlay``) in a square-ish grid with titles."""
    from .visualize import overlay

    if len(frames) != len(maps):
        raise AdtrError(f"overlay_grid: {len(frames)} frames but {len(maps)} maps")
    if titles is not None and len(titles) != len(frames):
        raise AdtrError(f"overlay_grid: {len(titles)} titles for {len(frames)} frames")
    count = min(len(frames), int(max_items))
    if count < 1:
        raise AdtrError("overlay_grid: nothing to draw (no frames or max_items < 1)")
    cols = math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    fig = figure(3.0 * cols, 3.2 * rows)
    for i in range(count):
        ax = fig.add_subplot(rows, cols, i + 1)
        bgr = overlay(frames[i], maps[i], thresholds)
        ax.imshow(bgr[:, :, ::-1])
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=9)
    return save_png(fig, path)


def accuracy_vs_time_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    baselines: Mapping[str, float] | None,
    path: str | os.PathLike,
) -> Path:
    """AUROC against training time, one line per run, with reference AUROCs as horizontal lines.

    The time axis turns logarithmic when the points span more than two decades.
    """
    if not series:
        raise AdtrError("accuracy_vs_time_plot: no series given")
    fig = figure(6.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    all_t = []
    for name, points in series.items():
        pts = np.asarray(list(points), float).reshape(-1, 2) if len(points) else np.empty((0, 2))
        if pts.size == 0:
            continue
        pts = pts[np.argsort(pts[:, 0])]
        all_t.extend(pts[:, 0].tolist())
        ax.plot(pts[:, 0], pts[:, 1], marker="o", markersize=3, linewidth=1.5, label=name)
    if not all_t:
        raise AdtrError("accuracy_vs_time_plot: every series is empty")
    if min(all_t) > 0 and max(all_t) / min(all_t) > 100:
        ax.set_xscale("log")
    for i, (name, value) in enumerate((baselines or {}).items()):
        ax.axhline(float(value), linestyle="--", linewidth=1, color=f"C{(i + len(series)) % 10}", label=f"{name} ({float(value):.3f})")
    ax.set(xlabel="training time (s)", ylabel="AUROC", title="Accuracy vs training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return save_png(fig, path)
