"""Refit a trained checkpoint's Mahalanobis head (and its threshold) with other statistics, no training.

    python benchmarks/refit_head.py runs/mt-default/adtr-default --data ../shared/data/magnetic_tile \
        --shrinkage 0.05 --target identity --out runs/mt-default/adtr-default-identity
    python benchmarks/refit_head.py runs/l2/val-default/adtr-default --data ../shared/data/magnetic_tile \
        --cache runs/isz/.features --region-grid 4 --out runs/l2/val-default-r4/adtr-default

The transformer is untouched; the residual statistics are fitted on the same normal images as in
training (``split_normals`` with the checkpoint's seed), and the threshold is recalibrated on the
held-out normals, exactly as ``train_model`` finishes. Used to give a checkpoint trained before a
head choice was made on the validation split the head that was chosen.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adtr_edge.data.datasets import load_dataset  # noqa: E402
from adtr_edge.model.head import AnomalyHead  # noqa: E402
from adtr_edge.preprocessing import preprocess_spec  # noqa: E402
from adtr_edge.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from adtr_edge.train.features import cached_raw_features  # noqa: E402
from adtr_edge.train.loop import fit_score, split_normals  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True)
    ap.add_argument("--shrinkage", type=float, default=None, help="the map's shrinkage (default: the checkpoint's)")
    ap.add_argument("--target", default=None, help="what it shrinks towards (default: the checkpoint's)")
    ap.add_argument("--region-grid", type=int, default=None, help="the regional image score's grid, 0 = off (default: the checkpoint's)")
    ap.add_argument("--region-shrinkage", type=float, default=None, help="(default: the checkpoint's)")
    ap.add_argument("--map-pool", type=int, default=None, help="the map's pooled part, an odd window, 0 = off (default: the checkpoint's)")
    ap.add_argument("--map-pool-weight", type=float, default=None, help="(default: the checkpoint's)")
    ap.add_argument("--map-pool-clip", type=float, default=None, help="the pooled part's clip quantile, 0 = none (default: the checkpoint's)")
    ap.add_argument("--cache", default=None, help="feature cache folder (as used in training)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    model, ckpt = load_checkpoint(args.checkpoint)
    if ckpt.model_config.score != "mahalanobis":
        raise SystemExit(f"{args.checkpoint}: its head scores '{ckpt.model_config.score}', not mahalanobis")
    cpu = torch.device("cpu")
    # The loaded weights are the trained ones; name their source so the training run's cache is reused.
    model.backbone.weights_source = ckpt.extra.get("weights_source", model.backbone.weights_source)
    given = {"score_shrinkage": args.shrinkage, "score_target": args.target, "region_shrinkage": args.region_shrinkage}
    cfg, tcfg = ckpt.model_config, replace(ckpt.train_config, **{k: v for k, v in given.items() if v is not None})
    head_fields = {"region_grid": args.region_grid, "map_pool": args.map_pool, "map_pool_weight": args.map_pool_weight,
                   "map_pool_clip": args.map_pool_clip}
    head_fields = {k: v for k, v in head_fields.items() if v is not None and v != getattr(cfg, k)}
    if head_fields:
        cfg = replace(cfg, **head_fields)  # a new head; fit_score below fits all of it
        model.cfg, model.head = cfg, AnomalyHead(cfg, model.backbone.channels)
    train_set = load_dataset(args.data, "train")
    fit_idx, val_idx = split_normals(train_set, tcfg)
    spec = preprocess_spec(cfg)
    feats = [model.backbone.standardize(cached_raw_features(model.backbone, train_set, idx, spec, cfg, cache_dir=args.cache,
                                                            device=cpu)) for idx in (fit_idx, val_idx)]
    thresholds = fit_score(model, tcfg, feats[0], feats[1], cpu)
    save_checkpoint(args.out, model, replace(ckpt, model_config=cfg, train_config=tcfg, thresholds=thresholds))
    print(f"wrote {args.out}: shrinkage {tcfg.score_shrinkage} to {tcfg.score_target}, region grid {cfg.region_grid}, map pool {cfg.map_pool} (clip {cfg.map_pool_clip:g}), "
          f"threshold {thresholds.threshold:.4f}")


if __name__ == "__main__":
    main()
