"""A trained model's features on a dataset split, and what a report reads: the pieces that
``benchmarks/accuracy.py`` and the scripts comparing heads on one checkpoint share.

Features are read through the training's disk cache (``cached_raw_features``), so every script
sees the same inputs; only scoring is restricted to the split (``validation_split``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..data.datasets import ImageSet, load_dataset, validation_split
from ..evaluation.evaluate import Scored
from ..preprocessing import preprocess_spec, resize_mask
from ..train.features import cached_raw_features
from ..train.loop import split_normals


def masks_at(images: ImageSet, spec) -> np.ndarray:
    return np.stack([resize_mask(images.mask(i), spec) for i in range(len(images))])


def scored_from(maps: torch.Tensor, scores: torch.Tensor, test: ImageSet, masks: np.ndarray) -> Scored:
    return Scored(scores.numpy(), maps[:, 0].numpy(), masks, np.asarray(test.labels), list(test.defects), [str(p) for p in test.paths])


def summarise(report: dict) -> dict:
    return {k: report.get(k) for k in ("image_auroc", "pixel_auroc", "aupro", "f1_max")}


def split_features(model, cfg, train_set, fit_idx, test: ImageSet, cache: Path, split: str, stats=None):
    """Standardised features of the fit normals and of ``split`` of ``test`` (val, test or all), with
    ``stats`` (mean, std) or else the fit normals' own: (test images kept, fit features, test features,
    (mean, std)). Features are cached for the whole test set; only scoring is restricted to the split."""
    spec, cpu = preprocess_spec(cfg), torch.device("cpu")
    raw_fit = cached_raw_features(model.backbone, train_set, fit_idx, spec, cfg, cache_dir=cache, device=cpu, progress=None)
    raw_test = cached_raw_features(model.backbone, test, list(range(len(test))), spec, cfg, cache_dir=cache, device=cpu, progress=None)
    if split != "all":
        val_part, test_part = validation_split(test)
        keep = val_part if split == "val" else test_part
        test, raw_test = test.subset(keep), raw_test[keep]
    if stats is None:
        flat = raw_fit.transpose(0, 1).reshape(raw_fit.shape[1], -1)
        stats = (flat.mean(1).reshape(1, -1, 1, 1), flat.std(1).reshape(1, -1, 1, 1).clamp_min(1e-6))
    mean, std = stats
    return test, (raw_fit - mean) / std, (raw_test - mean) / std, (mean, std)


def checkpoint_features(checkpoint: Path, data: Path, cache: Path, split: str):
    """A trained checkpoint and its own view of ``data``: the fit normals its head was fitted on
    (``split_normals`` with its seed) and ``split`` of the test set, standardised with its own
    statistics: (model, checkpoint, test images kept, fit features, test features)."""
    from ..train.checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(checkpoint)
    train_set, test = load_dataset(data, "train"), load_dataset(data, "test")
    fit_idx, _ = split_normals(train_set, ckpt.train_config)
    stats = (model.backbone.feature_mean, model.backbone.feature_std)
    test, fit_feats, test_feats, _ = split_features(model, ckpt.model_config, train_set, fit_idx, test, cache, split, stats=stats)
    return model, ckpt, test, fit_feats, test_feats
