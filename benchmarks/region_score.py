"""The regional image score against the map alone, on ADTR's residual and on the per-location mean's.

    python benchmarks/region_score.py runs/l2/val-default/adtr-default --data ../shared/data/magnetic_tile \
        --cache runs/isz/.features --split val --json runs/region-score-val.json

For each residual, f - f_hat (the trained transformer) and f - mu (the per-location mean of the fit
normals: the Gaussian baseline under the same head), the head is refitted on the fit normals with each
region grid and shrinkage (``residual_stats.fit_head``, cross-fitted normalisation included), and the
split is scored with the head's own image score. Grid 0 is the map alone. Each row is paired against
the grid-0 row of the same residual on the same images (stratified bootstrap), per defect type too:
a region average can help defects spread over large areas and cost small ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from accuracy import checkpoint_features  # noqa: E402
from image_score import checkpoint_split_args, per_defect, points  # noqa: E402

from adtr_edge.fileio import write_json_atomic  # noqa: E402
from adtr_edge.metrics import auroc  # noqa: E402
from adtr_edge.model.head import AnomalyHead  # noqa: E402
from adtr_edge.significance import paired_bootstrap  # noqa: E402
from adtr_edge.train.residual_stats import fit_head_for, reconstruct  # noqa: E402


def head_scores(model, tcfg, grid: int, region_shrinkage: float, fit_residual, residual) -> np.ndarray:
    """Image scores of ``residual`` under a head with this region grid, fitted on ``fit_residual``."""
    cfg = replace(model.cfg, region_grid=grid)
    probe = SimpleNamespace(cfg=cfg, head=AnomalyHead(cfg, model.backbone.channels))  # what fit_head reads of a model
    fit_head_for(probe, replace(tcfg, region_shrinkage=region_shrinkage), None, torch.device("cpu"), residual=fit_residual)
    with torch.no_grad():
        return torch.cat([probe.head(residual[s:s + 32], torch.zeros_like(residual[s:s + 32]))[1]
                          for s in range(0, len(residual), 32)]).numpy()


def main() -> None:
    ap = checkpoint_split_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter), 1000)
    ap.add_argument("--variants", default="0:0,2:0.05,2:0.3,4:0.3,4:0.5,4:0.7",
                    help="grid:region_shrinkage pairs; grid 0 = the map alone (the reference row)")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    variants = [(int(g), float(s)) for g, s in (v.split(":") for v in args.variants.split(","))]
    if variants[0][0] != 0:
        sys.exit(f"--variants {args.variants}: the first must be grid 0 (the map alone), the reference")
    model, ckpt, test, fit_feats, test_feats = checkpoint_features(args.checkpoint, args.data, args.cache, args.split)
    cpu = torch.device("cpu")
    mu = fit_feats.mean(dim=0, keepdim=True)
    sources = {"ADTR (f - f_hat)": (fit_feats - reconstruct(model, fit_feats, cpu), test_feats - reconstruct(model, test_feats, cpu)),
               "per-location mean (f - mu)": (fit_feats - mu, test_feats - mu)}
    y, defects = np.asarray(test.labels), np.asarray(test.defects)
    kinds = sorted(set(defects[y == 1]))
    rows, first = [], {}
    for source, (fit_res, res) in sources.items():
        reference = None
        for grid, lam in variants:
            t = time.perf_counter()
            s = head_scores(model, ckpt.train_config, grid, lam, fit_res, res)
            reference = s if reference is None else reference
            first.setdefault((grid, lam), s)  # ADTR's, for the row of the mean with the same image score
            diff = paired_bootstrap({"scores": s}, {"scores": reference}, y, resamples=args.resamples).difference["image_auroc"]
            row = {"residual": source, "region_grid": grid, "region_shrinkage": lam if grid else None, "image_auroc": auroc(s, y),
                   "vs_map_alone": diff.to_dict(), "seconds": round(time.perf_counter() - t, 1),
                   "per_defect": per_defect(s, y, defects)}
            if first[(grid, lam)] is not s:  # does the reconstruction add anything under this image score?
                row["adtr_minus_this"] = paired_bootstrap({"scores": first[(grid, lam)]}, {"scores": s}, y,
                                                          resamples=args.resamples).difference["image_auroc"].to_dict()
            rows.append(row)
            print(json.dumps(row), flush=True)

    print(f"\n| residual ({len(y)} images, {args.split}) | image score | image AUROC | vs the map alone, points [95%] | "
          f"ADTR minus this, points [95%] | per defect ({' / '.join(kinds)}) |\n|---|---|---|---|---|---|")
    for r in rows:
        name = "map alone" if not r["region_grid"] else f"z-max with {r['region_grid']}x{r['region_grid']} regions, shrinkage {r['region_shrinkage']:g}"
        print(f"| {r['residual']} | {name} | {r['image_auroc']:.4f} | {points(r['vs_map_alone'])} | {points(r.get('adtr_minus_this'))} | "
              f"{' / '.join(f'{v:.3f}' for v in r['per_defect'].values())} |")
    if args.json:
        write_json_atomic(args.json, {"command": " ".join(sys.argv), "rows": rows})


if __name__ == "__main__":
    main()
