"""Fitting a trained transformer's score head and calibrating its threshold: where training, head
refits, the INT8 match and the drift choice all end (``fit_score``), and scoring standardised
features with the head as fitted (``score_features``)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import TrainConfig


@torch.no_grad()
def score_features(model, features: torch.Tensor, device, batch_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Image scores and model-size maps for standardised features (eval mode)."""
    model.eval()
    scores, maps = [], []
    for s in range(0, len(features), batch_size):
        f = features[s:s + batch_size].to(device)
        amap, score = model.head(f, model.transformer(f))
        scores.append(score.float().cpu().numpy())
        maps.append(amap[:, 0].float().cpu().numpy())
    if not scores:
        return np.zeros(0, np.float32), np.zeros((0,) + tuple(model.cfg.input_size), np.float32)
    return np.concatenate(scores), np.concatenate(maps)


def use_nearest_head(model, train_cfg: TrainConfig, feats: torch.Tensor, val_feats: torch.Tensor, device) -> tuple:
    """Give ``model`` the location-free head (``train_cfg.nearest_bank`` cells) in place of its own, fitted
    on the fit normals and recalibrated on the held-out ones: (its model config, thresholds)."""
    from ..model.head import AnomalyHead
    from .location_choice import nearest_config

    cfg = nearest_config(model.cfg, train_cfg.nearest_bank)
    model.cfg, model.head = cfg, AnomalyHead(cfg, model.backbone.channels).to(device)
    return cfg, fit_score(model, train_cfg, feats, val_feats, device)


def fit_score(model, train_cfg: TrainConfig, feats: torch.Tensor, val_feats: torch.Tensor, device,
              fit_residual: torch.Tensor | None = None, drift: torch.Tensor | None = None):
    """How a trained transformer's output becomes a decision: fit the ``mahalanobis`` head's residual
    statistics (on the fit normals, or the held-out ones with ``score_fit="val"``), then calibrate the
    threshold on the held-out normals. Training, ``quantize-matched`` and head refits all end here.
    ``fit_residual``: the fit normals' residuals if the caller already has them. ``drift``: features of
    drifted views of the fit normals, which the head is fitted on too (the threshold is not)."""
    if model.cfg.score == "mahalanobis":
        from .residual_stats import fit_head_for, residuals

        use_val = train_cfg.score_fit == "val" and len(val_feats) >= 2
        fit_feats, residual = (val_feats, None) if use_val else (feats, fit_residual)
        if drift is not None and len(drift) and not use_val:
            residual = None if residual is None else torch.cat([residual, residuals(model, drift, device)])
            fit_feats = torch.cat([fit_feats, drift.to(fit_feats.device)])
        fit_head_for(model, train_cfg, fit_feats, device, residual=residual)
    elif model.cfg.score == "nearest":
        from .memory_bank import fit_bank

        fit_bank(model, feats, device, seed=train_cfg.seed, residual=fit_residual, drift=drift)
    return calibrate_on(model, val_feats if len(val_feats) else feats, device, train_cfg.threshold_quantile)


def calibrate_with_drift(model, train_cfg: TrainConfig, val_feats: torch.Tensor, drifted: torch.Tensor, thresholds, device,
                         train_set, val_idx, synthetic=None, features=None) -> tuple:
    """``threshold_drift``, where training and head refits end: (the threshold from the held-out normals
    and their ``drifted`` views together, the record of what it costs). The views raise it by what the
    drift does to a normal part's score, so a relit or compressed normal does not stop the line.
    ``thresholds``: the one from the held-out normals alone. The cost is measured on ``synthetic``,
    made from the held-out normals (``train_set`` at ``val_idx``) when the caller has none and there
    are enough of them, through ``features`` where given (``head_select.synthetic_set``)."""
    from ..data.camera import threshold_drifts
    from ..preprocessing import preprocess_spec
    from .head_select import MIN_HELD_OUT, synthetic_set

    calibrated = thresholds if not len(drifted) or not len(val_feats) else \
        calibrate_on(model, torch.cat([val_feats, drifted.to(val_feats.device)]), device, train_cfg.threshold_quantile)
    if synthetic is None and len(val_idx) >= MIN_HELD_OUT:
        synthetic = synthetic_set(model.backbone, [train_set.image(i) for i in val_idx], preprocess_spec(model.cfg), device,
                                  seed=train_cfg.seed, features=features)
    record = threshold_drift_cost(model, threshold_drifts(train_cfg.threshold_drift), thresholds, calibrated, synthetic, device)
    record["why"] = why_threshold(record)
    return calibrated, record


def threshold_drift_cost(model, drifts, clean, drifted, synthetic, device) -> dict:
    """What ``threshold_drift`` costs, before anyone deploys it: the share of the synthetic defects
    pasted on the held-out normals that reach the threshold calibrated on the clean held-out normals
    (``clean``) and the one calibrated on their drifted views too (``drifted``). None without a
    synthetic set (too few held-out normals)."""
    from ..postprocessing import label

    record = {"drifts": list(drifts), "threshold_clean": round(float(clean.threshold), 6), "threshold": round(float(drifted.threshold), 6)}
    if synthetic is not None:
        scores, _ = score_features(model, synthetic.feats, device)
        defects = scores[np.asarray(synthetic.labels) == 1]
        record |= {"synthetic_defects": int(len(defects)), "flagged_clean": round(float(label(defects, clean).mean()), 4),
                   "flagged": round(float(label(defects, drifted).mean()), 4)}
    return record


def why_threshold(record: dict) -> str:
    """One line for the log and ``eval``."""
    line = (f"threshold {record['threshold']:.4g} from the held-out normals and their drifted views ({', '.join(record['drifts'])}), "
            f"{record['threshold_clean']:.4g} from the normals alone")
    if "flagged" in record:
        line += (f"; it flags {record['flagged']:.0%} of {record['synthetic_defects']} synthetic defects on them "
                 f"({record['flagged_clean']:.0%} at {record['threshold_clean']:.4g})")
    return line


def calibrate_on(model, features: torch.Tensor, device, quantile: float):
    """Threshold from held-out normal features: a high quantile of their scores."""
    from ..evaluation.metrics import calibrate_threshold

    normal_scores, _ = score_features(model, features, device)
    return calibrate_threshold(normal_scores, None, quantile=quantile)
