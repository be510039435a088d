"""Choose the ``mahalanobis`` head's shrinkage per dataset, from normal images alone.

The shrinkage trades image ranking for localisation, and the best trade depends on the data: on
magnetic tile's textures a per-location covariance (shrinkage near 0) ranks images best, on
aligned, generated objects shrinking most of the way to the average variance localises 7 AUPRO
points better (docs/benchmarks.md 1.5, 1.3). A user has normal images only. The held-out normals
(the ones that calibrate the threshold; the head never sees them) get synthetic defects pasted at
reduced strength, half confetti and half patches (two of each per image, more where there are
few held-out normals, so that there are at least 300), and every candidate head scores that set.

The decision is conservative: the configured shrinkage stays unless the best candidate's mean of
image AUROC, pixel AUROC and AUPRO on the synthetic set is ahead of it in at least ``confidence`` of
the paired bootstrap resamples, 1 - 0.05 / (candidates - 1) by default: the best of ten is picked
after looking, and at a plain 95% pure noise moved it (a test with no defects under the masks
had the best of ten ahead in 96% of resamples). Synthetic defects are not real ones, so a small synthetic margin
is not worth leaving a value that was measured on real defects.

Candidates are judged by the image score the shipped head computes. With a regional term
(``region_grid``) that is the larger of two z-scores, the map's and the regional one's
(``AnomalyHead.forward``); the regional term does not depend on the shrinkage, so it is fitted once,
and both terms are put on one scale by their mean and spread on the clean held-out normals. Judged
by the map's score alone, the image AUROC of the candidates is the map's, which is not what users
deploy: on the generated tiles (seed 0) that picked 0.65 where the shipped score's ranking picks
0.8, which localises 1.2 AUPRO points better there (docs/benchmarks.md 1.3 and 1.5, the shrinkage judged by the
image score users deploy).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from ..evaluation.metrics import aupro, auroc, pixel_auroc
from .residual_stats import reconstruct, region_term_scores, residuals, set_map_stats, whitening

CANDIDATES = (0.0, 0.05, 0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9, 1.0)
KINDS = ("confetti", "patch")
STRENGTH = 0.4  # full-strength pastes are found by every head on magnetic tile (0.98 pixel AUROC) and rank nothing
# At least this many pasted defects, whatever the number of held-out normals: with 12 of them and two
# copies per kind (48 defects) the generated tiles' decision flipped with the training seed.
MIN_DEFECTS = 300
MIN_HELD_OUT = 5  # held-out normals below which training keeps the configured shrinkage
METRICS = ("image_auroc", "pixel_auroc", "aupro")


@dataclass
class SyntheticSet:
    """Held-out normals, clean then with defects: standardised features, masks at model size, labels."""

    feats: torch.Tensor  # (N, C, h, w)
    masks: np.ndarray  # (N, H, W) bool
    labels: np.ndarray  # (N,) 0 clean, 1 defective
    strength: float


def default_copies(n_images: int, kinds=KINDS) -> int:
    """Defective copies per image and kind: 2, or enough for ``MIN_DEFECTS`` in all."""
    return max(2, math.ceil(MIN_DEFECTS / max(1, n_images * len(kinds))))


def synthetic_images(images: list, *, copies: int | None = None, strength: float = STRENGTH, seed: int = 0, kinds=KINDS):
    """(images, masks, labels): ``images`` as they are, then ``copies`` defective copies of each per kind
    (``default_copies`` when None; patches are cut from the other images of the list)."""
    from ..data.anomalies import SyntheticAnomalies

    copies = copies if copies is not None else default_copies(len(images), kinds)

    out, masks, labels = list(images), [np.zeros(im.shape[:2], bool) for im in images], [0] * len(images)
    for k, kind in enumerate(kinds):
        maker = SyntheticAnomalies(kind, probability=1.0, strength=strength, seed=seed + k, source_images=images)
        rng = np.random.default_rng(seed + 100 * k)
        for _ in range(copies):
            for im in images:
                pasted, mask, _ = maker(im, rng)
                out.append(pasted)
                masks.append(mask)
                labels.append(1)
    return out, masks, np.asarray(labels)


def synthetic_set(backbone, images: list, spec, device, *, copies: int | None = None, strength: float = STRENGTH,
                  seed: int = 0, features=None) -> SyntheticSet:
    """``synthetic_images`` through the backbone, standardised with its statistics; or through
    ``features`` (images -> standardised features) where the head reads another backbone graph
    (``quantize-matched``: the INT8 one)."""
    from ..preprocessing import resize_mask
    from .features import extract_raw_features

    pasted, masks, labels = synthetic_images(images, copies=copies, strength=strength, seed=seed)
    if features is not None:
        feats = features(pasted).cpu()
    else:
        raw = extract_raw_features(backbone, lambda i: pasted[i], list(range(len(pasted))), spec, device=device)
        feats = backbone.standardize(raw.to(device)).cpu()
    return SyntheticSet(feats, np.stack([resize_mask(m, spec) for m in masks]), labels, strength)


def head_maps(head, feats: torch.Tensor, rec: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(scores (N,), maps (N, H, W)) of a head on features and their reconstructions."""
    with torch.no_grad():
        grid = torch.cat([head.error_map(feats[i:i + 32], rec[i:i + 32]) for i in range(0, len(feats), 32)])
        maps, scores = head.from_grid_map(grid)
    return scores.numpy(), maps[:, 0].numpy()


