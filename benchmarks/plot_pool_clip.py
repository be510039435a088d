"""Draw what the map's pooled part does to one defect of each kind: the map alone, pooled, pooled with clipped cells.

    python benchmarks/plot_pool_clip.py --data ../shared/data/magnetic_tile --cache runs/isz/.features --split val \
        --variant "map alone=runs/l2/val-default/adtr-default" --variant "pooled 5x5=runs/clip/mt-val-p5/adtr-default" \
        --variant "pooled 5x5, cells clipped=runs/clip/mt-val-p5c/adtr-default" --out docs/img/pool_clip_mt.png

One row per defect type of the split: the image whose mask area is that type's median (no choosing
by eye), its mask outlined, then each checkpoint's anomaly map on it. Every map is divided by the
99th percentile of the same checkpoint's maps over the split's good images, so 1 on every panel is
"as high as a normal image gets" and the colours compare across panels. The title of each map gives
that image's pixel AUROC under the map (how well the map separates the defect's pixels from the rest
of the image).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

import _models  # noqa: F401  (puts the repository on sys.path)
from accuracy import masks_at  # noqa: E402
from paired_bootstrap import shipped_outputs  # noqa: E402

from adtr_edge.metrics import pixel_auroc  # noqa: E402
from adtr_edge.plots import figure, write_figure  # noqa: E402
from adtr_edge.preprocessing import preprocess_spec, resize  # noqa: E402

VMAX = 2.0  # twice the normal extreme: the top of every colour scale


def parse_variant(spec: str) -> tuple[str, Path]:
    label, sep, path = spec.partition("=")
    if not sep or not label or not Path(path, "checkpoint.json").is_file():
        raise SystemExit(f"--variant {spec!r}: use LABEL=CHECKPOINT_FOLDER (a folder with checkpoint.json)")
    return label, Path(path)


def median_area_picks(labels: np.ndarray, defects: list[str], masks: np.ndarray) -> list[int]:
    """For each defect type, the image whose mask area is that type's median (ties: the first)."""
    picks = []
    for kind in sorted({d for d, y in zip(defects, labels) if y == 1}):
        idx = [i for i, (d, y) in enumerate(zip(defects, labels)) if y == 1 and d == kind and masks[i].any()]
        if idx:
            areas = np.array([masks[i].sum() for i in idx])
            picks.append(idx[int(np.argsort(areas, kind="stable")[(len(idx) - 1) // 2])])
    return picks


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--split", choices=("val", "test", "all"), default="val")
    ap.add_argument("--variant", action="append", required=True, metavar="LABEL=CHECKPOINT")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    maps, test, spec = [], None, None
    for label, ckpt in variants:
        _, meta, test, _, _, out = shipped_outputs(ckpt, args.data, args.cache, args.split)
        labels = np.asarray(test.labels)
        good = np.asarray(out["maps"])[labels == 0]
        maps.append(np.asarray(out["maps"]) / max(float(np.quantile(good, 0.99)), 1e-12))
        spec = preprocess_spec(meta.model_config)
    masks = masks_at(test, spec)
    picks = median_area_picks(np.asarray(test.labels), list(test.defects), masks)
    if not picks:
        raise SystemExit(f"{args.data}: the {args.split} split has no defect with a mask to draw")
    fig = figure(2.1 * (len(variants) + 1) + 0.6, 2.5 * len(picks))
    for r, i in enumerate(picks):
        ax = fig.add_subplot(len(picks), len(variants) + 1, r * (len(variants) + 1) + 1)
        img = cv2.cvtColor(resize(test.image(i), spec), cv2.COLOR_BGR2RGB)
        ax.imshow(img)
        ax.contour(masks[i], levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"{test.defects[i]}: {test.paths[i].name}", fontsize=7)
        ax.axis("off")
        for c, (label, _) in enumerate(variants):
            ax = fig.add_subplot(len(picks), len(variants) + 1, r * (len(variants) + 1) + c + 2)
            im = ax.imshow(maps[c][i], cmap="inferno", vmin=0.0, vmax=VMAX)
            ax.contour(masks[i], levels=[0.5], colors="cyan", linewidths=0.6)
            ax.set_title(f"{label}\npixel AUROC {pixel_auroc(maps[c][i][None], masks[i][None]):.3f}", fontsize=7)
            ax.axis("off")
    fig.colorbar(im, cax=fig.add_axes((0.93, 0.3, 0.015, 0.4)), label="map / normal images' 99th percentile")
    fig.suptitle(f"{args.data.name}, {args.split} split: one defect of each type (median mask area)", fontsize=9)
    return write_figure(fig, args.out, rect=(0, 0, 0.91, 0.97))  # the colour bar sits in the margin


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
