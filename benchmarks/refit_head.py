"""Refit a trained checkpoint's Mahalanobis head (and its threshold) with other statistics, no training.

    python benchmarks/refit_head.py runs/mt-default/adtr-default --data ../shared/data/magnetic_tile \
        --shrinkage 0.05 --target identity --out runs/mt-default/adtr-default-identity
    python benchmarks/refit_head.py runs/l2/val-default/adtr-default --data ../shared/data/magnetic_tile \
        --cache runs/isz/.features --region-grid 4 --out runs/l2/val-default-r4/adtr-default

The transformer is untouched; the residual statistics are fitted on the same normal images as in
training (``split_normals`` with the checkpoint's seed), and the threshold is recalibrated on the
held-out normals, exactly as ``train_model`` finishes. Used to give a checkpoint trained before a
head choice was made on the validation split the head that was chosen. The work is
``adtr_edge.train.refit`` (also ``adtr-edge refit-head``); this script keeps the documented commands.
"""

from __future__ import annotations

import argparse

from adtr_edge.errors import AdtrError
from adtr_edge.train.refit import refit_head


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
    ap.add_argument("--map-pool-clip", type=float, default=None,
                    help="the pooled part's clip quantile, 0 = none (default: the checkpoint's; 0.99 where --map-pool turns it on)")
    ap.add_argument("--cache", default=None, help="feature cache folder (as used in training)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    try:
        # Benchmark folders are scratch: a documented command re-run replaces its own output.
        res = refit_head(args.checkpoint, args.data, args.out, feature_cache=args.cache, device="cpu", force=True,
                         score_shrinkage=args.shrinkage, score_target=args.target, region_grid=args.region_grid,
                         region_shrinkage=args.region_shrinkage, map_pool=args.map_pool, map_pool_weight=args.map_pool_weight,
                         map_pool_clip=args.map_pool_clip)
    except AdtrError as e:
        raise SystemExit(f"error: {e}") from None
    cfg, tcfg = res.checkpoint.model_config, res.checkpoint.train_config
    print(f"wrote {res.out}: shrinkage {tcfg.score_shrinkage} to {tcfg.score_target}, region grid {cfg.region_grid}, "
          f"map pool {cfg.map_pool} (clip {cfg.map_pool_clip:g}), threshold {res.thresholds.threshold:.4f}")


if __name__ == "__main__":
    main()
