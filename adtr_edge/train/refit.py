"""Refit a trained checkpoint's score head with other settings, on the normals it trained on: no training.

The transformer is untouched. The head (its per-location statistics, the regional image score, the
map's pooled part) is fitted again on the same fit normals (``split_normals`` with the checkpoint's
seed) and the threshold recalibrated on the same held-out normals, exactly as training ends
(``head_fit.fit_score``). What it is for: a head setting that normal images cannot choose, such as the
pooled map part for large faint defects (docs/benchmarks.md 1.3), tried on a user's own
labelled images in about a minute instead of a retraining, then ``adtr-edge eval NEW DATA --against OLD``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import pool_clip_for
from ..errors import AdtrError
from ..fileio import staged_folder
from ..postprocessing import Thresholds
from ..preprocessing import preprocess_spec
from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .device import resolve_device
from .features import cached_raw_features
from .head_fit import fit_score
from .loop import split_normals

# What a refit may change: fields of the model config (the head's shape) and of the train config
# (how its statistics are fitted). Everything else belongs to the trained transformer.
HEAD_MODEL_FIELDS = ("region_grid", "map_pool", "map_pool_weight", "map_pool_clip")
HEAD_TRAIN_FIELDS = ("score_shrinkage", "score_target", "region_shrinkage", "fit_drift", "threshold_drift")


@dataclass(frozen=True)
class RefitResult:
    out: Path
    checkpoint: Checkpoint
    changed: dict  # field -> (before, after), only those that differ

    @property
    def thresholds(self) -> Thresholds:
        return self.checkpoint.thresholds


def head_settings(ckpt: Checkpoint, **given) -> tuple:
    """(model config, train config, changed) with the ``given`` head settings (None = keep). Turning
    the pooled part on without naming its clip gives it the shipped clip, as ``train --map-pool`` does."""
    unknown = sorted(set(given) - set(HEAD_MODEL_FIELDS) - set(HEAD_TRAIN_FIELDS))
    if unknown:
        raise AdtrError(f"refit: {unknown} are not head settings (a refit changes only {list(HEAD_MODEL_FIELDS + HEAD_TRAIN_FIELDS)})")
    given = {k: v for k, v in given.items() if v is not None}
    cfg, tcfg = ckpt.model_config, ckpt.train_config
    clip = pool_clip_for(given.get("map_pool"), given.get("map_pool_clip"), had_pool=cfg.map_pool)
    if clip is not None:
        given["map_pool_clip"] = clip
    new_cfg = replace(cfg, **{k: v for k, v in given.items() if k in HEAD_MODEL_FIELDS})  # validates (AdtrError)
    new_tcfg = replace(tcfg, **{k: v for k, v in given.items() if k in HEAD_TRAIN_FIELDS})
    changed = {k: (getattr(cfg, k), getattr(new_cfg, k)) for k in HEAD_MODEL_FIELDS if getattr(cfg, k) != getattr(new_cfg, k)}
    changed |= {k: (getattr(tcfg, k), getattr(new_tcfg, k)) for k in HEAD_TRAIN_FIELDS if getattr(tcfg, k) != getattr(new_tcfg, k)}
    return new_cfg, new_tcfg, changed


def refit_head(checkpoint: str | Path, data: str | Path, out: str | Path, *, feature_cache: str | Path | None = None,
               device: str = "auto", force: bool = False, **settings) -> RefitResult:
    """Write ``out``: ``checkpoint`` with its head refitted under ``settings`` (``head_settings``).

    ``data`` must hold the training images the checkpoint was trained on (checked by their
    fingerprint), so that the fit and held-out normals are the same ones. ``out`` appears only when
    complete; an existing ``out`` is replaced only with ``force``."""
    from ..data.camera import check_drifts, threshold_drifts

    checkpoint, out = Path(checkpoint), Path(out)
    check_out(checkpoint, out, force)
    check_drifts(settings.get("fit_drift") or "none")
    threshold_drifts(settings.get("threshold_drift") or "none")
    source = RefitSource.load(checkpoint, data, feature_cache=feature_cache, device=device)
    model, new, changed = source.refit(**settings)
    with staged_folder(out) as tmp:
        save_checkpoint(tmp, model.cpu(), new)
    return RefitResult(out, new, changed)


def check_out(checkpoint: Path, out: Path, force: bool) -> None:
    """Refuse to write over the checkpoint itself, or over an existing folder without ``force``."""
    if out.resolve() == checkpoint.resolve():
        raise AdtrError(f"--out {out}: is the checkpoint itself; write the refitted head to another folder")
    if out.exists() and not force:
        raise AdtrError(f"{out}: already exists (pass --force to replace it)")


@dataclass
class RefitSource:
    """A checkpoint and the standardised features of the normals it was fitted and calibrated on,
    loaded once: every ``refit`` is a new head on the same transformer (``choose_head`` refits
    several candidates from one source)."""

    checkpoint: Path
    model: object
    ckpt: Checkpoint
    fit_feats: object
    val_feats: object
    device: object
    train_set: object = None  # the dataset's training split, for the synthetic set of --head auto
    val_idx: list = None  # its held-out normals
    fit_idx: list = None  # its fit normals
    feature_cache: object = None
    drift_feats: dict = None  # drift name -> standardised features of the fit normals' drifted views, made on first use
    synthetic_sets: dict = field(default_factory=dict)  # seed -> the held-out normals with synthetic defects, made on first use

    @classmethod
    def load(cls, checkpoint: str | Path, data: str | Path, *, feature_cache: str | Path | None = None,
             device: str = "auto") -> "RefitSource":
        from ..data.datasets import load_dataset

        checkpoint = Path(checkpoint)
        model, ckpt = load_checkpoint(checkpoint)
        if ckpt.model_config.score not in ("mahalanobis", "nearest"):
            raise AdtrError(f"{checkpoint}: its head scores '{ckpt.model_config.score}'; only a mahalanobis or nearest head has statistics to refit")
        train_set = load_dataset(data, "train")
        trained_on = (ckpt.data_summary or {}).get("files_sha256")
        if trained_on and train_set.summary()["files_sha256"] != trained_on:
            raise AdtrError(f"{data}: its training images are not the ones {checkpoint} was trained on (their fingerprints "
                            "differ); refit on the same dataset folder, so that the head sees the same normals")
        dev = resolve_device(device)
        model.to(dev).eval()
        cfg = ckpt.model_config
        spec = preprocess_spec(cfg)
        fit_idx, val_idx = split_normals(train_set, ckpt.train_config)
        feats = [model.backbone.standardize(cached_raw_features(model.backbone, train_set, idx, spec, cfg, cache_dir=feature_cache,
                                                                device=dev)) for idx in (fit_idx, val_idx)]
        return cls(checkpoint, model, ckpt, feats[0], feats[1], dev, train_set, val_idx, fit_idx, feature_cache, {})

    def drifted(self, fit_drift: str):
        """The standardised features of the fit normals' drifted views, one per image and drift in
        ``fit_drift`` (``AUTO_DRIFTS`` for "auto"); None for none."""
        import torch

        from ..data.camera import check_drifts
        from .features import drift_features

        drifts = check_drifts(fit_drift)
        for d in drifts:
            if d not in self.drift_feats:
                raw = drift_features(self.model.backbone, self.train_set, self.fit_idx, preprocess_spec(self.ckpt.model_config),
                                     self.ckpt.model_config, [d], cache_dir=self.feature_cache, device=self.device)
                self.drift_feats[d] = self.model.backbone.standardize(raw.to(self.device))
        return torch.cat([self.drift_feats[d] for d in drifts]) if drifts else None

    def held_out_drift(self, drifts=None):
        """The held-out normals' drifted views, standardised: of ``drifts`` (default ``AUTO_DRIFTS``, what
        ``--fit-drift auto`` judges on; ``--threshold-drift`` names its own); None for none."""
        import torch

        from ..data.camera import AUTO_DRIFTS
        from .features import drift_features

        drifts = AUTO_DRIFTS if drifts is None else tuple(drifts)
        for d in drifts:
            if ("held-out", d) not in self.drift_feats:
                raw = drift_features(self.model.backbone, self.train_set, self.val_idx, preprocess_spec(self.ckpt.model_config),
                                     self.ckpt.model_config, [d], cache_dir=self.feature_cache, device=self.device)
                self.drift_feats[("held-out", d)] = self.model.backbone.standardize(raw.to(self.device))
        return torch.cat([self.drift_feats[("held-out", d)] for d in drifts]) if drifts else None

    def synthetic(self, seed: int):
        """The held-out normals with synthetic defects pasted on them (``head_select.synthetic_set``),
        made once for the choices and costs that read it; None for fewer than ``MIN_HELD_OUT``."""
        from .head_select import MIN_HELD_OUT, synthetic_set

        if seed not in self.synthetic_sets and len(self.val_idx) >= MIN_HELD_OUT:
            self.synthetic_sets[seed] = synthetic_set(
                self.model.backbone, [self.train_set.image(i) for i in self.val_idx], preprocess_spec(self.ckpt.model_config),
                self.device, seed=seed)
        return self.synthetic_sets.get(seed)

    def _drift(self, model, tcfg, thresholds) -> tuple:
        """``--fit-drift auto`` on the head just fitted on the normals alone (``train.drift_choice``)."""
        from .drift_choice import choose_drift, why_drift

        model.head, thresholds, choice = choose_drift(model, tcfg, self.fit_feats, self.drifted("auto"), self.val_feats, self.held_out_drift(),
                                                      self.synthetic(tcfg.seed), thresholds, self.device)
        if choice is None:
            raise AdtrError(f"--fit-drift auto: {len(self.val_idx)} held-out normals, too few to choose from (name the drifts, or none)")
        choice["why"] = why_drift(choice)
        return thresholds, choice

    def refit(self, **settings) -> tuple:
        """(the source's model, now with a head refitted under ``settings``, its checkpoint record,
        changed). The transformer is untouched; the head is replaced (so the model carries the last
        refit's head) and the threshold recalibrated on the same held-out normals."""
        from ..model.head import AnomalyHead

        head, bank = settings.pop("head", None), settings.pop("nearest_bank", None)
        cfg, tcfg, changed = head_settings(self.ckpt, **settings)
        if bank is not None:
            tcfg = replace(tcfg, nearest_bank=int(bank))
        if head is not None:
            tcfg = replace(tcfg, head=head)
        if head is not None and cfg.score == "nearest":  # a head to fit or choose anew: from the per-location one
            from ..config import PRESETS
            from .location_choice import per_location_config

            cfg = per_location_config(cfg, self.ckpt.extra.get("location_choice"), PRESETS.get(tcfg.preset))
            if head == "per-location":
                changed["score"] = ("nearest", cfg.score)
        model = self.model
        model.cfg, model.head = cfg, AnomalyHead(cfg, model.backbone.channels).to(self.device)
        named = None if tcfg.fit_drift in ("none", "auto") else self.drifted(tcfg.fit_drift)
        choosing = head not in (None, "per-location")  # the heads are compared as fitted on the normals alone
        # --head nearest replaces the per-location head unasked, so fitting that head first would be thrown away.
        thresholds = None if head == "nearest" else fit_score(model, tcfg, self.fit_feats, self.val_feats, self.device,
                                                               drift=None if choosing else named)
        extra = {**self.ckpt.extra, "refit": {"from": str(self.checkpoint)}}
        if head == "per-location":
            extra.pop("location_choice", None)  # the user's choice now, not a measured one
        if choosing:
            cfg, thresholds, extra["location_choice"] = self._location(model, tcfg, cfg, thresholds)
            if cfg.score != self.ckpt.model_config.score:
                changed["score"] = (self.ckpt.model_config.score, cfg.score)
            else:
                changed.pop("score", None)
        if tcfg.fit_drift == "auto":
            thresholds, extra["drift_choice"] = self._drift(model, tcfg, thresholds)
        elif named is not None and choosing:  # the head chosen on the normals, fitted on their drifted views too
            thresholds = fit_score(model, tcfg, self.fit_feats, self.val_feats, self.device, drift=named)
        from ..data.camera import threshold_drifts
        from .head_fit import calibrate_with_drift

        extra.pop("threshold_drift", None)  # the source's record, if any, describes its threshold, not this one
        drifts = threshold_drifts(tcfg.threshold_drift)
        if drifts:
            thresholds, extra["threshold_drift"] = calibrate_with_drift(model, tcfg, self.val_feats, self.held_out_drift(drifts), thresholds,
                                                                        self.device, self.train_set, self.val_idx, self.synthetic(tcfg.seed))
        extra["refit"]["changed"] = {k: list(v) for k, v in changed.items()}
        return model, replace(self.ckpt, model_config=cfg, train_config=tcfg, thresholds=thresholds, extra=extra), changed

    def _location(self, model, tcfg, cfg, thresholds) -> tuple:
        """``--head nearest`` or ``auto``, as training decides it (``loop.choose_location``), on the same
        held-out normals: (model config, thresholds, the decision)."""
        from types import SimpleNamespace

        from .head_fit import use_nearest_head
        from .loop import choose_location, held_out_synthetic

        synthetic = held_out_synthetic(model, tcfg, self.train_set, self.val_idx, self.device) if tcfg.head == "auto" else None
        data = SimpleNamespace(feats=self.fit_feats, val_feats=self.val_feats)
        choice = choose_location(model, tcfg, data, self.device, synthetic)
        if choice is None:
            raise AdtrError(f"--head auto: {len(self.val_idx)} held-out normals, too few to choose from (keep the head, or --head nearest)")
        if choice["head"] == "nearest":
            cfg, thresholds = use_nearest_head(model, tcfg, self.fit_feats, self.val_feats, self.device)
        return cfg, thresholds, choice
