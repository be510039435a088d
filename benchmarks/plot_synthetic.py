"""Draw every synthetic anomaly kind on a few normal images of a dataset, with the mask outlined.

    python benchmarks/plot_synthetic.py --data ../shared/data/magnetic_tile --out docs/img/synthetic_kinds.png [--images 3] [--size 224] [--seed 0]

Rows are training normals (the first ``--images`` by name), columns the image and each kind of
``SYNTHETIC_KINDS`` as ADTR+ training draws it (``SyntheticAnomalies`` with probability 1, one seed
per image); the mask is outlined in red, one pixel outside it, so the defect itself stays visible.
"""

from __future__ import annotations

import argparse
import sys

import cv2
import numpy as np

from adtr_edge.data.anomalies import SYNTHETIC_KINDS, SyntheticAnomalies
from adtr_edge.data.datasets import load_dataset
from adtr_edge.errors import AdtrError
from adtr_edge.fileio import write_bytes_atomic
from adtr_edge.preprocessing import read_image


def outlined(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ring = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool) & ~mask
    out = img.copy()
    out[ring] = (0, 0, 255)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        samples = sorted(load_dataset(args.data, "train").samples, key=lambda s: str(s.path))[: args.images]
    except AdtrError as e:
        raise SystemExit(str(e)) from None
    if not samples:
        raise SystemExit(f"--data {args.data}: no training images")
    images = [cv2.resize(read_image(s.path), (args.size, args.size), interpolation=cv2.INTER_AREA)
              for s in samples]
    rows = []
    for i, img in enumerate(images):
        cells = [img]
        # Other training normals as the patch kind's sources, as build_anomaly_pool gives it.
        others = [im for j, im in enumerate(images) if j != i] or None
        for kind in SYNTHETIC_KINDS:
            out, mask, _ = SyntheticAnomalies(kind, probability=1.0, seed=args.seed + i, source_images=others)(img)
            cells.append(outlined(out, mask))
        rows.append(np.hstack([np.pad(c, ((2, 2), (2, 2), (0, 0)), constant_values=255) for c in cells]))
    header = np.full((28, rows[0].shape[1], 3), 255, np.uint8)
    for c, name in enumerate(("normal", *SYNTHETIC_KINDS)):
        cv2.putText(header, name, (c * (args.size + 4) + 8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    ok, png = cv2.imencode(".png", np.vstack([header, *rows]))
    if not ok:
        raise SystemExit(f"--out {args.out}: PNG encoding failed")
    write_bytes_atomic(args.out, png.tobytes())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
