"""Two numbers that show how a reconstruction model fails, measured on held-out normal images.

* **input following**: how much of a normal image's deviation from the per-location training mean
  the reconstruction reproduces, sum <f_hat - m, f - m> / sum ||f - m||^2. Near 0: the decoder
  outputs the mean (every normal variation is scored as anomaly); near 1: it follows its input.
* **defect pass-through**: the same regression inside a pasted synthetic defect, between the
  clean image and its defective copy: sum <f_hat' - f_hat, f' - f> / sum ||f' - f||^2 over the
  defect's grid cells (weighted by how much of each cell the defect covers). Near 1: the identity
  shortcut, the defect is rebuilt and scores nothing; near 0: the defect is blocked.

A good model follows normal variation (high following) and blocks defects (low pass-through).
Both are linear-regression slopes, so they are comparable across datasets and feature scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..preprocessing import PreprocessSpec
from .residual_stats import reconstruct


@dataclass
class DefectProbe:
    """Held-out normal features, the same images with a synthetic defect, and the defect's cells."""

    clean: torch.Tensor  # (N, C, h, w) standardised
    defective: torch.Tensor  # (N, C, h, w) standardised
    cells: torch.Tensor  # (N, h, w) in [0, 1]: share of each grid cell the defect covers


def make_probe(backbone, images: list, clean: torch.Tensor, spec: PreprocessSpec, grid: tuple[int, int],
               device, seed: int = 0) -> DefectProbe | None:
    """Paste one confetti defect on each image (fixed seed) and compute its standardised features."""
    from ..data.anomalies import SyntheticAnomalies
    from .features import extract_raw_features, grid_masks

    if not images:
        return None
    maker = SyntheticAnomalies("confetti", probability=1.0, seed=seed)
    rng = np.random.default_rng(seed)
    defective, masks = [], []
    for img in images:
        out, mask, _ = maker(img, rng)
        defective.append(out)
        masks.append(mask)
    raw = extract_raw_features(backbone, lambda i: defective[i], list(range(len(defective))), spec, device=device)
    feats = backbone.standardize(raw.to(device)).cpu()
    return DefectProbe(clean.cpu(), feats, grid_masks(masks, spec, grid))


@torch.no_grad()
def input_following(model, normals: torch.Tensor, train_mean: torch.Tensor, device) -> float | None:
    """Slope of the reconstruction's deviation from the mean on the input's, on normal features."""
    if len(normals) == 0:
        return None
    model.eval()
    dev = normals - train_mean
    rec = reconstruct(model, normals, device) - train_mean
    return float((rec * dev).sum() / (dev * dev).sum().clamp_min(1e-12))


@torch.no_grad()
def defect_pass_through(model, probe: DefectProbe | None, device) -> float | None:
    """Slope of the reconstruction's change on the input's change, inside the pasted defects."""
    if probe is None or probe.cells.sum() <= 0:
        return None
    model.eval()
    delta = probe.defective - probe.clean
    delta_rec = reconstruct(model, probe.defective, device) - reconstruct(model, probe.clean, device)
    w = probe.cells.unsqueeze(1)
    num = (w * delta_rec * delta).sum()
    den = (w * delta * delta).sum().clamp_min(1e-12)
    return float(num / den)


def collapse_figures(model, normals: torch.Tensor, train_mean: torch.Tensor, probe: DefectProbe | None, device) -> dict:
    """Both numbers, rounded, as they appear in training logs and eval reports."""
    follow = input_following(model, normals, train_mean, device)
    passed = defect_pass_through(model, probe, device)
    return {"input_following": None if follow is None else round(follow, 4),
            "defect_pass_through": None if passed is None else round(passed, 4)}


@torch.no_grad()
def collapse_on_images(model, images: list, spec: PreprocessSpec, device, seed: int = 0, probe_images: int = 16) -> dict:
    """Both figures for a trained model on held-out normal images (``eval``'s report).

    The reference mean is these normals' own per-location mean: a checkpoint does not keep its
    training features, and over enough normals the two means agree.
    """
    from .features import extract_raw_features

    if len(images) < 2:
        return {"input_following": None, "defect_pass_through": None, "images": len(images)}
    raw = extract_raw_features(model.backbone, lambda i: images[i], list(range(len(images))), spec, device=device)
    feats = model.backbone.standardize(raw.to(device)).cpu()
    probe = make_probe(model.backbone, images[:probe_images], feats[:probe_images], spec, model.cfg.grid, device, seed=seed)
    return {**collapse_figures(model, feats, feats.mean(dim=0, keepdim=True), probe, device), "images": len(images)}
