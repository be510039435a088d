"""How the anomaly map becomes the image score: the shipped rule against other aggregations.

    python benchmarks/image_score.py runs/l2/val-default/adtr-default --data ../shared/data/magnetic_tile \
        --cache runs/isz/.features --split val

The same per-location maps (ADTR's shipped head, and the per-location Gaussian on the same features)
are aggregated in several ways; only image AUROC changes (the pixel metrics use the map itself).
The shipped rule (the paper's) is the maximum of the upsampled map after a ``pool_kernel`` average
pool. Per defect type too, because an aggregation that rewards large defects (a mean over many
pixels) costs small ones, which a dataset of large defects would hide.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy import checkpoint_features  # noqa: E402

from adtr_edge.baselines import BASELINES  # noqa: E402
from adtr_edge.fileio import write_json_atomic  # noqa: E402
from adtr_edge.metrics import auroc  # noqa: E402
from adtr_edge.significance import paired_bootstrap  # noqa: E402
from adtr_edge.train.residual_stats import reconstruct  # noqa: E402


def aggregations(pool_kernel: int) -> dict:
    """name -> f(grid map (N,1,h,w), upsampled map (N,1,H,W)) -> (N,) scores."""
    def pooled(k):
        return lambda grid, up: (F.avg_pool2d(up, kernel_size=k, stride=1) if k > 1 else up).flatten(1).amax(1)

    def top(frac):
        return lambda grid, up: up.flatten(1).topk(max(1, int(frac * up[0].numel())), dim=1).values.mean(1)

    rules = {f"max of the map after a {pool_kernel} px average pool (shipped)": pooled(pool_kernel),
             "max of the grid map (before upsampling)": lambda grid, up: grid.flatten(1).amax(1)}
    rules |= {f"max after a {k} px average pool": pooled(k) for k in (1, 8, 32, 64) if k != pool_kernel}
    rules |= {f"mean of the top {100 * f:g}% of pixels": top(f) for f in (0.01, 0.1)}
    return rules


def checkpoint_split_args(ap: argparse.ArgumentParser, resamples: int) -> argparse.ArgumentParser:
    """The options every image-score study takes: a checkpoint, its data, cache and split, resamples, --json."""
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--cache", required=True, type=Path)
    ap.add_argument("--split", choices=("val", "test", "all"), default="val")
    ap.add_argument("--resamples", type=int, default=resamples, help="paired bootstrap resamples per row")
    ap.add_argument("--json", type=Path, default=None)
    return ap


def per_defect(scores: np.ndarray, y: np.ndarray, defects: np.ndarray) -> dict:
    """Image AUROC of each defect type against all the normals."""
    return {d: auroc(scores[(y == 0) | (defects == d)], y[(y == 0) | (defects == d)]) for d in sorted(set(defects[y == 1]))}


def points(iv: dict | None) -> str:
    """A paired difference as points with its 95% interval ("" for none)."""
    return f"{100 * iv['estimate']:+.2f} [{100 * iv['low']:+.2f}, {100 * iv['high']:+.2f}]" if iv else ""


def main() -> None:
    ap = checkpoint_split_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter), 2000)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, ckpt, test, fit_feats, test_feats = checkpoint_features(args.checkpoint, args.data, args.cache, args.split)
    cfg = ckpt.model_config
    rec = reconstruct(model, test_feats, torch.device("cpu"))
    grids = {"ADTR": torch.cat([model.head.error_map(test_feats[i:i + 32], rec[i:i + 32]) for i in range(0, len(test_feats), 32)]),
             "Gaussian": BASELINES["gaussian"](fit_feats, test_feats)}
    y, defects = np.asarray(test.labels), np.asarray(test.defects)
    kinds = sorted(set(defects[y == 1]))
    ups = {m: F.interpolate(g, size=tuple(cfg.input_size), mode="bilinear", align_corners=False) for m, g in grids.items()}
    rows, shipped = [], {}
    for rule, fn in aggregations(model.head.kernel).items():
        row = {"rule": rule}
        for method, grid in grids.items():
            s = fn(grid, ups[method]).numpy()
            shipped.setdefault(method, s)  # the first rule is the shipped one
            row[method] = auroc(s, y)
            row[f"{method} per defect"] = per_defect(s, y, defects)
            # Paired on the same images: is this rule better than the shipped one beyond resampling noise?
            diff = paired_bootstrap({"scores": s}, {"scores": shipped[method]}, y, resamples=args.resamples).difference["image_auroc"]
            row[f"{method} vs shipped"] = diff.to_dict()
        rows.append(row)
        print(json.dumps(row), flush=True)

    def d(r, m):
        return points(r[f"{m} vs shipped"])

    print(f"\n| image score ({len(y)} images, {args.split}) | ADTR | vs shipped, points [95%] | Gaussian | vs shipped | "
          f"ADTR per defect ({', '.join(kinds)}) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['rule']} | {r['ADTR']:.4f} | {d(r, 'ADTR')} | {r['Gaussian']:.4f} | {d(r, 'Gaussian')} | "
              f"{' / '.join(f'{v:.3f}' for v in r['ADTR per defect'].values())} |")
    if args.json:
        write_json_atomic(args.json, {"command": " ".join(sys.argv), "rows": rows})


if __name__ == "__main__":
    main()
