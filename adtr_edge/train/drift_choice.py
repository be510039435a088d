"""Fit the score head on drifted views of the normals, or not: decided per dataset on held-out normals.

A head fitted on the normals alone calls a relit, softened or harder-compressed normal part an
anomaly: on the generated bolts a 1 px blur or JPEG 50 raised an alarm on every normal image. Fitted
also on drifted views of the fit normals (``data.camera.DRIFTS``), it learns what drift looks like,
and on the bolts those false alarms fell to none (docs/benchmarks.md 1.6). But drift can look like a
defect: on MVTec AD ``screw`` a softened thread is what some defects look like, and the drifted head
lost 4.8 image-AUROC points on the validation split. So ``fit_drift="auto"`` decides per dataset:

* *robustness*: each head's false-alarm rate on drifted views of the held-out normals (which neither
  head saw), at its own threshold from the clean held-out normals;
* *sensitivity*: the paired difference of the mean of image AUROC, pixel AUROC and AUPRO on the
  held-out normals with synthetic defects pasted on them (as the shrinkage and the head are chosen).

The drifted head ships when it raises fewer false alarms on drifted normals and loses no more than
``MARGIN`` points of sensitivity at the lower end of the 95% interval.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from ..data.camera import AUTO_DRIFTS

MARGIN = 1.0  # points of the mean of three metrics the drifted head may lose, at the interval's lower end
CHOICES = ("none", "auto")  # besides a list of drift names


def ships(false_alarms: dict, advantage: list, margin: float = MARGIN) -> bool:
    """The rule: fewer false alarms on drifted normals ({"plain", "drifted"} rates), and no more than
    ``margin`` points lost on synthetic defects at the lower end of ``advantage`` ([point, low, high])."""
    return bool(false_alarms["drifted"] < false_alarms["plain"] and advantage[1] >= -margin)


def false_alarm_rate(model, feats: torch.Tensor, threshold: float, device) -> float:
    from .head_fit import score_features

    scores, _ = score_features(model, feats, device)
    return float((np.asarray(scores) >= threshold).mean())


def compare_drift(model, drifted_model, synthetic, val_drift: torch.Tensor, thresholds, drifted_thresholds, device, *,
                  seed: int = 0, resamples: int = 400) -> dict:
    """{"drift": bool, "advantage_points" (drifted minus plain, [point, low, high]), "false_alarms"
    {"plain", "drifted"} on the drifted held-out normals, "candidates"}: the decision and its figures.
    ``model`` and ``drifted_model`` share the transformer and differ in the head's fit."""
    from .head_select import figures, paired_advantage
    from .location_choice import _scored
    from .residual_stats import reconstruct

    rec = reconstruct(model, synthetic.feats, device)
    methods = {"plain": _scored(copy.deepcopy(model.head).cpu(), synthetic.feats, rec),
               "drifted": _scored(copy.deepcopy(drifted_model.head).cpu(), synthetic.feats, rec)}
    found = {k: figures(m["scores"], m["maps"], synthetic.masks, synthetic.labels) for k, m in methods.items()}
    advantage, _ = paired_advantage(methods["drifted"], methods["plain"], found["drifted"], found["plain"], synthetic,
                                    resamples=resamples, seed=seed)
    alarms = {"plain": false_alarm_rate(model, val_drift, thresholds.threshold, device),
              "drifted": false_alarm_rate(drifted_model, val_drift, drifted_thresholds.threshold, device)}
    return {"drift": ships(alarms, advantage), "advantage_points": [round(v, 3) for v in advantage], "margin": MARGIN,
            "false_alarms": {k: round(v, 4) for k, v in alarms.items()}, "drifted_normals": int(len(val_drift)),
            "candidates": {k: {m: round(float(v), 4) for m, v in f.items()} for k, f in found.items()},
            "synthetic_defects": int(synthetic.labels.sum())}


def why_drift(choice: dict, drifts=AUTO_DRIFTS) -> str:
    """One line for the log and ``eval``."""
    a, fa = choice["advantage_points"], choice["false_alarms"]
    verdict = "fitted on them" if choice["drift"] else "fitted on the normals alone"
    return (f"drifted views ({', '.join(drifts)}): false alarms on {choice['drifted_normals']} drifted held-out normals "
            f"{fa['plain']:.1%} -> {fa['drifted']:.1%}; on {choice['synthetic_defects']} synthetic defects {a[0]:+.2f} points "
            f"(95% {a[1]:+.2f} to {a[2]:+.2f}; may lose {choice['margin']:g}): {verdict}")


def choose_drift(model, train_cfg, fit_feats: torch.Tensor, drift_fit: torch.Tensor, val_feats: torch.Tensor,
                 drift_val: torch.Tensor, synthetic, thresholds, device) -> tuple:
    """``fit_drift="auto"`` on a model whose head is fitted on the normals alone: (the head to ship, its
    thresholds, the decision). ``drift_fit``/``drift_val``: standardised features of the fit and held-out
    normals' drifted views. Without a synthetic set (too few held-out normals) the head stays as it is."""
    from .head_fit import fit_score

    if synthetic is None or not len(drift_val):
        return model.head, thresholds, None
    drifted = copy.deepcopy(model)
    drifted_thresholds = fit_score(drifted, train_cfg, fit_feats, val_feats, device, drift=drift_fit)
    choice = compare_drift(model, drifted, synthetic, drift_val, thresholds, drifted_thresholds, device, seed=train_cfg.seed)
    return (drifted.head, drifted_thresholds, choice) if choice["drift"] else (model.head, thresholds, choice)


def head_drifts(ckpt) -> tuple:
    """The drifts whose views of the fit normals the checkpoint's head was fitted on: those named by
    ``fit_drift``, or for "auto" the ones it weighed, where it chose them (``extra.drift_choice``)."""
    from ..data.camera import check_drifts

    fit_drift = ckpt.train_config.fit_drift
    if fit_drift == "auto":
        return AUTO_DRIFTS if (ckpt.extra.get("drift_choice") or {}).get("drift") else ()
    return check_drifts(fit_drift)
