"""The training loop on cached features.

Normal-only by default (feature MSE). With anomalies (ADTR+), a fixed pool of anomalous images
(synthetic, external or labelled) is pushed through the frozen backbone once as well, and every
step mixes a normal batch with an anomalous one under the FCDD-style losses.
"""

from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, Sequence

import numpy as np
import torch

from ..config import ModelConfig, TrainConfig
from ..data.camera import check_drifts, threshold_drifts
from ..errors import AdtrError, require
from ..model import build_model
from ..preprocessing import median_grey, preprocess_spec
from ..model.losses import image_loss, normal_loss, pixel_loss, pseudo_huber
from ..progress import Task, progress_bar
from .checkpoint import Checkpoint, load_checkpoint, load_train_state, save_checkpoint, save_train_state
from .device import resolve_device
from .diagnostics import collapse_figures, make_probe
from .head_fit import calibrate_with_drift, fit_score, use_nearest_head
from .features import augment_views, cached_raw_features, channel_stats, drift_features, extract_raw_features, grid_masks
from .location_choice import HEADS
from .residual_stats import location_covariance

PROBE_IMAGES = 16  # held-out normals that get a synthetic defect for the pass-through figure


@dataclass
class AnomalyPool:
    """Anomalous training examples, fixed for the whole run so their features are computed once.

    ``images``: BGR uint8 frames of any size; ``masks``: bool masks at each image's size, or None for
    image-level labels only; ``kind``: a name for logs ("confetti", "external", ...).
    """

    images: list
    masks: list | None
    kind: str

    @property
    def pixel_labelled(self) -> bool:
        return self.masks is not None


@dataclass
class TrainResult:
    model: torch.nn.Module
    checkpoint: Checkpoint
    folder: Path
    seconds: float


def feature_jitter(f: torch.Tensor, scale: float, g: torch.Generator, shape: torch.Tensor | None = None) -> torch.Tensor:
    """UniAD's feature jitter, (N, K, C): Gaussian noise whose std is ``scale`` x each token's RMS;
    with ``shape`` (``covariance_jitter_shape``), noise shaped like each location's normal variation."""
    tokens = f.flatten(2).transpose(1, 2)
    z = torch.randn(tokens.shape, generator=g).to(f.device)
    if shape is not None:  # already on f's device (prepare_data): no copy per step
        return torch.einsum("kcd,nkd->nkc", shape, z) * scale
    return z * tokens.pow(2).mean(dim=2, keepdim=True).sqrt() * scale


JITTER_SHAPES = ("isotropic", "covariance")


def covariance_jitter_shape(feats: torch.Tensor) -> torch.Tensor:
    """(K, C, C): each grid location's Cholesky factor of the fit normals' feature covariance
    (plus 1% of the average variance), scaled so that the noise's mean energy per token equals
    isotropic jitter's at the same ``feature_jitter``. Isotropic noise at 1x the token's RMS buries
    the low-variance directions that the Mahalanobis head weighs most; this noise perturbs every
    direction in proportion to its normal variation (docs/benchmarks.md 1.3, what context can predict)."""
    _, chol = location_covariance(feats, eps=0.01, what="--jitter-shape covariance")
    token_energy = feats.double().pow(2).sum(dim=1).mean()
    gain = (token_energy / chol.pow(2).sum(dim=(1, 2)).mean()).sqrt()  # trace(L L^T) = sum of L^2
    return (chol * gain).float()


