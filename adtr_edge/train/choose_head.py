"""Choose the map's pooled part from a user's own labelled defects: ``refit-head --map-pool auto``.

Why it cannot be chosen from normals: the pooled part (the whitened residual averaged over K x K
neighbours) finds large faint defects that no single cell shows, and blurs small sharp ones. On
magnetic tile's validation defects it lifts pixel AUROC by 1.6 points; on the generated tiles'
small defects it costs 1.3 AUPRO points; every other way tried of combining the two parts moved
along the same exchange (docs/benchmarks.md 1.3). Which side of it a dataset is on is
a property of its defects, and synthetic defects pasted on normals decide it wrongly (docs/benchmarks.md 1.3).

So the choice is made on real labelled defects, with a paper's discipline: the test split is cut
by ``validation_split`` (a hash of each file's defect type and name, the split every benchmark
here uses), candidates are compared on the choice part only, and the untouched rest reports the
chosen head against the original one with paired 95% intervals. The transformer is reconstructed
once per image; each candidate is only a refitted head (``RefitSource``) on the same residuals.

The decision is conservative, as ``head_select.select_shrinkage``'s: the current setting stays
unless the best candidate's mean of image AUROC, pixel AUROC and AUPRO is ahead of it in at least
1 - 0.05 / (candidates - 1) of paired bootstrap resamples of the choice images (the best of
several is picked after looking).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import AdtrError
from ..fileio import staged_folder
from .checkpoint import Checkpoint, save_checkpoint
from .head_select import METRICS, figures
from .refit import RefitSource, check_out

CANDIDATE_POOLS = (0, 3, 5)  # off, and the two windows measured in docs/benchmarks.md 1.3
# The fewest labelled images of each kind in the choice part: with fewer, one image moves the
# image AUROC by several points and the decision is noise.
MIN_DEFECTS = 10
MIN_GOOD = 5


@dataclass(frozen=True)
class HeadChoice:
    out: Path
    checkpoint: Checkpoint
    record: dict  # what checkpoint.extra["head_choice"] holds

    @property
    def chosen(self) -> int:
        return self.record["chosen"]


@dataclass
class _Part:
    """One part of the test split, reconstructed once: (features, f_hat) and its ground truth."""

    indices: list
    feats: torch.Tensor
    rec: torch.Tensor
    masks: np.ndarray
    labels: np.ndarray

    @property
    def counts(self) -> dict:
        return {"images": len(self.indices), "defects": int(self.labels.sum()), "good": int((self.labels == 0).sum()),
                "defects_with_masks": int(sum(m.any() for m, y in zip(self.masks, self.labels) if y == 1))}


def _reconstructed_part(source: RefitSource, test, indices: list, feature_cache, description: str) -> _Part:
    from ..preprocessing import preprocess_spec, resize_mask
    from .features import cached_raw_features
    from .residual_stats import reconstruct

    model, cfg = source.model, source.ckpt.model_config
    spec = preprocess_spec(cfg)
    raw = cached_raw_features(model.backbone, test, indices, spec, cfg, cache_dir=feature_cache, device=source.device,
                              description=description)
    feats = model.backbone.standardize(raw.to(source.device)).float().cpu()
    masks = np.stack([resize_mask(test.mask(i), spec) for i in indices]) if indices else np.zeros((0, spec.height, spec.width), bool)
    return _Part(list(indices), feats, reconstruct(model, feats, source.device), masks, np.asarray(test.labels)[indices])


def _head_outputs(head, part: _Part, batch_size: int = 32) -> dict:
    """The shipped head's image scores and model-size maps on a reconstructed part."""
    scores, maps = [], []
    head.eval()
    with torch.no_grad():
        for s in range(0, len(part.feats), batch_size):
            amap, score = head(part.feats[s:s + batch_size].to(next(head.buffers()).device),
                               part.rec[s:s + batch_size].to(next(head.buffers()).device))
            scores.append(score.float().cpu().numpy())
            maps.append(amap[:, 0].float().cpu().numpy())
    return {"scores": np.concatenate(scores), "maps": np.concatenate(maps)}


