"""Score heads side by side on one trained checkpoint: per-location against location-free.

    python benchmarks/head_compare.py runs/screw-default --data ../shared/data/screw --cache runs/screw-cache --split val

Every row turns the same cached backbone features of the same images into a per-cell map, and
``AnomalyHead.from_grid_map`` makes the anomaly map and image score from it, so only the per-cell
score differs. Rows: the checkpoint's own head (as shipped); the per-location Gaussian on the
features (the per-location mean as the "reconstruction"); nearest-neighbour distance to a greedy
coreset of the fit normals' cells from every location, on the features (PatchCore's question) and
on the residual of the trained reconstruction, optionally after a 3x3 average of the cells
(PatchCore's local aggregation); and one shared covariance over all locations for the residual.
Writes one JSON row per variant (``--json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from adtr_edge.evaluation.baselines import gaussian
from adtr_edge.data.datasets import load_dataset, validation_split
from adtr_edge.evaluation.metrics import aupro, auroc, pixel_auroc
from adtr_edge.preprocessing import preprocess_spec, resize_mask
from adtr_edge.train.checkpoint import load_checkpoint
from adtr_edge.train.features import cached_raw_features
from adtr_edge.train.loop import split_normals
from adtr_edge.train.memory_bank import cells, greedy_coreset, nearest_distance
from adtr_edge.train.residual_stats import reconstruct


def nn_map(fit: torch.Tensor, test: torch.Tensor, bank_size: int, pool: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    """(per-cell nearest distance (N,1,h,w), seconds to choose the bank)."""
    if pool:
        fit, test = (F.avg_pool2d(x, pool, stride=1, padding=pool // 2, count_include_pad=False) for x in (fit, test))
    t0 = time.perf_counter()
    vecs = cells(fit)
    bank = vecs[greedy_coreset(vecs, bank_size, seed=seed)]
    secs = time.perf_counter() - t0
    n, _, h, w = test.shape
    return nearest_distance(cells(test), bank).reshape(n, h, w).unsqueeze(1), secs


def shared_mahalanobis(fit: torch.Tensor, test: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """One mean and covariance over every location's cells; the distance of each test cell."""
    x = cells(fit).double()
    mean = x.mean(dim=0)
    cov = torch.cov((x - mean).T)
    cov = cov + eps * torch.diagonal(cov).mean() * torch.eye(cov.shape[0], dtype=torch.float64)
    w = torch.linalg.inv(torch.linalg.cholesky(cov)).T
    n, _, h, w_ = test.shape
    z = (cells(test).double() - mean) @ w
    return z.pow(2).sum(dim=1).sqrt().float().reshape(n, h, w_).unsqueeze(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True)
    ap.add_argument("--cache", default=None, help="feature cache folder (as train --feature-cache)")
    ap.add_argument("--split", choices=("val", "test", "all"), default="val")
    ap.add_argument("--banks", default="1024,4096,16384", help="coreset sizes to try (comma list)")
    ap.add_argument("--pools", default="0,3", help="local averages of the cells before the nearest neighbour (comma list, 0 = none)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model, ckpt = load_checkpoint(args.checkpoint)
    cfg, spec = ckpt.model_config, preprocess_spec(ckpt.model_config)
    train, test = load_dataset(args.data, "train"), load_dataset(args.data, "test")
    idx = list(range(len(test)))
    if args.split != "all":
        idx = validation_split(test)[0 if args.split == "val" else 1]
    fit_idx, _ = split_normals(train, ckpt.train_config)
    dev = torch.device("cpu")

    def feats(images, indices):
        raw = cached_raw_features(model.backbone, images, indices, spec, cfg, cache_dir=args.cache, device=dev)
        return model.backbone.standardize(raw)

    fit, tst = feats(train, fit_idx), feats(test, idx)
    labels = np.asarray([int(test.labels[i]) for i in idx])
    masks = np.stack([resize_mask(test.mask(i), spec) for i in idx])
    has_masks = bool(masks[labels == 1].any())
    rec_fit, rec_tst = reconstruct(model, fit, dev), reconstruct(model, tst, dev)
    res_fit, res_tst = fit - rec_fit, tst - rec_tst
    mean = fit.mean(dim=0, keepdim=True)
    rows = []

    def row(name, grid_map=None, amap_score=None, **extra):
        amap, score = amap_score if amap_score is not None else model.head.from_grid_map(grid_map)
        amap, score = amap[:, 0].numpy(), score.numpy()
        r = {"variant": name, "image_auroc": auroc(score, labels),
             "pixel_auroc": pixel_auroc(amap, masks) if has_masks else None,
             "aupro": aupro(amap, masks) if has_masks else None, **extra}
        rows.append(r)
        if args.json:  # after every row, so a long run shows its progress and a stopped one keeps what it measured
            Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "data": args.data, "split": args.split,
                                                   "images": len(idx), "defects": int(labels.sum()), "rows": rows}, indent=1))
        print(" | ".join([name] + [f"{r[k]:.4f}" if r[k] is not None else "-" for k in ("image_auroc", "pixel_auroc", "aupro")])
              + "".join(f" {k}={v}" for k, v in extra.items()), flush=True)

    row("shipped head", amap_score=model.head(tst, rec_tst))
    row("per-location mean, shipped head", amap_score=model.head(tst, mean.expand_as(tst)))
    row("per-location Gaussian (features)", gaussian(fit, tst))
    row("shared covariance (residual)", shared_mahalanobis(res_fit, res_tst))
    row("shared covariance (features)", shared_mahalanobis(fit, tst))
    for size in [int(s) for s in args.banks.split(",")]:
        for pool in [int(p) for p in args.pools.split(",")]:
            for source, (a, b) in (("features", (fit, tst)), ("residual", (res_fit, res_tst)),
                                   ("features - mean", (fit - mean, tst - mean))):
                m, secs = nn_map(a, b, size, pool)
                row(f"nearest ({source}), bank {size}, pool {pool}", m, bank_seconds=round(secs, 1))


if __name__ == "__main__":
    main()
