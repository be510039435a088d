"""Can the score head's shrinkage be chosen per dataset without a single real defect? (issue #10)

The shipped shrinkage (0.05 towards the average variance) was chosen on magnetic tile's validation
split. On aligned, generated images a much larger one localises 7 AUPRO points better (docs 1.5),
and a user's own data may be either kind. A user has normal images only, so the question is whether
synthetic defects pasted on the held-out normals (the ones that calibrate the threshold; the head
never sees them) rank the candidate heads the way real defects do.

For one trained checkpoint, every candidate head is fitted on the fit normals' residuals (the
transformer runs once per image set), then scored twice: on the synthetic set (each held-out normal
clean, and ``--copies`` defective copies of it per kind) and on the real ``--split`` of the test set.
The rows are printed side by side, with the head each criterion would pick. With a regional term in
the checkpoint, both sets' image scores are the shipped z-max (``head_select.zscore_max``, normalised
on the clean held-out normals), as training judges them; ``--map-score-only`` judges the map's score.

``--map-pools 0,3,5``: the same synthetic and real figures for heads whose map adds a pooled part of
that window (``--map-pool``), at the checkpoint's shrinkage: can synthetic defects choose it?

    python benchmarks/head_select.py runs/l2/val-default/adtr-default --data ../shared/data/magnetic_tile \
        --cache runs/isz/.features --split val --json runs/head-select-mt-val.json
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from adtr_edge.bench.evaluation import checkpoint_features, masks_at
from adtr_edge.config import MAP_POOL_CLIP
from adtr_edge.data.datasets import load_dataset
from adtr_edge.fileio import write_json_atomic
from adtr_edge.preprocessing import preprocess_spec
from adtr_edge.train.head_select import METRICS, STRENGTH, candidate_heads, figures, head_maps, select_shrinkage, synthetic_set, zscore_max
from adtr_edge.train.loop import split_normals
from adtr_edge.train.residual_stats import reconstruct, region_term_scores, residuals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--split", default="val", choices=("val", "test", "all"))
    ap.add_argument("--copies", type=int, default=None, help="defective copies of each held-out normal, per kind (default: training's)")
    ap.add_argument("--strength", type=float, default=STRENGTH)
    ap.add_argument("--configured", type=float, default=0.05, help="the shrinkage the rule keeps unless the synthetic set says otherwise")
    ap.add_argument("--resamples", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--map-score-only", action="store_true", help="judge images by the map's score, not the shipped z-max")
    ap.add_argument("--map-pools", default="", help="comma-separated map_pool windows to compare at the checkpoint's shrinkage")
    ap.add_argument("--map-pool-clip", type=float, default=MAP_POOL_CLIP,
                    help=f"the pooled part's clip quantile for --map-pools (default {MAP_POOL_CLIP}, what --map-pool trains; 0 = unclipped, the form before f8d4e4b)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    model, ckpt, test, fit_feats, test_feats = checkpoint_features(args.checkpoint, args.data, args.cache, args.split)
    cpu = torch.device("cpu")
    spec = preprocess_spec(ckpt.model_config)
    train_set = load_dataset(args.data, "train")
    _, val_idx = split_normals(train_set, ckpt.train_config)
    t0 = time.perf_counter()
    synthetic = synthetic_set(model.backbone, [train_set.image(i) for i in val_idx], spec, cpu, copies=args.copies,
                              strength=args.strength, seed=args.seed)
    zmax = bool(model.cfg.region_grid) and not args.map_score_only
    region_shrinkage = ckpt.train_config.region_shrinkage if zmax else None
    decision = select_shrinkage(model, fit_feats, synthetic, args.configured, resamples=args.resamples, region_shrinkage=region_shrinkage)
    seconds = time.perf_counter() - t0
    print(f"{len(val_idx)} held-out normals, {int(synthetic.labels.sum())} synthetic defects (strength {args.strength}); "
          f"{len(test)} real test images ({args.split}); selection took {seconds:.0f} s", flush=True)

    rec_test, rec_syn = reconstruct(model, test_feats, cpu), reconstruct(model, synthetic.feats, cpu)
    test_masks, test_labels = masks_at(test, spec), np.asarray(test.labels)
    fit_res = residuals(model, fit_feats, cpu)
    clean = synthetic.labels == 0
    if zmax:
        region_syn, region_test = region_term_scores(model, fit_res, [synthetic.feats - rec_syn, test_feats - rec_test], region_shrinkage)

    def real_figures(head):
        """The test set's figures, its image scores on the clean held-out normals' scale (as training judges)."""
        scores, maps = head_maps(head, test_feats, rec_test)
        if zmax:  # the clean images set each term's scale; they go first and are dropped after
            ref = head_maps(head, synthetic.feats[clean], rec_syn[clean])[0]
            both = zscore_max(np.concatenate([ref, scores]), np.concatenate([region_syn[clean], region_test]),
                              np.arange(len(ref) + len(scores)) < len(ref))
            scores = both[len(ref):]
        return figures(scores, maps, test_masks, test_labels)

    by_lam = {r["shrinkage"]: r for r in decision["candidates"]}
    rows = []
    for lam, head in candidate_heads(model, fit_res, "identity", tuple(by_lam)):
        real = real_figures(head)
        rows.append({"shrinkage": lam, "synthetic": {m: by_lam[lam][m] for m in METRICS}, "real": real})
        print(json.dumps(rows[-1]), flush=True)

    print(f"\n| shrinkage to identity | synthetic: image / pixel / AUPRO | real ({args.split}): image / pixel / AUPRO |")
    print("|---|---|---|")
    for r in rows:
        s, t = (" / ".join(f"{r[k][m]:.4f}" for m in METRICS) for k in ("synthetic", "real"))
        print(f"| {r['shrinkage']:g} | {s} | {t} |")
    picks = {}
    for crit in (*METRICS, "mean"):
        for k in ("synthetic", "real"):
            value = (lambda r: np.mean([r[k][m] for m in METRICS])) if crit == "mean" else (lambda r: r[k][crit])
            picks[f"{k} {crit}"] = max(rows, key=value)["shrinkage"]
    print("\npicked by " + ", ".join(f"{k}: {v:g}" for k, v in picks.items()))
    print(f"select_shrinkage: {decision['shrinkage']:g} (configured {decision['configured']:g}, best on the synthetic set "
          f"{decision['best']:g}, mean-of-three advantage {decision['advantage_points']} points, ahead in {decision['best_ahead']} of resamples)")
    pools = []
    for k in [int(v) for v in args.map_pools.split(",") if v]:
        probe = SimpleNamespace(cfg=replace(model.cfg, map_pool=k, map_pool_clip=args.map_pool_clip), backbone=model.backbone)
        ((_, head),) = candidate_heads(probe, fit_res, ckpt.train_config.score_target, (ckpt.train_config.score_shrinkage,))
        scores, maps = head_maps(head, synthetic.feats, rec_syn)
        syn = figures(zscore_max(scores, region_syn, clean) if zmax else scores, maps, synthetic.masks, synthetic.labels)
        pools.append({"map_pool": k, "map_pool_clip": args.map_pool_clip if k else 0.0, "synthetic": syn, "real": real_figures(head)})
    if pools:
        print(f"\n| map_pool (shrinkage {ckpt.train_config.score_shrinkage:g}) | synthetic: image / pixel / AUPRO | real ({args.split}) |")
        print("|---|---|---|")
        for r in pools:
            s, t = (" / ".join(f"{r[k][m]:.4f}" for m in METRICS) for k in ("synthetic", "real"))
            print(f"| {r['map_pool']} | {s} | {t} |")
    if args.json:
        write_json_atomic(args.json, {"checkpoint": str(args.checkpoint), "data": str(args.data), "split": args.split,
                                      "copies": args.copies, "strength": args.strength, "image_score": decision["image_score"],
                                      "rows": rows, "picks": picks, "decision": decision, "map_pools": pools,
                                      "seconds": round(seconds, 1)})


if __name__ == "__main__":
    main()
