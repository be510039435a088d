"""CLI commands of the training area: ``train``, ``refit-head`` and ``eval`` (the metrics, their
pictures and the robustness report), registered by ``register(app)``."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..config_file import command_line_wins, config_option
from ..errors import AdtrError

# train --help groups its options into these panels (typer's rich_help_panel).
DATA, MODEL, TRAINING, SCORE_HEAD, ADTR_PLUS, OUTPUT = "Data", "Model", "Training", "Score head", "ADTR+ (anomalies)", "Output"


def _parse_size(text: Optional[str]) -> Optional[tuple]:
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().replace("x", ",").split(",")]
    except ValueError:
        raise AdtrError(f"--input-size {text!r}: use N or HxW, e.g. 256 or 256x320") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise AdtrError(f"--input-size {text!r}: use N or HxW, e.g. 256 or 256x320")
    return tuple(parts)


def _pool_clip(map_pool: Optional[int], clip: Optional[float]) -> Optional[float]:
    """``--map-pool-clip``, or the shipped clip wherever ``--map-pool`` turns the pooled part on."""
    from ..config import pool_clip_for

    return pool_clip_for(map_pool, clip)


def _parse_ints(text: Optional[str], option: str) -> Optional[tuple]:
    if text is None:
        return None
    try:
        return tuple(int(p) for p in text.split(","))
    except ValueError:
        raise AdtrError(f"{option} {text!r}: use comma-separated integers, e.g. 1,2,3") from None


def register(app: typer.Typer) -> None:
    @app.command()
    def train(
        ctx: typer.Context,
        data: Path = typer.Argument(..., help="Dataset: an MVTec-AD category folder (train/good, test/...) or a folder of normal images.", rich_help_panel=DATA),
        config: Optional[Path] = config_option(),
        out: Path = typer.Option(Path("runs/model"), "--out", "-o", help="Checkpoint folder to write (safetensors + JSON).", rich_help_panel=OUTPUT),
        preset: str = typer.Option("default", rich_help_panel=MODEL,
                                   help="Recipe: default (Lite2, 2+2 layers, ~15 CPU min), fast (Lite0, 224 px, 1+1: half its time), paper (500 epochs, lr 1e-4, step decay)."),
        backbone: Optional[str] = typer.Option(None, rich_help_panel=MODEL,
                                               help="Backbone (default: the preset's): tf_efficientnet_lite0, tf_efficientnet_lite2 (bundled weights), efficientnet_b4 (--weights)."),
        weights: Optional[Path] = typer.Option(None, help="ImageNet weight file for the backbone (.safetensors or .pth state dict).", rich_help_panel=MODEL),
        input_size: Optional[str] = typer.Option(None, help="Model input size, N or HxW (multiple of 16). Default: the preset's (256; fast 224).", rich_help_panel=MODEL),
        stages: Optional[str] = typer.Option(None, help="Backbone stages to use, e.g. 1,2,3 (Lite0 default: strides 4/8/16).", rich_help_panel=MODEL),
        epochs: Optional[int] = typer.Option(None, help="Training epochs (default from the preset).", rich_help_panel=TRAINING),
        batch_size: Optional[int] = typer.Option(None, help="Batch size.", rich_help_panel=TRAINING),
        lr: Optional[float] = typer.Option(None, help="AdamW learning rate.", rich_help_panel=TRAINING),
        encoder_layers: Optional[int] = typer.Option(None, help="Transformer encoder layers (paper: 4).", rich_help_panel=MODEL),
        decoder_layers: Optional[int] = typer.Option(None, help="Transformer decoder layers (paper: 4).", rich_help_panel=MODEL),
        d_model: Optional[int] = typer.Option(None, help="Transformer width (paper: 256).", rich_help_panel=MODEL),
        jitter: Optional[float] = typer.Option(None, help="Feature-jitter noise on the encoder input (std as a share of each token's RMS).", rich_help_panel=TRAINING),
        jitter_shape: Optional[str] = typer.Option(None, rich_help_panel=TRAINING,
                                                   help="isotropic (UniAD's) or covariance: the jitter shaped like each location's normal variation, same energy."),
        score: Optional[str] = typer.Option(None, help="Residual score: mahalanobis (per-location statistics of normal residuals) or l2.", rich_help_panel=SCORE_HEAD),
        score_select: Optional[str] = typer.Option(None, rich_help_panel=SCORE_HEAD,
                                                   help="synthetic (default): move the head's shrinkage when synthetic defects on held-out normals clearly favour another; none."),
        head: Optional[str] = typer.Option(None, help="auto (default): a location-free nearest-neighbour head where synthetic defects on "
                                           "held-out normals clearly favour it (parts that move); per-location; nearest.", rich_help_panel=SCORE_HEAD),
        nearest_bank: Optional[int] = typer.Option(None, help="Cells in the nearest head's memory bank (a greedy coreset of the normals'; default 4096).", rich_help_panel=SCORE_HEAD),
        fit_drift: Optional[str] = typer.Option(None, rich_help_panel=SCORE_HEAD,
                                                help="Also fit the head on drifted views of the fit normals, so that a change of light, focus, stream "
                                                     "quality or camera pose is not an alarm: comma-separated from light, focus, compression, pose; "
                                                     "auto (light, focus, compression where held-out normals say so); or none."),
        threshold_drift: Optional[str] = typer.Option(None, rich_help_panel=SCORE_HEAD,
                                                      help="Calibrate the threshold on drifted views of the held-out normals too, so that these "
                                                           "drifts do not stop the line (the faintest defects may pass): comma-separated from "
                                                           "light, focus, compression, pose; or none (default)."),
        normalize_exposure: Optional[bool] = typer.Option(None, "--normalize-exposure/--no-normalize-exposure", rich_help_panel=MODEL,
                                                          help="Bring every frame's mean grey level to the normals' median, in the graph, before "
                                                               "the backbone: exposure and lamp drift stop moving the features (default: off)."),
        region_grid: Optional[int] = typer.Option(None, rich_help_panel=SCORE_HEAD,
                                                  help="Image score: add the residual averaged on G x G regions (default, fast: 4; 0 = the map alone). Needs --score mahalanobis."),
        map_pool: Optional[int] = typer.Option(None, rich_help_panel=SCORE_HEAD,
                                               help="Map: add the whitened residual averaged over K x K neighbours, K odd (default 0: per location; 5 for large faint defects)."),
        map_pool_clip: Optional[float] = typer.Option(None, rich_help_panel=SCORE_HEAD,
                                                      help="With --map-pool: clip each cell to this quantile of normal cells' norms before the average (default 0.99; 0 = no clip)."),
        time_budget: Optional[float] = typer.Option(None, help="Seconds of training (features excluded): the epochs are fitted to it after the first.", rich_help_panel=TRAINING),
        augment: Optional[str] = typer.Option(None, rich_help_panel=TRAINING,
                                              help="Extra views of the normals the transformer trains on (textures): none, flip (h+v) or d4 (flips, 90-degree turns); cached once."),
        threshold_quantile: Optional[float] = typer.Option(None, help="Quantile of held-out normal scores used as threshold (default 0.99).", rich_help_panel=SCORE_HEAD),
        device: str = typer.Option("auto", help="auto (GPU when present), cpu or cuda.", rich_help_panel=TRAINING),
        bf16: bool = typer.Option(False, help="bf16 autocast (about 1.2x faster on recent CPUs, same accuracy).", rich_help_panel=TRAINING),
        seed: int = typer.Option(0, help="Random seed.", rich_help_panel=TRAINING),
        resume: bool = typer.Option(False, help="Continue an interrupted run in --out.", rich_help_panel=TRAINING),
        synthetic: Optional[str] = typer.Option(None, help="ADTR+: synthetic anomalies, 'confetti', 'patch' or 'scar' (pixel-labelled).", rich_help_panel=ADTR_PLUS),
        synthetic_count: int = typer.Option(0, help="How many synthetic anomalous images to make (default: as many as normal images).", rich_help_panel=ADTR_PLUS),
        synthetic_strength: float = typer.Option(1.0, help="Strength of synthetic anomalies (0-1].", rich_help_panel=ADTR_PLUS),
        external_anomalies: Optional[Path] = typer.Option(None, help="ADTR+: folder of unrelated images used as image-level anomalies (outlier exposure).", rich_help_panel=ADTR_PLUS),
        labelled_anomalies: Optional[Path] = typer.Option(None, help="ADTR+: folder (or MVTec-style subset) of real anomalies; masks give pixel labels.", rich_help_panel=ADTR_PLUS),
        labelled_masks: Optional[Path] = typer.Option(None, help="Mask folder for --labelled-anomalies when masks are kept apart.", rich_help_panel=ADTR_PLUS),
        loss: str = typer.Option("auto", help="auto (from the data), normal, pixel or image.", rich_help_panel=ADTR_PLUS),
        alpha: Optional[float] = typer.Option(None, help="Weight of the anomaly term (paper: 0.003).", rich_help_panel=ADTR_PLUS),
        init_from: Optional[Path] = typer.Option(None, help="Fine-tune this normal-only checkpoint with the anomaly losses (the paper's ADTR+ schedule).", rich_help_panel=ADTR_PLUS),
        feature_cache: Optional[Path] = typer.Option(None, help="Folder to cache backbone features in (reused across runs on the same data).", rich_help_panel=DATA),
        progress: bool = typer.Option(True, help="Show progress bars.", rich_help_panel=OUTPUT),
    ):
        """Train ADTR on normal images (and optionally on anomalies, ADTR+). Writes a checkpoint folder."""
        from ..config import ModelConfig, TrainConfig
        from ..data.datasets import load_dataset
        from ..config import apply_preset, preset_backbone
        from .loop import train_model
        from .sources import build_anomaly_pool

        m_over = {"input_size": _parse_size(input_size), "stages": _parse_ints(stages, "--stages"),
                  "num_encoder_layers": encoder_layers, "num_decoder_layers": decoder_layers, "d_model": d_model, "score": score,
                  "region_grid": region_grid, "map_pool": map_pool, "map_pool_clip": _pool_clip(map_pool, map_pool_clip)}
        t_over = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "feature_jitter": jitter, "jitter_shape": jitter_shape, "threshold_quantile": threshold_quantile,
                  "time_budget": time_budget, "augment": augment, "score_select": score_select, "head": head, "nearest_bank": nearest_bank,
                  "fit_drift": fit_drift, "threshold_drift": threshold_drift, "normalize_exposure": normalize_exposure, "device": device,
                  "bf16": bf16, "seed": seed, "loss": loss, "alpha": alpha}
        m_kw, t_kw = apply_preset(preset, m_over, t_over)
        model_cfg = ModelConfig.for_backbone(backbone or preset_backbone(preset), **m_kw)
        train_cfg = TrainConfig(**t_kw)
        train_set = load_dataset(data, "train")
        # One anomaly source per run: one on the command line replaces the config file's.
        src = command_line_wins(ctx, {"synthetic": synthetic, "external_anomalies": external_anomalies, "labelled_anomalies": labelled_anomalies})
        pool = build_anomaly_pool(train_set, synthetic=src["synthetic"], count=synthetic_count, strength=synthetic_strength,
                                  external=src["external_anomalies"], labelled=src["labelled_anomalies"], labelled_masks=labelled_masks, seed=seed)
        typer.echo(f"training on {len(train_set)} images from {data} -> {out} (preset {preset}, {model_cfg.backbone}, "
                   f"{model_cfg.input_size[0]}x{model_cfg.input_size[1]}, {train_cfg.epochs} epochs"
                   + (f", anomalies: {pool.kind} x{len(pool.images)}" if pool else "") + ")")
        if not train_cfg.normalize_exposure and init_from is None:
            from ..data.datasets import exposure_hint

            hint = exposure_hint(train_set.exposure_spread())
            if hint:
                typer.echo(hint)
        result = train_model(train_set, model_cfg, train_cfg, out, weights=str(weights) if weights else None, anomalies=pool,
                             init_from=init_from, resume=resume, progress=progress, log=typer.echo,
                             feature_cache=feature_cache)
        t = result.checkpoint.thresholds
        extra = result.checkpoint.extra
        typer.echo(f"done in {result.seconds:.0f} s: threshold {t.threshold:.4f} ({t.method}), checkpoint {out}")
        typer.echo(_collapse_text(extra))

    @app.command("refit-head")
    def refit_head_cmd(
        checkpoint: Path = typer.Argument(..., help="Checkpoint folder (adtr-edge train) with a mahalanobis head."),
        data: Path = typer.Argument(..., help="The dataset it was trained on (its train split: the same fit and held-out normals)."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for the checkpoint with the refitted head."),
        map_pool: Optional[str] = typer.Option(None, help="The map's pooled part: K odd (5 for large faint defects), 0 = off, or auto: "
                                               "chosen on DATA's labelled test defects, reported on the rest (default: the checkpoint's)."),
        map_pool_clip: Optional[float] = typer.Option(None, help="Its cells' clip quantile, 0 = none (default: the checkpoint's; 0.99 where --map-pool turns it on)."),
        choice_fraction: float = typer.Option(0.3, help="With --map-pool auto: the share of the test split that chooses (the rest reports)."),
        head: Optional[str] = typer.Option(None, help="per-location (as trained), nearest (location-free), or auto: as training decides it, "
                                           "on the same held-out normals with synthetic defects."),
        nearest_bank: Optional[int] = typer.Option(None, help="Cells in the nearest head's memory bank (default: the checkpoint's, 4096)."),
        fit_drift: Optional[str] = typer.Option(None, help="Also fit the head on drifted views of the fit normals: comma-separated from "
                                                "light, focus, compression, pose; auto; or none (default: the checkpoint's)."),
        threshold_drift: Optional[str] = typer.Option(None, help="Calibrate the threshold on drifted views of the held-out normals too: "
                                                      "comma-separated from light, focus, compression, pose; or none (default: the checkpoint's)."),
        region_grid: Optional[int] = typer.Option(None, help="The regional image score's grid G, 0 = the map alone (default: the checkpoint's)."),
        shrinkage: Optional[float] = typer.Option(None, help="The per-location covariance's shrinkage (default: the checkpoint's, as training chose it)."),
        feature_cache: Optional[Path] = typer.Option(None, help="Folder of cached backbone features (as in train)."),
        device: str = typer.Option("auto", help="auto (GPU when present), cpu or cuda."),
        force: bool = typer.Option(False, "--force", help="Replace an existing --out."),
    ):
        """Refit a checkpoint's score head with other settings, no training (about a minute on a 2-core CPU); compare with eval NEW DATA --against OLD."""
        from .refit import refit_head

        if map_pool is not None and map_pool.strip().lower() == "auto":
            if map_pool_clip is not None:
                raise AdtrError("--map-pool-clip: not with --map-pool auto, which gives every pooled candidate the shipped clip")
            return _choose_map_pool(checkpoint, data, out, choice_fraction, feature_cache=feature_cache, device=device, force=force,
                                    region_grid=region_grid, score_shrinkage=shrinkage)
        try:
            pool = None if map_pool is None else int(map_pool)
        except ValueError:
            raise AdtrError(f"--map-pool {map_pool!r}: give an odd window K (e.g. 5), 0 for none, or auto") from None
        from .location_choice import HEADS

        if head is not None and head not in HEADS:
            raise AdtrError(f"--head {head!r}: choose one of {list(HEADS)}")
        res = refit_head(checkpoint, data, out, feature_cache=feature_cache, device=device, force=force, map_pool=pool,
                         map_pool_clip=map_pool_clip, region_grid=region_grid, score_shrinkage=shrinkage, head=head,
                         nearest_bank=nearest_bank, fit_drift=fit_drift, threshold_drift=threshold_drift)
        location = res.checkpoint.extra.get("location_choice") if head not in (None, "per-location") else None
        if location:
            typer.echo(f"score head: {location['why']}")
        if res.checkpoint.extra.get("drift_choice") and fit_drift == "auto":
            typer.echo(f"score head: {res.checkpoint.extra['drift_choice']['why']}")
        if res.checkpoint.extra.get("threshold_drift"):
            typer.echo(f"score head: {res.checkpoint.extra['threshold_drift']['why']}")
        changes = ", ".join(f"{k} {a} -> {b}" for k, (a, b) in res.changed.items()) or "nothing changed (refitted as trained)"
        typer.echo(f"wrote {res.out}: {changes}; threshold {res.thresholds.threshold:.4f}")
        typer.echo(f"compare on labelled images: adtr-edge eval {res.out} DATA --against {checkpoint}")

    @app.command("eval")
    def eval_cmd(
        model: Path = typer.Argument(..., help="Checkpoint folder (adtr-edge train), or a model folder: export, Q/DQ INT8 or engine folder."),
        data: Path = typer.Argument(..., help="Dataset with a test split (MVTec-AD layout: test/<defect>, ground_truth/<defect>)."),
        out: Path = typer.Option(Path("runs/eval"), "--out", "-o", help="Folder for report.json and pictures (ROC, histogram, overlays)."),
        device: str = typer.Option("auto", help="Checkpoints: auto, cpu or cuda."),
        backend: str = typer.Option("auto", "--backend", help="Model folders: auto, onnxruntime or tensorrt."),
        against: Optional[Path] = typer.Option(None, "--against", help="A reference model (checkpoint or folder) scored on the same images: "
                                               "each metric's difference with its 95% paired interval, e.g. an INT8 folder against its FP32 export."),
        pictures: bool = typer.Option(True, help="Write ROC curve, score histogram and heat-map overlays."),
        progress: bool = typer.Option(True, help="Show progress bars."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Resamples for 95% confidence intervals of the metrics (0: none)."),
        perturb: bool = typer.Option(False, "--perturb", help="Robustness report: the test set shifted, rotated, brighter, darker, blurred and "
                                     "JPEG-compressed, two strengths each: image AUROC and false alarms at the threshold (checkpoints: "
                                     "and the baselines on the same features). Writes robustness.json/.md."),
        feature_cache: Optional[Path] = typer.Option(None, help="With --perturb on a checkpoint: folder of cached backbone features (as in train)."),
        split: str = typer.Option("all", "--split", help="Score all of the test split, or its validation part (val: 30% of each defect type "
                                  "and of the good images, by a hash of each file's name) for choices, or the rest (test) for reporting."),
    ):
        """Evaluate a checkpoint or a deployable folder: image AUROC, pixel AUROC, AUPRO, F1-max (overall and per defect) and pictures."""
        from ..data.datasets import load_dataset, validation_split
        from ..evaluation.evaluate import finish_report

        if bootstrap < 0 or 0 < bootstrap < 10:
            raise AdtrError(f"--bootstrap {bootstrap}: use 0 (no intervals) or at least 10 resamples")
        if against is not None and bootstrap == 0:
            raise AdtrError("--against compares with bootstrap intervals; give --bootstrap N (N >= 10)")
        if split not in ("all", "val", "test"):
            raise AdtrError(f"--split {split!r}: choose all, val or test")
        test = load_dataset(data, "test")
        if split != "all":
            test = test.subset(validation_split(test)[0 if split == "val" else 1])
        scored, spec, thresholds, extra = _score_model(model, test, device=device, backend=backend, progress=progress)
        reference = None
        if against is not None:
            reference = (str(against), _score_model(against, test, device=device, backend=backend, progress=progress)[0])
        report = finish_report(scored, test, spec, thresholds, out, name="ADTR", pictures=pictures, resamples=bootstrap,
                               reference=reference, extra=extra | {"dataset": test.summary(), "split": split})
        _print_metrics(report)
        for decided in ("location", "drift"):  # the head's choices training made, and why
            choice = (report.get("score_head") or {}).get(decided)
            if choice:
                typer.echo(f"score head: {choice['why']}")
        drifts = (report.get("score_head") or {}).get("threshold_drift")
        if drifts:
            typer.echo(f"threshold: calibrated on the held-out normals and their drifted views (train --threshold-drift): {drifts['why']}")
        if spec.exposure_reference:
            typer.echo(f"exposure: every frame brought to a mean grey level of {spec.exposure_reference:g} before the backbone "
                       "(train --normalize-exposure)")
        typer.echo(f"report: {out / 'report.json'}")
        if perturb:
            _robustness(model, data, test, out, device=device, backend=backend, thresholds=thresholds, spec=spec,
                        feature_cache=feature_cache, pictures=pictures)


def _choose_map_pool(checkpoint: Path, data: Path, out: Path, fraction: float, **kwargs) -> None:
    """refit-head --map-pool auto: print the candidates on the choice part, the decision and the held-out figures."""
    from .choose_head import choose_map_pool

    typer.echo(f"choosing the map's pooled part on {fraction:.0%} of {data}'s test split (the rest reports):")
    res = choose_map_pool(checkpoint, data, out, fraction=fraction, log=typer.echo, **kwargs)
    r = res.record
    if r["best"] == r["current"]:
        verdict = f"keeps map_pool {r['current']} (no candidate is better on the choice part)"
    else:
        a = r["advantage_points"]
        verdict = (f"map_pool {r['best']} is ahead of {r['current']} by {a[0]:+.2f} points (95% {a[1]:+.2f} to {a[2]:+.2f}), in "
                   f"{r['best_ahead']:.1%} of resamples (needs {r['confidence']:.1%}): "
                   + (f"chose map_pool {r['chosen']}" if r["chosen"] != r["current"] else f"keeps map_pool {r['current']}"))
    typer.echo(verdict)
    held = r["held_out"]
    if held["figures"] is None:
        typer.echo(f"held-out part: {held['images']} images, no figures ({held['why']})")
    else:
        f, d = held["figures"], held["against_original"]
        typer.echo(f"held-out part ({held['defects']} defects, {held['good']} good): "
                   + ", ".join(f"{m} {f['chosen'][m]:.4f} ({d[m]['difference'][0]:+.4f}, 95% {d[m]['difference'][1]:+.4f} "
                               f"to {d[m]['difference'][2]:+.4f} vs the original)" for m in f["chosen"]))
    typer.echo(f"wrote {res.out}; threshold {res.checkpoint.thresholds.threshold:.4f}")


def _robustness(path: Path, data: Path, test, out: Path, *, device: str, backend: str, thresholds, spec, feature_cache,
                pictures: bool = True) -> None:
    """eval --perturb: the robustness report of a checkpoint (with the baselines) or a model folder (its backend)."""
    from ..evaluation.evaluate import backend_predictor, score_imageset
    from ..fileio import write_json_atomic, write_text_atomic
    from ..folder import CHECKPOINT, read_model_folder
    from ..evaluation.robustness import checkpoint_scorer, report_table, robustness_report

    typer.echo("robustness: the test set under each perturbation (AUROC / false-alarm rate on normals at the threshold)")
    folder = read_model_folder(path, purpose="eval")
    if folder.kind == CHECKPOINT:
        score, limits = checkpoint_scorer(path, data, device=device, feature_cache=feature_cache)
        report = robustness_report(score, test, limits, log=typer.echo)
    else:
        from ..runtime.loading import load_backend

        with load_backend(folder.path, backend) as runner:
            predict = backend_predictor(runner)
            report = robustness_report(lambda images: {"ADTR": score_imageset(predict, images, spec, progress=False).scores}, test,
                                       {"ADTR": thresholds.threshold if thresholds else None}, log=typer.echo)
    if "gaussian" in report["conditions"][0]:
        from ..evaluation.robustness import above_baseline

        typer.echo(above_baseline(report))
        if folder.kind == CHECKPOINT:
            from ..evaluation.robustness import drift_advice
            from .checkpoint import read_checkpoint_meta

            advice = drift_advice(report, read_checkpoint_meta(path), str(path), str(data))
            if advice:
                typer.echo(advice)
    write_json_atomic(out / "robustness.json", report)
    write_text_atomic(out / "robustness.md", report_table(report) + "\n")
    typer.echo(f"robustness report: {out / 'robustness.md'}")
    if pictures:
        from ..evaluation.plots import robustness_plot

        typer.echo(f"robustness picture: {robustness_plot(report, out / 'robustness.png')}")


def _score_model(path: Path, test, *, device: str, backend: str, progress: bool):
    """(scored, preprocessing, thresholds, report extras) of a checkpoint (PyTorch) or a model folder
    (its runtime backend, as ``stream`` would run it)."""
    from ..evaluation.evaluate import backend_predictor, score_checkpoint, score_imageset
    from ..folder import CHECKPOINT, read_model_folder

    folder = read_model_folder(path, purpose="eval")
    if folder.kind == CHECKPOINT:
        return score_checkpoint(path, test, device=device, progress=progress)
    from ..runtime.loading import load_backend

    with load_backend(folder.path, backend) as runner:
        scored = score_imageset(backend_predictor(runner), test, folder.meta.preprocess, progress=progress)
        extra = {"model_folder": str(path), "kind": folder.kind, "backend": runner.name, "score_head": folder.meta.raw.get("score_head")}
    return scored, folder.meta.preprocess, folder.meta.thresholds, extra


def _collapse_text(figures: dict) -> str:
    """One line for the two collapse figures (adtr_edge.train.diagnostics)."""
    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}"

    return (f"held-out normals: input following {fmt(figures.get('input_following'))} (0 = outputs the mean), "
            f"defect pass-through {fmt(figures.get('defect_pass_through'))} (1 = copies defects)")