def epochs_for_budget(cfg: TrainConfig, first_epoch_seconds: float) -> int:
    """How many epochs fit ``cfg.time_budget`` given the first one's time (at most ``cfg.epochs``)."""
    if cfg.time_budget <= 0:
        return cfg.epochs
    return max(1, min(cfg.epochs, int(cfg.time_budget / max(first_epoch_seconds, 1e-6))))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    """Learning-rate multiplier at ``step`` of ``total``."""
    if cfg.schedule == "step":
        return 0.1 if step >= cfg.step_at * total else 1.0
    warm = max(1, int(cfg.warmup_fraction * total))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def choose_loss(cfg: TrainConfig, pool: AnomalyPool | None) -> str:
    if cfg.loss != "auto":
        require(cfg.loss in ("normal", "pixel", "image"), f"--loss {cfg.loss}: use auto, normal, pixel or image")
        require(cfg.loss == "normal" or pool is not None, f"--loss {cfg.loss} needs anomalies (synthetic, external or labelled)")
        require(cfg.loss != "pixel" or (pool is not None and pool.pixel_labelled), "--loss pixel needs pixel-labelled anomalies")
        return cfg.loss
    if pool is None:
        return "normal"
    return "pixel" if pool.pixel_labelled else "image"


def split_normals(train_set, cfg: TrainConfig, held_out: Sequence[str] | None = None) -> tuple[list[int], list[int]]:
    """(fit, held-out) indices of the normal images; the held-out part calibrates the threshold.
    ``held_out``: file names of the normals to hold out instead of a random share (a fine-tune keeps
    its base model's, so its threshold is calibrated on normals neither model trained on)."""
    normals = [i for i in range(len(train_set)) if int(train_set.labels[i]) == 0]
    require(len(normals) > 0, f"training set {train_set.summary().get('root', '')}: no normal images")
    if held_out:
        names = set(held_out)
        val_idx = [i for i in normals if train_set.samples[i].path.name in names]
        fit_idx = [i for i in normals if train_set.samples[i].path.name not in names]
        if val_idx and len(fit_idx) >= 2:
            return fit_idx, val_idx
    order = np.random.default_rng(cfg.seed).permutation(normals).tolist()
    n_val = int(round(cfg.val_fraction * len(order))) if len(order) >= 10 else 0
    val_idx, fit_idx = sorted(order[:n_val]), sorted(order[n_val:])
    require(len(fit_idx) >= 2, f"training set too small: {len(fit_idx)} images left after holding out {n_val} for the threshold")
    return fit_idx, val_idx


@dataclass
class RunData:
    """What one run trains and validates on, standardised with the model's feature statistics."""

    feats: torch.Tensor  # fit normals (N, C, h, w): the head's statistics
    val_feats: torch.Tensor  # held-out normals: validation loss, collapse figures, threshold
    train_mean: torch.Tensor  # per-location mean of the fit normals, for input following
    probe: object  # DefectProbe on held-out normals, for defect pass-through
    pool_feats: torch.Tensor | None = None  # anomalous examples (ADTR+)
    pool_targets: torch.Tensor | None = None  # their grid masks (pixel loss) or ones (image loss)
    train_feats: torch.Tensor | None = None  # what the transformer trains on: feats + augmented views (None: feats)
    drift_feats: torch.Tensor | None = None  # drifted views of the fit normals, for the score head (fit_drift)
    val_drift: torch.Tensor | None = None  # the held-out normals' drifted views, for fit_drift="auto"
    threshold_drift: torch.Tensor | None = None  # the held-out normals' views that calibrate the threshold too
    jitter_factors: torch.Tensor | None = None  # covariance-shaped jitter's per-location factors, on the device (None: isotropic)