def choose_map_pool(checkpoint: str | Path, data: str | Path, out: str | Path, *, candidates=CANDIDATE_POOLS,
                    fraction: float = 0.3, resamples: int = 400, min_defects: int | None = None, min_good: int | None = None,
                    feature_cache: str | Path | None = None, device: str = "auto", force: bool = False, seed: int = 0,
                    log=None, **settings) -> HeadChoice:
    """Write ``out``: ``checkpoint`` with the map's pooled part (one of ``candidates`` or the current
    one) chosen on the choice part of ``data``'s labelled test split, and the other head ``settings``
    (as ``refit_head``) applied to every candidate. ``data`` must be the dataset it was trained on
    (its train split refits the head; its test split chooses and reports)."""
    from ..data.datasets import guard_not_trained_on, load_dataset, validation_split

    log = log or (lambda _msg: None)
    checkpoint, out = Path(checkpoint), Path(out)
    check_out(checkpoint, out, force)
    if "map_pool" in settings or "map_pool_clip" in settings:
        raise AdtrError("choose_map_pool chooses --map-pool itself; give the other head settings only")
    source = RefitSource.load(checkpoint, data, feature_cache=feature_cache, device=device)
    test = load_dataset(data, "test")
    guard_not_trained_on(test, source.ckpt.extra.get("train_paths", []))
    choice_idx, rest_idx = validation_split(test, fraction)
    choice = _reconstructed_part(source, test, choice_idx, feature_cache, "choice features")
    n = choice.counts
    min_defects = MIN_DEFECTS if min_defects is None else min_defects
    min_good = MIN_GOOD if min_good is None else min_good
    if n["defects_with_masks"] < min_defects or n["good"] < min_good:
        raise AdtrError(f"{data}: the choice part of its test split ({fraction:.0%} of it) holds {n['defects_with_masks']} defect "
                        f"images with masks and {n['good']} good ones; --map-pool auto needs at least {min_defects} and {min_good} "
                        "(label more defects, or name the window: --map-pool K)")
    original_head = source.model.head  # every refit installs a new head; this one stays as trained
    current = source.ckpt.model_config.map_pool
    candidates = sorted(set(int(k) for k in candidates) | {current})
    rows, methods = [], {}
    for k in candidates:
        model, _, _ = source.refit(map_pool=k, **settings)
        outputs = _head_outputs(model.head, choice)
        found = figures(outputs["scores"], outputs["maps"], choice.masks, choice.labels)
        rows.append({"map_pool": k, **found, "mean": float(np.mean([found[m] for m in METRICS]))})
        log(f"  map_pool {k}: " + ", ".join(f"{m} {found[m]:.4f}" for m in METRICS) + f" (mean {rows[-1]['mean']:.4f})")
        best = max(rows, key=lambda r: r["mean"])["map_pool"]
        methods[k] = outputs
        methods = {key: v for key, v in methods.items() if key in (current, best)}  # maps are large; keep two
    confidence = 1.0 - 0.05 / max(1, len(candidates) - 1)
    chosen, advantage, ahead = current, [0.0, 0.0, 0.0], None
    if best != current:
        from ..evaluation.significance import paired_draws

        known = {r["map_pool"]: {m: r[m] for m in METRICS} for r in rows}
        exact, draws = paired_draws({"best": methods[best], "current": methods[current]}, choice.labels, choice.masks,
                                    resamples=resamples, seed=seed, known={"best": known[best], "current": known[current]})
        diff = np.mean([draws["best"][m] - draws["current"][m] for m in METRICS], axis=0)
        point = float(np.mean([exact["best"][m] - exact["current"][m] for m in METRICS]))
        lo, hi = np.percentile(diff, [2.5, 97.5])
        advantage, ahead = [100 * point, 100 * float(lo), 100 * float(hi)], float((diff > 0).mean())
        chosen = best if ahead >= confidence else current
    del methods
    model, new, changed = source.refit(map_pool=chosen, **settings)
    record = {"setting": "map_pool", "current": current, "best": best, "chosen": chosen,
              "advantage_points": [round(v, 3) for v in advantage], "best_ahead": ahead, "confidence": round(confidence, 4),
              "resamples": resamples, "choice_part": {"fraction": fraction, **n}, "candidates": rows,
              "held_out": _held_out(source, test, rest_idx, model.head, original_head, feature_cache, resamples)}
    new.extra["head_choice"] = record
    with staged_folder(out) as tmp:
        save_checkpoint(tmp, model.cpu(), new)
    return HeadChoice(out, new, record)


def _held_out(source: RefitSource, test, rest_idx: list, chosen_head, original_head, feature_cache, resamples: int) -> dict:
    """The chosen head against the original on the part of the test split no choice looked at: both
    heads' figures and their paired differences with 95% intervals (as ``eval --against``)."""
    from ..evaluation.significance import paired_bootstrap

    rest = _reconstructed_part(source, test, rest_idx, feature_cache, "held-out features")
    n = rest.counts
    if n["defects_with_masks"] == 0 or n["good"] == 0:
        return {**n, "figures": None, "why": "the held-out part needs good images and defects with masks"}
    outputs = {"chosen": _head_outputs(chosen_head, rest), "original": _head_outputs(original_head, rest)}
    found = {name: figures(o["scores"], o["maps"], rest.masks, rest.labels) for name, o in outputs.items()}
    paired = paired_bootstrap(outputs["chosen"], outputs["original"], rest.labels, rest.masks, resamples=resamples,
                              a_estimates=found["chosen"])
    against = {m: {"difference": [iv.estimate, iv.low, iv.high], "target_better": paired.a_better[m]}
               for m, iv in paired.difference.items()}
    return {**n, "figures": found, "against_original": against}
