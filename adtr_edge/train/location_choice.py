"""Per-location or location-free: which score head a dataset gets, decided after training.

The per-location head (``mahalanobis``) compares each cell with what normal images show *at that
place*; it is the better head where parts are fixtured (magnetic tile: 0.983 image AUROC against
0.86 for a nearest neighbour from anywhere). Where parts move and turn (MVTec AD ``screw``), each
location's statistics mix head, thread and background, a normal part in an unusual pose scores like
a defect, and a location-free nearest-neighbour head (``nearest``) is the better one.

The choice is made as the shrinkage is (``head_select``): the held-out normals (the heads never see
them) with synthetic defects pasted on them, scored by the fitted per-location head and by a
nearest-neighbour head fitted on the same fit normals; the per-location head stays unless the
nearest one's mean of image AUROC, pixel AUROC and AUPRO is ahead in at least ``CONFIDENCE`` of
paired bootstrap resamples. An aligned category keeps what it has unless its own normals say
otherwise; the false alarms that poses cause on the clean held-out normals are what moves it.

``location_gain`` (how much nearer a held-out normal cell's nearest neighbour is at the same place
than anywhere) is recorded with the decision to explain it, but does not make it: it did not separate
the datasets (magnetic tile 0.58, screw 0.33, the generated weave 0.20, the generated bolts 0.16 on
Lite2 features: lighting that varies over the frame makes the same place nearer on every dataset).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from .memory_bank import cells, nearest_distance

HEADS = ("auto", "per-location", "nearest")
CONFIDENCE = 0.975  # as head_select's one-of-two comparisons: 1 - 0.05 / 2


@torch.no_grad()
def location_gain(fit: torch.Tensor, held: torch.Tensor, seed: int = 0) -> dict:
    """{"gain", "same_place" and "any_place" (median nearest distances)} for fit normals' features
    (N, C, h, w) and held-out normals' (M, C, h, w): one candidate per fit image on both sides (at
    the same location, or drawn from anywhere), so the number of candidates is the same."""
    n, c, h, w = fit.shape
    g = torch.Generator().manual_seed(seed)
    pool = cells(fit.float())
    same, anywhere = [], []
    for y in range(h):
        for x in range(w):
            q = held[:, :, y, x].float()
            same.append(nearest_distance(q, fit[:, :, y, x].float()))
            anywhere.append(nearest_distance(q, pool[torch.randint(len(pool), (n,), generator=g)]))
    same_m, any_m = float(torch.cat(same).median()), float(torch.cat(anywhere).median())
    return {"gain": round(any_m / max(same_m, 1e-12) - 1.0, 4), "same_place": round(same_m, 4), "any_place": round(any_m, 4)}


def nearest_config(cfg, bank: int, source: str = "features", pool: int = 0):
    """``cfg`` with a nearest-neighbour head in place of the per-location one (its per-location parts off)."""
    return replace(cfg, score="nearest", nearest_bank=int(bank), nearest_source=source, nearest_pool=int(pool),
                   region_grid=0, map_pool=0, map_pool_clip=0.0)


# The per-location head's own settings, which a nearest head turns off: recorded with the choice
# (``choose_location``) so that ``refit-head --head per-location|auto`` can bring that head back.
PER_LOCATION_FIELDS = ("score", "region_grid", "map_pool", "map_pool_weight", "map_pool_clip")


def per_location_settings(cfg) -> dict:
    return {k: getattr(cfg, k) for k in PER_LOCATION_FIELDS}


def per_location_config(cfg, choice: dict | None, preset: dict | None):
    """A nearest head's config ``cfg`` with the per-location head back: the settings recorded with the
    location choice, or (a checkpoint written before they were recorded) the preset's, else the
    model config's defaults."""
    from ..config import ModelConfig

    kept = (choice or {}).get("per_location")
    if kept is None:
        model = (preset or {}).get("model", {})
        kept = {k: model.get(k, getattr(ModelConfig, k)) for k in PER_LOCATION_FIELDS}
        if kept["score"] == "nearest":
            kept["score"] = "mahalanobis"
    return replace(cfg, **kept)


@torch.no_grad()
def _scored(head, feats: torch.Tensor, rec: torch.Tensor, batch: int = 32) -> dict:
    maps, scores = [], []
    for s in range(0, len(feats), batch):
        amap, score = head(feats[s:s + batch], rec[s:s + batch])
        maps.append(amap[:, 0].float())
        scores.append(score.float())
    return {"scores": torch.cat(scores).numpy(), "maps": torch.cat(maps).numpy()}


def compare_heads(per_location, nearest, synthetic, rec: torch.Tensor, *, resamples: int = 400, seed: int = 0,
                  confidence: float = CONFIDENCE) -> dict:
    """{"head", "nearest_ahead" (share of resamples), "advantage_points" (nearest minus per-location, mean
    of three metrics, with its 95% interval), "candidates": each head's figures} on a ``head_select``
    SyntheticSet whose reconstructions are ``rec``."""
    from .head_select import figures, paired_advantage

    methods = {"per-location": _scored(per_location, synthetic.feats, rec), "nearest": _scored(nearest, synthetic.feats, rec)}
    found = {k: figures(m["scores"], m["maps"], synthetic.masks, synthetic.labels) for k, m in methods.items()}
    advantage, ahead = paired_advantage(methods["nearest"], methods["per-location"], found["nearest"], found["per-location"],
                                        synthetic, resamples=resamples, seed=seed)
    return {"head": "nearest" if ahead >= confidence else "per-location", "nearest_ahead": round(ahead, 4),
            "confidence": confidence, "advantage_points": [round(v, 3) for v in advantage],
            "candidates": {k: {m: round(float(v), 4) for m, v in f.items()} for k, f in found.items()},
            "synthetic_images": int(len(synthetic.labels)), "synthetic_defects": int(synthetic.labels.sum())}


def why(choice: dict) -> str:
    """One line for the log and ``eval``: which head, and the figures that chose it."""
    if choice.get("set_by") == "user":
        return f"{choice['head']} head, as set (--head {choice['head']})"
    from .head_select import METRICS

    c, a = choice["candidates"], choice["advantage_points"]
    pl, nn = (np.mean([c[k][m] for m in METRICS]) for k in ("per-location", "nearest"))
    verdict = "chose it" if choice["head"] == "nearest" else "kept per-location"
    return (f"{choice['head']} head: on {choice['synthetic_defects']} synthetic defects on held-out normals, nearest "
            f"{nn:.4f} vs per-location {pl:.4f} (mean of image, pixel AUROC, AUPRO; {a[0]:+.2f} points, 95% "
            f"{a[1]:+.2f} to {a[2]:+.2f}; ahead in {choice['nearest_ahead']:.1%} of resamples, needs "
            f"{choice['confidence']:.1%}): {verdict}")
