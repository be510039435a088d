"""Is ADTR really behind (or ahead of) a training-free baseline? Paired bootstrap on the same images.

    python benchmarks/paired_bootstrap.py runs/l2/val-default/adtr-default [more checkpoints ...] \
        --data ../shared/data/magnetic_tile --cache runs/isz/.features --split test --json runs/boot.json

For each checkpoint: ADTR as shipped (its transformer and head) and the baseline (``--against``,
default the per-location Gaussian) on the *same* standardised features of the same images, then
``adtr_edge.evaluation.significance.paired_bootstrap``: stratified resamples of the images, each metric's
confidence interval and the interval of the difference ADTR - baseline. Several checkpoints (for
example the same recipe trained with other seeds) add the spread that training itself adds.
``--against-checkpoint CKPT`` pairs each checkpoint with another trained one instead (two training
variants on the same images; each scores its own features as shipped).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from adtr_edge.evaluation.baselines import BASELINES
from adtr_edge.bench.evaluation import checkpoint_features, masks_at
from adtr_edge.fileio import write_json_atomic
from adtr_edge.preprocessing import preprocess_spec
from adtr_edge.evaluation.significance import METRICS, paired_bootstrap
from adtr_edge.train.head_fit import score_features


def shipped_outputs(checkpoint: Path, data: Path, cache: Path, split: str) -> tuple:
    """A checkpoint's image scores and maps on ``split``, each on its own standardised features:
    (model, checkpoint, test images, fit features, test features, {"scores", "maps"})."""
    model, ckpt, test, fit_feats, test_feats = checkpoint_features(checkpoint, data, cache, split)
    with torch.no_grad():
        scores, maps = score_features(model, test_feats, torch.device("cpu"))
    return model, ckpt, test, fit_feats, test_feats, {"scores": scores, "maps": maps}


def compare(checkpoint: Path, data: Path, cache: Path, split: str, against: str, resamples: int, seed: int,
            reference: dict | None = None) -> dict:
    """``checkpoint`` against the baseline ``against`` on its features, or against ``reference``
    (another checkpoint's ``shipped_outputs`` on the same images) when given."""
    model, ckpt, test, fit_feats, test_feats, ours = shipped_outputs(checkpoint, data, cache, split)
    masks = masks_at(test, preprocess_spec(ckpt.model_config))
    if reference is None:
        with torch.no_grad():
            base_maps, base_scores = model.head.from_grid_map(BASELINES[against](fit_feats, test_feats))
        reference = {"scores": base_scores.numpy(), "maps": base_maps[:, 0].numpy()}
    result = paired_bootstrap(ours, reference, np.asarray(test.labels), masks, resamples=resamples, seed=seed)
    return {"checkpoint": str(checkpoint), "seed": ckpt.train_config.seed, "images": len(test), "against": against, **result.to_dict()}


def to_markdown(rows: list[dict]) -> str:
    def ci(iv: dict, scale: float = 1.0) -> str:
        return f"{iv['estimate'] * scale:.3f} [{iv['low'] * scale:.3f}, {iv['high'] * scale:.3f}]"

    lines = ["| checkpoint (training seed) | metric | ADTR | baseline | ADTR - baseline, points | resamples ADTR ahead |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        for m in METRICS:
            if m in row["a"]:
                lines.append(f"| {row['checkpoint']} ({row['seed']}) | {m} | {ci(row['a'][m])} | {ci(row['b'][m])} | "
                             f"{ci(row['difference'][m], 100)} | {row['a_better'][m]:.0%} |")
    if len(rows) > 1:
        lines.append("")
        for m in METRICS:
            d = [100 * r["difference"][m]["estimate"] for r in rows if m in r["difference"]]
            lines.append(f"- {m}: difference over {len(d)} checkpoints {np.mean(d):+.2f} points (spread {min(d):+.2f} to {max(d):+.2f})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--cache", required=True, type=Path, help="feature cache folder (as for accuracy.py)")
    ap.add_argument("--split", choices=("val", "test", "all"), default="test")
    ap.add_argument("--against", choices=sorted(BASELINES), default="gaussian")
    ap.add_argument("--against-checkpoint", type=Path, default=None,
                    help="compare with this trained checkpoint as shipped instead of a baseline (same images)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0, help="resampling seed")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows, reference, against = [], None, args.against
    if args.against_checkpoint:
        *_, reference = shipped_outputs(args.against_checkpoint, args.data, args.cache, args.split)
        against = str(args.against_checkpoint)
    for checkpoint in args.checkpoints:
        rows.append(compare(checkpoint, args.data, args.cache, args.split, against, args.resamples, args.seed, reference))
        print(json.dumps({k: rows[-1][k] for k in ("checkpoint", "images", "difference", "a_better")}), flush=True)
    print(to_markdown(rows))
    if args.json:
        write_json_atomic(args.json, {"command": " ".join(sys.argv), "rows": rows})


if __name__ == "__main__":
    main()
