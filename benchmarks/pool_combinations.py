"""Other ways to combine the map's local and pooled parts, on one checkpoint's weights.

    python benchmarks/pool_combinations.py runs/clip/mt-val-p5c/adtr-default --data ../shared/data/magnetic_tile \
        --cache runs/isz/.features --split val
    python benchmarks/pool_combinations.py runs/clip/gen-p5c/adtr-default --data runs/gen/tiles \
        --cache runs/gen-r4z/.features --split all

The checkpoint must have the pooled part (``map_pool`` > 0); its head's ``map_parts`` gives the
local part (each cell's whitened residual norm) and the pooled one (the clipped cells averaged over
K x K). The shipped map is ``local + w * pooled``; the rows here replace that sum and nothing else.
The image score is the shipped rule (the larger of the map's and the regional term's z-scores),
with the map's z taken with the shipped head's mean and spread: exact for the shipped row,
approximate for the others (they change the map's scale a little), so read the pixel columns first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from accuracy import checkpoint_features, masks_at  # noqa: E402

from adtr_edge.metrics import aupro, auroc, pixel_auroc  # noqa: E402
from adtr_edge.preprocessing import preprocess_spec  # noqa: E402
from adtr_edge.train.residual_stats import residuals  # noqa: E402

QUANTILES = (0.9, 0.99, 0.999)


def parts(head, residual: torch.Tensor, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        local, pooled = zip(*[head.map_parts(residual[i:i + batch]) for i in range(0, len(residual), batch)])
    return torch.cat(local), torch.cat(pooled)


def combinations(local, pooled, fit_local, fit_pooled, w: float) -> dict:
    """Each combination's grid map (N, 1, h, w), named as the docs' table names it."""
    lm, pm = float(fit_local.mean()), float(fit_pooled.mean())
    sample = fit_pooled.flatten().double()[:: max(1, fit_pooled.numel() // 2_000_000)]
    rows = {"local only": local, "local + w pooled (shipped)": local + w * pooled}
    for q in QUANTILES:  # the pooled part counted only above the fit normals' q-quantile of it
        rows[f"local + w relu(pooled - q{q})"] = local + w * torch.relu(pooled - float(torch.quantile(sample, q)))
    rows["local + w relu(pooled - max of normals)"] = local + w * torch.relu(pooled - float(fit_pooled.max()))
    rows["local + w min(pooled, local pm/lm) (gated by its own cell)"] = local + w * torch.minimum(pooled, local * pm / lm)
    rows["max(local, pooled lm/pm)"] = torch.maximum(local, pooled * lm / pm)
    rows["local (1 + w pooled/pm) / (1 + w)"] = local * (1 + w * pooled / pm) / (1 + w)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=None)
    ap.add_argument("--split", default="val", choices=("val", "test", "all"))
    args = ap.parse_args()

    model, ckpt, test, fit_feats, test_feats = checkpoint_features(args.checkpoint, args.data, args.cache, args.split)
    head = model.head
    if not head.map_pool:
        sys.exit(f"{args.checkpoint}: has no pooled map part (map_pool 0); refit it with --map-pool 5 first")
    cpu = torch.device("cpu")
    fit_res, test_res = residuals(model, fit_feats, cpu), residuals(model, test_feats, cpu)
    (fit_local, fit_pooled), (local, pooled) = parts(head, fit_res), parts(head, test_res)
    labels, masks = np.asarray(test.labels), masks_at(test, preprocess_spec(ckpt.model_config))
    norm = head.score_norm
    with torch.no_grad():
        region = torch.cat([head.region_score(test_res[i:i + 32]) for i in range(0, len(test_res), 32)]) if head.region_grid else None
    print(f"{args.checkpoint} on {args.data} ({args.split}, {len(labels)} images): image AUROC / pixel AUROC / AUPRO")
    for name, grid in combinations(local, pooled, fit_local, fit_pooled, float(head.pool_scale)).items():
        with torch.no_grad():
            amap, score = head.from_grid_map(grid)
            if region is not None:
                score = torch.maximum((score - norm[0]) / norm[1], (region - norm[2]) / norm[3])
        maps = amap[:, 0].numpy()
        print(f"{name:60s} {auroc(score.numpy(), labels):.4f} / {pixel_auroc(maps, masks):.4f} / {aupro(maps, masks):.4f}",
              flush=True)


if __name__ == "__main__":
    main()