def _print_metrics(report: dict) -> None:
    from ..evaluation.significance import METRIC_NAMES

    def fmt(v):
        return "n/a" if v is None else f"{v:.4f}"

    ci = report.get("intervals") or {}

    def with_ci(key):  # "0.9600 [0.9390, 0.9770]": how far this test set pins the figure down
        return fmt(report.get(key)) + (f" [{ci[key][0]:.4f}, {ci[key][1]:.4f}]" if key in ci else "")

    typer.echo(f"image AUROC {with_ci('image_auroc')}  pixel AUROC {with_ci('pixel_auroc')}  "
               f"AUPRO {with_ci('aupro')}  F1-max {fmt(report.get('f1_max'))}"
               + (f"  ([low, high]: 95% bootstrap intervals, {ci['resamples']} resamples)" if ci else ""))
    vs = report.get("against")
    if vs:
        diffs = [f"{name} {100 * vs[key]['difference'][0]:+.2f} [{100 * vs[key]['difference'][1]:+.2f}, {100 * vs[key]['difference'][2]:+.2f}]"
                 for key, name in METRIC_NAMES.items() if key in vs]
        typer.echo(f"against {vs['model']}, points [95% paired interval]: " + "  ".join(diffs))
    at = report.get("at_threshold")
    if at and at.get("threshold") is not None:  # what the line will do: AUROC ranks, the threshold decides
        def share(k, n):
            return f"{k / n:.1%} ({k} of {n})" if n else "n/a"

        typer.echo(f"at the threshold {at['threshold']:.4g}: flags {share(at['tp'], at['tp'] + at['fn'])} of the defective images "
                   f"and {share(at['fp'], at['fp'] + at['tn'])} of the normal ones"
                   + (f" (F1-max's threshold: {report['f1_threshold']:.4g})" if report.get("f1_threshold") is not None else ""))
    for defect, m in sorted(report.get("per_defect", {}).items()):
        typer.echo(f"  {defect:<14} image {fmt(m.get('image_auroc'))}  pixel {fmt(m.get('pixel_auroc'))}  AUPRO {fmt(m.get('aupro'))}  n={m.get('n')}")
    if report.get("collapse"):
        typer.echo(_collapse_text(report["collapse"]))