def figures(scores: np.ndarray, maps: np.ndarray, masks: np.ndarray, labels: np.ndarray) -> dict:
    return {"image_auroc": auroc(scores, labels), "pixel_auroc": pixel_auroc(maps, masks), "aupro": aupro(maps, masks)}


def zscore_max(map_scores: np.ndarray, region_scores: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """The shipped rule, max(z_map, z_region), with each z-score's mean and spread from the images
    marked ``clean`` (normals the head was not fitted on)."""
    def z(s):
        return (s - s[clean].mean()) / max(float(s[clean].std()), 1e-12)
    return np.maximum(z(map_scores), z(region_scores))


def candidate_heads(model, residual: torch.Tensor, target: str, candidates=CANDIDATES):
    """(shrinkage, head on the CPU) for each candidate, fitted on the fit normals' residuals
    (``residual_stats.residuals``: the transformer runs once for all of them)."""
    from ..model.head import AnomalyHead

    for lam in candidates:
        # map heads (head_maps scores the map alone): no regional buffers they would never use
        head = AnomalyHead(replace(model.cfg, score="mahalanobis", map_blur=0.0, region_grid=0), model.backbone.channels)
        set_map_stats(head, residual, *whitening(residual, lam, target=target))
        yield lam, head


def paired_advantage(a: dict, b: dict, a_found: dict, b_found: dict, synthetic: SyntheticSet, *, resamples: int = 400,
                     seed: int = 0) -> tuple[list, float]:
    """([point, low, high] in points, share of resamples ahead): how far head ``a`` is ahead of ``b``
    on the mean of image AUROC, pixel AUROC and AUPRO, over paired bootstrap resamples of the
    synthetic set (``a``/``b``: {"scores", "maps"}; ``*_found``: their exact figures). Every choice
    made on the synthetic set (the shrinkage, the per-location or nearest head) is judged by it."""
    from ..evaluation.significance import paired_draws

    exact, draws = paired_draws({"a": a, "b": b}, synthetic.labels, synthetic.masks, resamples=resamples, seed=seed,
                                known={"a": a_found, "b": b_found})
    diff = np.mean([draws["a"][m] - draws["b"][m] for m in METRICS], axis=0)
    point = float(np.mean([exact["a"][m] - exact["b"][m] for m in METRICS]))
    lo, hi = np.percentile(diff, [2.5, 97.5])
    return [100 * point, 100 * float(lo), 100 * float(hi)], float((diff > 0).mean())


def select_shrinkage(model, fit_feats: torch.Tensor, synthetic: SyntheticSet, configured: float, target: str = "identity",
                     *, resamples: int = 400, confidence: float | None = None, seed: int = 0, candidates=CANDIDATES,
                     device=torch.device("cpu"), fit_residual: torch.Tensor | None = None,
                     region_shrinkage: float | None = None) -> dict:
    """The shrinkage to ship and why: {"shrinkage", "configured", "best", "advantage" (mean-of-three
    points, best minus configured, with its 95% interval), "best_ahead" (share of resamples), "confidence"
    (the share it needed), "image_score" (what ranked the images), "candidates"}. ``fit_residual``:
    ``residuals(model, fit_feats)`` if the caller already has it (training fits the shipped head on the
    same residuals next). ``region_shrinkage``: for a model with a regional term, judge the candidates'
    images by the shipped z-max with that term fitted at this shrinkage; None judges the map's score."""
    rec = reconstruct(model, synthetic.feats, device)
    candidates = tuple(sorted(set(candidates) | {configured}))
    confidence = confidence if confidence is not None else 1.0 - 0.05 / max(1, len(candidates) - 1)
    methods, rows = {}, []  # maps of the configured head and of the best so far only (each is 100 MB on magnetic tile)
    fit_residual = fit_residual if fit_residual is not None else residuals(model, fit_feats, device)
    zmax = bool(model.cfg.region_grid) and region_shrinkage is not None
    if zmax:
        (region,) = region_term_scores(model, fit_residual, [synthetic.feats.float() - rec], region_shrinkage)
    clean = synthetic.labels == 0
    for lam, head in candidate_heads(model, fit_residual, target, candidates):
        scores, maps = head_maps(head, synthetic.feats, rec)
        scores = zscore_max(scores, region, clean) if zmax else scores
        found = figures(scores, maps, synthetic.masks, synthetic.labels)
        rows.append({"shrinkage": lam, **found, "mean": float(np.mean([found[m] for m in METRICS]))})
        best = max(rows, key=lambda r: r["mean"])["shrinkage"]
        methods[lam] = {"scores": scores, "maps": maps}
        methods = {k: v for k, v in methods.items() if k in (configured, best)}
    chosen, advantage, ahead = configured, [0.0, 0.0, 0.0], None
    if best != configured:
        found = {r["shrinkage"]: {m: r[m] for m in METRICS} for r in rows}
        advantage, ahead = paired_advantage(methods[best], methods[configured], found[best], found[configured], synthetic,
                                            resamples=resamples, seed=seed)
        chosen = best if ahead >= confidence else configured
    return {"shrinkage": chosen, "configured": configured, "best": best, "advantage_points": [round(v, 3) for v in advantage],
            "best_ahead": ahead, "confidence": round(confidence, 4), "synthetic_images": int(len(synthetic.labels)),
            "synthetic_defects": int(synthetic.labels.sum()), "strength": synthetic.strength,
            "image_score": "z-max of the map and the regional term" if zmax else "the map's score", "candidates": rows}


def head_summary(ckpt) -> dict:
    """How a checkpoint's score head was set, for an export's metadata and the eval report: the score,
    its shrinkage and target, (when training chose it) the decision without the per-candidate table,
    the regional term, the map's pooled part, what ``refit-head`` changed, if it did, and (after
    ``--map-pool auto``) the choice made on labelled defects with its held-out figures."""
    t = ckpt.train_config
    chosen = (ckpt.extra or {}).get("score_selection")
    cfg, refit, choice = ckpt.model_config, (ckpt.extra or {}).get("refit"), (ckpt.extra or {}).get("head_choice")
    location, drift = (ckpt.extra or {}).get("location_choice"), (ckpt.extra or {}).get("drift_choice")
    grid = cfg.region_grid
    return {"score": cfg.score, "shrinkage": t.score_shrinkage, "target": t.score_target, "fit": t.score_fit,
            "selection": {k: v for k, v in chosen.items() if k != "candidates"} if chosen else None,
            "region_grid": grid, "region_shrinkage": t.region_shrinkage if grid else None,
            # only where present, so that the summaries of plain trained checkpoints read as before
            **({"map_pool": cfg.map_pool, "map_pool_clip": cfg.map_pool_clip} if cfg.map_pool else {}),
            **({"refit": refit} if refit else {}),
            **({"head_choice": {k: v for k, v in choice.items() if k != "candidates"}} if choice else {}),
            # per-location or location-free, and why (train.location_choice), where training decided it
            **({"location": {"head": location["head"], "why": location["why"]}} if location else {}),
            **({"nearest": {"bank": cfg.nearest_bank, "source": cfg.nearest_source, "pool": cfg.nearest_pool}}
               if cfg.score == "nearest" else {}),
            # fitted on drifted views of the normals too (train.drift_choice), as set or as decided
            **({"fit_drift": t.fit_drift} if t.fit_drift != "none" else {}),
            **({"drift": {"fitted": drift["drift"], "why": drift["why"]}} if drift else {}),
            # the threshold calibrated on drifted views of the held-out normals too
            **({"threshold_drift": {"drifts": t.threshold_drift, "why": (ckpt.extra or {}).get("threshold_drift", {}).get(
                "why", f"threshold from the held-out normals and their drifted views ({t.threshold_drift})")}}
               if t.threshold_drift != "none" else {})}