def train_model(
    train_set,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    out_dir: str | Path,
    *,
    weights: str | None = None,
    anomalies: AnomalyPool | None = None,
    init_from: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable | None = None,
    log: Callable[[str], None] = lambda s: None,
    feature_cache: str | Path | None = None,
    held_out_normals: Sequence[str] | None = None,
) -> TrainResult:
    """Train ADTR on the normal images of ``train_set`` (an ``adtr_edge.data`` ImageSet).

    ``init_from``: fine-tune a normal-only checkpoint (the paper's ADTR+ schedule). ``resume``:
    continue an interrupted run in ``out_dir``. ``on_epoch_end(epoch, model, seconds)`` lets
    benchmarks record accuracy against training time. ``held_out_normals``: see ``split_normals``.
    """
    out_dir = Path(out_dir)
    augment_views(train_cfg.augment)  # a bad --augment, --score-select or --jitter-shape fails before any feature is computed
    check_train_choices(train_cfg)
    seed_everything(train_cfg.seed)
    device = resolve_device(train_cfg.device)
    fit_idx, val_idx = split_normals(train_set, train_cfg, held_out_normals)
    if init_from is not None:
        model, base = load_checkpoint(init_from, device="cpu")
        model_cfg = base.model_config
        log(f"fine-tuning {init_from}")
    else:
        if train_cfg.normalize_exposure and not model_cfg.exposure_reference:
            reference = median_grey((train_set.image(i) for i in fit_idx), preprocess_spec(model_cfg))
            model_cfg = replace(model_cfg, exposure_reference=round(reference, 2))
            log(f"exposure: every frame is brought to a mean grey level of {model_cfg.exposure_reference:g} (the fit normals' median)")
        model = build_model(model_cfg, weights=weights)
    model = model.to(device)
    loss_kind = choose_loss(train_cfg, anomalies)
    t_start = time.perf_counter()
    with progress_bar(progress) as bar:
        data = prepare_data(model, model_cfg, train_cfg, train_set, fit_idx, val_idx, anomalies, loss_kind, device, bar,
                            feature_cache, fresh=init_from is None)
        history = run_epochs(model, model_cfg, train_cfg, train_set, data, loss_kind, out_dir, device, bar, t_start,
                             resume=resume, progress=progress, on_epoch_end=on_epoch_end, log=log)
    return finish(model, model_cfg, train_cfg, train_set, data, history, fit_idx, val_idx, loss_kind, anomalies, out_dir,
                  device, t_start, log=log)


def prepare_data(model, model_cfg: ModelConfig, train_cfg: TrainConfig, train_set, fit_idx, val_idx, anomalies, loss_kind: str,
                 device, bar, feature_cache, *, fresh: bool) -> RunData:
    """Backbone features once (cached), the standardisation statistics, the defect probe, the anomaly pool."""
    spec = preprocess_spec(model_cfg)
    raw_fit = cached_raw_features(model.backbone, train_set, fit_idx, spec, model_cfg, cache_dir=feature_cache, device=device,
                                  progress=bar, description="features (train)")
    raw_val = cached_raw_features(model.backbone, train_set, val_idx, spec, model_cfg, cache_dir=feature_cache, device=device,
                                  progress=bar, description="features (val)")
    if fresh and train_cfg.standardize_features:  # a fine-tune keeps its base model's statistics
        mean, std = channel_stats(raw_fit)
        model.backbone.set_feature_stats(mean.to(device), std.to(device))
    fmean, fstd = model.backbone.feature_mean.cpu(), model.backbone.feature_std.cpu()
    feats = (raw_fit - fmean) / fstd
    val_feats = (raw_val - fmean) / fstd
    probe_idx = val_idx[:PROBE_IMAGES]
    probe = make_probe(model.backbone, [train_set.image(i) for i in probe_idx], val_feats[:len(probe_idx)], spec,
                       model_cfg.grid, device, seed=train_cfg.seed)
    data = RunData(feats, val_feats, feats.mean(dim=0, keepdim=True), probe)
    if train_cfg.jitter_shape == "covariance" and train_cfg.feature_jitter > 0:
        data.jitter_factors = covariance_jitter_shape(feats).to(device)  # once, not per step
    views = augment_views(train_cfg.augment)
    if views:  # the transformer sees more normal variety; the head and threshold stay on the real views
        extra = [(cached_raw_features(model.backbone, train_set, fit_idx, spec, model_cfg, cache_dir=feature_cache, device=device,
                                      progress=bar, description=f"features (train, {v})", view=v) - fmean) / fstd for v in views]
        data.train_feats = torch.cat([feats] + extra)
    drifts = check_drifts(train_cfg.fit_drift)
    if drifts:  # the head learns how drifted normals look; the transformer and the threshold do not see them
        raw = drift_features(model.backbone, train_set, fit_idx, spec, model_cfg, drifts, cache_dir=feature_cache, device=device,
                             progress=bar)
        data.drift_feats = (raw - fmean) / fstd
    # The held-out normals' drifted views: they judge fit_drift="auto" and calibrate threshold_drift's
    # threshold; a view both need is computed once.
    judging = drifts if train_cfg.fit_drift == "auto" else ()
    calibrating = threshold_drifts(train_cfg.threshold_drift)
    held_out = {d: (drift_features(model.backbone, train_set, val_idx, spec, model_cfg, [d], cache_dir=feature_cache, device=device,
                                   progress=bar) - fmean) / fstd for d in dict.fromkeys(judging + calibrating)}
    if judging:
        data.val_drift = torch.cat([held_out[d] for d in judging])
    if calibrating:
        data.threshold_drift = torch.cat([held_out[d] for d in calibrating])
    if anomalies is not None and loss_kind != "normal":
        require(len(anomalies.images) > 0, f"anomaly source {anomalies.kind}: no images")
        raw_pool = extract_raw_features(model.backbone, lambda i: anomalies.images[i], list(range(len(anomalies.images))), spec,
                                        device=device, progress=bar, description=f"features ({anomalies.kind})")
        data.pool_feats = (raw_pool - fmean) / fstd
        if loss_kind == "pixel":
            data.pool_targets = grid_masks(anomalies.masks, spec, model_cfg.grid)
        else:
            data.pool_targets = torch.ones(len(data.pool_feats))
    return data


