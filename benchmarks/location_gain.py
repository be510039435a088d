"""How much nearer a held-out normal cell's nearest neighbour is at the same place than anywhere.

    python benchmarks/location_gain.py ../shared/data/screw --cache runs/screw-cache

``adtr_edge.train.location_choice.location_gain`` on a dataset's fit and held-out normals (the
training split's, as ``train`` splits them), on Lite2 features standardised with the fit normals'
channel statistics, as training standardises them; no model is trained. It was tried as the rule
that picks the head from normal images alone and is recorded with each decision, but it does not
make it (docs/benchmarks.md 1.6).
"""

from __future__ import annotations

import argparse
import json

import torch

from adtr_edge.config import ModelConfig, TrainConfig
from adtr_edge.data.datasets import load_dataset
from adtr_edge.model import build_model
from adtr_edge.preprocessing import preprocess_spec
from adtr_edge.train.features import cached_raw_features
from adtr_edge.train.location_choice import location_gain
from adtr_edge.train.loop import split_normals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("data")
    ap.add_argument("--cache", default=None, help="feature cache folder (as train --feature-cache)")
    ap.add_argument("--backbone", default="tf_efficientnet_lite2")
    args = ap.parse_args()
    cfg = ModelConfig.for_backbone(args.backbone)
    model = build_model(cfg)
    train = load_dataset(args.data, "train")
    raw = [cached_raw_features(model.backbone, train, idx, preprocess_spec(cfg), cfg, cache_dir=args.cache,
                               device=torch.device("cpu")) for idx in split_normals(train, TrainConfig())]
    mean, std = raw[0].mean(dim=(0, 2, 3), keepdim=True), raw[0].std(dim=(0, 2, 3), keepdim=True)
    fit, held = ((x - mean) / std for x in raw)
    print(json.dumps({"data": args.data, **location_gain(fit, held)}))


if __name__ == "__main__":
    main()