def step_loss(model, f: torch.Tensor, data: RunData, loss_kind: str, model_cfg: ModelConfig, train_cfg: TrainConfig,
              g: torch.Generator, device) -> torch.Tensor:
    """The loss of one batch of normal features (plus anomalous ones, ADTR+)."""
    if loss_kind == "normal":
        jitter = feature_jitter(f, train_cfg.feature_jitter, g, data.jitter_factors) if train_cfg.feature_jitter > 0 else None
        return normal_loss(f, model.transformer(f, jitter)).float()
    pick = torch.randint(0, len(data.pool_feats), (max(1, f.shape[0] // 2),), generator=g)
    both = torch.cat([f, data.pool_feats[pick].to(device)])
    phi = pseudo_huber(both, model.transformer(both)).float()
    if loss_kind == "pixel":
        y = torch.cat([torch.zeros(f.shape[0], *model_cfg.grid), data.pool_targets[pick]]).to(device)
        return pixel_loss(phi, y, train_cfg.alpha)
    y = torch.cat([torch.zeros(f.shape[0]), data.pool_targets[pick]]).to(device)
    return image_loss(phi, y, train_cfg.alpha, train_cfg.top_k)


def run_epochs(model, model_cfg: ModelConfig, train_cfg: TrainConfig, train_set, data: RunData, loss_kind: str, out_dir: Path,
               device, bar, t_start: float, *, resume: bool, progress: bool, on_epoch_end, log) -> list:
    """The optimisation loop; saves a resumable state after every epoch and returns the history."""
    feats = data.feats if data.train_feats is None else data.train_feats
    params = [p for p in model.transformer.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    start_epoch, history = 0, []
    if resume:
        start_epoch, extra = load_train_state(out_dir, opt)
        state, _ = load_checkpoint(out_dir, device="cpu")
        model.load_state_dict(state.state_dict())
        history = extra.get("history", [])
        log(f"resuming at epoch {start_epoch}")
    bs = min(train_cfg.batch_size, len(feats))
    steps_per_epoch = max(1, len(feats) // bs)
    epochs = train_cfg.epochs
    total = steps_per_epoch * epochs
    task = Task(bar, "train", epochs)
    task.advance(start_epoch)
    g = torch.Generator().manual_seed(train_cfg.seed)
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=train_cfg.bf16)
    t_train = time.perf_counter()
    epoch = start_epoch
    while epoch < epochs:
        model.train()
        perm = torch.randperm(len(feats), generator=g)
        total_loss = 0.0
        for s in range(steps_per_epoch):
            for group in opt.param_groups:
                group["lr"] = train_cfg.lr * lr_factor(epoch * steps_per_epoch + s, total, train_cfg)
            with autocast:
                loss = step_loss(model, feats[perm[s * bs:(s + 1) * bs]].to(device), data, loss_kind, model_cfg, train_cfg, g, device)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
            opt.step()
            total_loss += loss.item()
        if not math.isfinite(total_loss):
            raise AdtrError(f"training diverged at epoch {epoch + 1} (loss {total_loss}); lower --lr or raise --grad-clip")
        if epoch == start_epoch and train_cfg.time_budget > 0:
            fitted = start_epoch + epochs_for_budget(train_cfg, time.perf_counter() - t_train)
            if fitted != epochs:
                epochs = fitted
                total = steps_per_epoch * epochs  # the schedule ends where the budget does
                task.total(epochs)
                log(f"time budget {train_cfg.time_budget:.0f} s: {epochs} epochs")
        entry = epoch_entry(model, data, epoch + 1, total_loss / steps_per_epoch, loss_kind, device, time.perf_counter() - t_start)
        history.append(entry)
        info = f"loss {entry['loss']:.4f}" + (f" val {entry['val_loss']:.4f}" if entry["val_loss"] is not None else "") + _figures_text(entry)
        task.advance(1, info=info)
        if not progress:
            log(f"epoch {epoch + 1}/{epochs} {entry['seconds']:.0f} s {info}")
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, model, entry["seconds"])
        save_train_state(out_dir, opt, epoch + 1, {"history": history})
        save_checkpoint(out_dir, model, Checkpoint(model_cfg, train_cfg, None, train_set.summary(), history))
        epoch += 1
    return history


def epoch_entry(model, data: RunData, epoch: int, loss: float, loss_kind: str, device, seconds: float) -> dict:
    """One line of the history: losses and the two collapse figures on the held-out normals."""
    val_loss = None
    if len(data.val_feats):
        model.eval()
        with torch.no_grad():
            vf = data.val_feats.to(device)
            val_loss = float(normal_loss(vf, model.transformer(vf)))
    figures = collapse_figures(model, data.val_feats, data.train_mean, data.probe, device)
    return {"epoch": epoch, "seconds": round(seconds, 2), "loss": loss, "val_loss": val_loss, "loss_kind": loss_kind, **figures}


def finish(model, model_cfg: ModelConfig, train_cfg: TrainConfig, train_set, data: RunData, history: list, fit_idx, val_idx,
           loss_kind: str, anomalies, out_dir: Path, device, t_start: float, log: Callable[[str], None] = lambda s: None) -> TrainResult:
    """Choose the head's shrinkage, fit the head, calibrate the threshold on held-out normals, write the final
    checkpoint (whose train config records the shrinkage chosen, so refits and ``quantize-matched`` reuse it)."""
    from .residual_stats import residuals

    # The fit normals' residuals, computed once: the head selection and the shipped head both fit on them.
    fit_residual = residuals(model, data.feats, device) if model.cfg.score == "mahalanobis" and train_cfg.score_fit == "fit" else None
    synthetic = held_out_synthetic(model, train_cfg, train_set, val_idx, device, log)
    selection = select_head(model, train_cfg, data, device, synthetic, fit_residual)
    if selection is not None:
        train_cfg = replace(train_cfg, score_shrinkage=selection["shrinkage"])
        log(f"score head: shrinkage {selection['shrinkage']:g} (best on {selection['synthetic_defects']} synthetic defects: "
            f"{selection['best']:g}, {selection['advantage_points'][0]:+.2f} points over {selection['configured']:g})")
    # Drifts named and no head to choose: fitted on their views at once (a choice compares heads fitted on the normals alone).
    named = data.drift_feats if data.val_drift is None else None
    at_once = named if train_cfg.head == "per-location" or model.cfg.score == "nearest" else None
    thresholds = fit_score(model, train_cfg, data.feats, data.val_feats, device, fit_residual=fit_residual, drift=at_once)
    location = choose_location(model, train_cfg, data, device, synthetic, log)
    if location is not None and location["head"] == "nearest":
        model_cfg, thresholds = use_nearest_head(model, train_cfg, data.feats, data.val_feats, device)
    drift = None
    if data.val_drift is not None:  # fit_drift="auto": on the drifted views too, where the held-out normals say so
        from .drift_choice import choose_drift, why_drift

        model.head, thresholds, drift = choose_drift(model, train_cfg, data.feats, data.drift_feats, data.val_feats,
                                                     data.val_drift, synthetic, thresholds, device)
        if drift is not None:
            drift["why"] = why_drift(drift)
            log(f"score head: {drift['why']}")
    elif named is not None and at_once is None:  # the head chosen on the normals, fitted on their views too
        thresholds = fit_score(model, train_cfg, data.feats, data.val_feats, device, drift=data.drift_feats)
    calibrated = None
    if data.threshold_drift is not None:
        thresholds, calibrated = calibrate_with_drift(model, train_cfg, data.val_feats, data.threshold_drift, thresholds, device,
                                                      train_set, val_idx, synthetic)
        log(f"score head: {calibrated['why']}")
    from ..frame_quality import QUALITY_KEY, normal_ranges

    spec = preprocess_spec(model.cfg)
    quality = normal_ranges((train_set.image(i) for i in fit_idx), (spec.height, spec.width))  # what stream watches the camera against
    seconds = time.perf_counter() - t_start
    extra = {"val_images": len(val_idx), "fit_images": len(fit_idx), "loss_kind": loss_kind, "train_seconds": round(seconds, 2),
             "device": str(device), "weights_source": getattr(model.backbone, "weights_source", None),
             "anomalies": anomalies.kind if anomalies is not None else None, "epochs_run": len(history),
             **{k: history[-1].get(k) if history else None for k in ("input_following", "defect_pass_through")},
             "train_paths": [str(train_set.samples[i].path) for i in fit_idx], "score_selection": selection,
             "location_choice": location, "drift_choice": drift, **({"threshold_drift": calibrated} if calibrated else {}),
             **({QUALITY_KEY: quality} if quality else {})}
    ckpt = Checkpoint(model_cfg, train_cfg, thresholds, train_set.summary(), history, extra)
    save_checkpoint(out_dir, model.cpu(), ckpt)
    return TrainResult(model.eval(), ckpt, out_dir, seconds)


def _figures_text(figures: dict) -> str:
    f, p = figures.get("input_following"), figures.get("defect_pass_through")
    return (f" follow {f:.2f}" if f is not None else "") + (f" pass {p:.2f}" if p is not None else "")


SCORE_SELECT = ("synthetic", "none")


def check_train_choices(train_cfg: TrainConfig) -> None:
    """The named choices of a TrainConfig that no dataclass check covers, before any work is done."""
    require(train_cfg.score_select in SCORE_SELECT, f"--score-select {train_cfg.score_select!r}: choose one of {list(SCORE_SELECT)}")
    require(train_cfg.jitter_shape in JITTER_SHAPES, f"--jitter-shape {train_cfg.jitter_shape!r}: choose one of {list(JITTER_SHAPES)}")
    require(train_cfg.head in HEADS, f"--head {train_cfg.head!r}: choose one of {list(HEADS)}")
    require(train_cfg.nearest_bank >= 1, f"--nearest-bank {train_cfg.nearest_bank}: a memory bank needs at least one cell")
    check_drifts(train_cfg.fit_drift)
    threshold_drifts(train_cfg.threshold_drift)


def held_out_synthetic(model, train_cfg: TrainConfig, train_set, val_idx, device, log: Callable[[str], None] = lambda s: None):
    """The held-out normals with synthetic defects pasted on them (``head_select.synthetic_set``), made
    once for the choices that read it (the shrinkage, the per-location or nearest head), or None where
    no choice applies: another score, a head fitted on the held-out normals themselves, nothing to
    choose, or fewer than ``MIN_HELD_OUT`` of them (an image AUROC would rest on a handful of images)."""
    from .head_select import MIN_HELD_OUT, synthetic_set

    choosing = train_cfg.score_select != "none" or train_cfg.head == "auto"
    if not choosing or model.cfg.score != "mahalanobis" or train_cfg.score_fit != "fit":
        return None
    if len(val_idx) < MIN_HELD_OUT:
        log(f"score head: shrinkage {train_cfg.score_shrinkage:g} kept ({len(val_idx)} held-out normals; choosing needs "
            f"{MIN_HELD_OUT}), {'per-location' if train_cfg.head == 'auto' else train_cfg.head} head")
        return None
    return synthetic_set(model.backbone, [train_set.image(i) for i in val_idx], preprocess_spec(model.cfg), device,
                         seed=train_cfg.seed)


def select_head(model, train_cfg: TrainConfig, data: RunData, device, synthetic, fit_residual=None) -> dict | None:
    """``score_select="synthetic"``: the shrinkage that synthetic defects on the held-out normals
    support (``train.head_select``), or None where it does not apply (no synthetic set)."""
    from .head_select import select_shrinkage

    if train_cfg.score_select == "none" or synthetic is None:
        return None
    t0 = time.perf_counter()
    chosen = select_shrinkage(model, data.feats, synthetic, train_cfg.score_shrinkage, train_cfg.score_target, seed=train_cfg.seed,
                              device=device, fit_residual=fit_residual, region_shrinkage=train_cfg.region_shrinkage)
    return {**chosen, "seconds": round(time.perf_counter() - t0, 1)}


def choose_location(model, train_cfg: TrainConfig, data: RunData, device, synthetic,
                    log: Callable[[str], None] = lambda s: None) -> dict | None:
    """``head``: "nearest" swaps the head unasked; "auto" compares the fitted per-location head with a
    nearest-neighbour head on the synthetic set (``train.location_choice``); None where nothing applies."""
    from ..model.head import AnomalyHead
    from .location_choice import compare_heads, location_gain, nearest_config, per_location_settings, why
    from .memory_bank import fit_bank
    from .residual_stats import reconstruct

    if train_cfg.head == "per-location" or model.cfg.score == "nearest":
        return None
    if train_cfg.head == "nearest":
        choice = {"head": "nearest", "set_by": "user"}
    elif synthetic is None or model.cfg.score != "mahalanobis":
        return None
    else:
        t0 = time.perf_counter()
        candidate = AnomalyHead(nearest_config(model.cfg, train_cfg.nearest_bank), model.backbone.channels)
        probe = SimpleNamespace(head=candidate)
        fit_bank(probe, data.feats, device, seed=train_cfg.seed)
        choice = compare_heads(copy.deepcopy(model.head).cpu(), candidate, synthetic, reconstruct(model, synthetic.feats, device),
                               seed=train_cfg.seed)
        choice["location_gain"] = location_gain(data.feats, data.val_feats, seed=train_cfg.seed)
        choice["seconds"] = round(time.perf_counter() - t0, 1)
    choice["why"] = why(choice)
    choice["per_location"] = per_location_settings(model.cfg)
    log(f"score head: {choice['why']}")
    return choice
