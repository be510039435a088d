"""Accuracy of ADTR next to the training-free baselines on the same features, against training time.

    python benchmarks/accuracy.py --data ../shared/data/magnetic_tile --out runs/bench-mt \
        --recipes default,fast --anomalies none,confetti,patch,external,labelled

Choices are made on a validation split of the test set (``--split val``: 30% of each defect type and
of the good images, by a hash of the file name, ``adtr_edge.data.datasets.validation_split``); the
figures to report come from the untouched rest (``--split test``). Variants of a recipe are given with
``--set key=value`` (any ModelConfig or TrainConfig field) under one ``--time-budget``; several runs
are gathered into one table by ``benchmarks/variant_table.py``. ``--rescore CKPT`` compares residual
scores (L2, Mahalanobis at several shrinkages) on one trained checkpoint without training.

Features are computed once per image set (disk cache in --out/.features or --cache), so baselines
and every recipe see identical inputs. Each ADTR recipe is scored on the test set every --eval-every epochs;
evaluation time is excluded from the training-time axis. Writes results.json, results.md and
accuracy_vs_time.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from adtr_edge.evaluation.baselines import BASELINES
from adtr_edge.bench.evaluation import masks_at, scored_from, split_features, summarise
from adtr_edge.config import PRESETS, ModelConfig, TrainConfig, apply_preset, preset_backbone
from adtr_edge.data.anomalies import SYNTHETIC_KINDS
from adtr_edge.data.datasets import ImageSet, load_dataset
from adtr_edge.evaluation.evaluate import Scored, report_for
from adtr_edge.fileio import write_json_atomic, write_text_atomic
from adtr_edge.evaluation.metrics import auroc, pixel_auroc
from adtr_edge.model import build_model
from adtr_edge.preprocessing import preprocess_spec
from adtr_edge.train.features import cached_raw_features
from adtr_edge.train.head_fit import score_features
from adtr_edge.train.loop import split_normals, train_model
from adtr_edge.train.sources import build_anomaly_pool


def parse_sets(items: list[str]) -> tuple[dict, dict]:
    """``key=value`` pairs -> (ModelConfig overrides, TrainConfig overrides), typed by each field's default."""
    from dataclasses import fields

    m_fields = {f.name: f for f in fields(ModelConfig)}
    t_fields = {f.name: f for f in fields(TrainConfig)}
    m, t = {}, {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or (key not in m_fields and key not in t_fields):
            raise SystemExit(f"--set {item}: use key=value with a ModelConfig or TrainConfig field")
        default = (m_fields.get(key) or t_fields[key]).default
        value = json.loads(raw) if not isinstance(default, str) else raw
        (m if key in m_fields else t)[key] = tuple(value) if isinstance(value, list) else value
    return m, t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--input-size", type=int, default=None, help="input side in pixels (default: the recipes' presets', else 256)")
    ap.add_argument("--backbone", default=None, help="timm name (default: the recipes' preset backbone)")
    ap.add_argument("--stages", default=None, help="backbone stages, e.g. 1,2,3,4 (default: the backbone's)")
    ap.add_argument("--feature-stride", type=int, default=16, help="grid = input size / stride (16: 16x16 at 256 px)")
    ap.add_argument("--recipes", default="default", help=f"comma list of presets {sorted(PRESETS)}, each optionally :EPOCHS (paper is slow)")
    ap.add_argument("--epochs", type=int, default=None, help="override the presets' epochs")
    ap.add_argument("--bf16", action="store_true")
    ap.add_argument("--jitter", type=float, default=None)
    ap.add_argument("--eval-every", type=int, default=5)
    ap.add_argument("--anomalies", default="none", help="comma list: none,confetti,patch,scar,external,labelled")
    ap.add_argument("--external-dir", default=None, help="folder of unrelated images for 'external' (default: generated textures)")
    ap.add_argument("--labelled-fraction", type=float, default=0.2, help="share of each defect type moved from test to training for 'labelled'")
    ap.add_argument("--no-baselines", action="store_true", help="skip the training-free baselines")
    ap.add_argument("--base-checkpoint", default=None, help="normal-only checkpoint to fine-tune for ADTR+ (skips --recipes)")
    ap.add_argument("--finetune-lr", type=float, default=1e-3)
    ap.add_argument("--alpha", type=float, default=0.003, help="weight of the anomaly term (paper: 0.003)")
    ap.add_argument("--finetune-epochs", type=int, default=10, help="ADTR+ epochs on top of the normal-only model")
    ap.add_argument("--split", choices=("val", "test", "all"), default="all",
                    help="score on the validation split (choices), the held-out rest (reporting) or the whole test set")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field in every recipe (repeatable)")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds of transformer training per recipe (features excluded)")
    ap.add_argument("--name", default=None, help="label of this variant in the tables")
    ap.add_argument("--cache", default=None, help="feature cache folder shared by several runs (default --out/.features)")
    ap.add_argument("--rescore", default=None, help="checkpoint: compare residual scores on it, no training")
    args = ap.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache) if args.cache else out / ".features"
    m_sets, t_sets = parse_sets(args.set)
    torch.manual_seed(0)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    header = {"command": " ".join(sys.argv), "date": started, "machine": f"{platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} torch threads, python {platform.python_version()}, torch {torch.__version__}"}
    print(json.dumps(header))

    side = run_input_size(args)
    cfg = ModelConfig.for_backbone(run_backbone(args), input_size=(side, side), feature_stride=args.feature_stride,
                                   stages=tuple(int(x) for x in args.stages.split(",")) if args.stages else None)
    if args.rescore or args.base_checkpoint:
        from adtr_edge.train.checkpoint import read_checkpoint_meta

        cfg = read_checkpoint_meta(args.rescore or args.base_checkpoint).model_config
    spec = preprocess_spec(cfg)
    train_set = load_dataset(args.data, "train")
    test_full = load_dataset(args.data, "test")
    anomalies = [a for a in args.anomalies.split(",") if a]
    labelled_set = None
    test = test_full
    if "labelled" in anomalies:
        # Move a share of each defect type to training; every row is evaluated on the rest.
        idx_anom = [i for i in range(len(test_full)) if test_full.labels[i] == 1]
        rng = np.random.default_rng(0)
        by_defect: dict = {}
        for i in idx_anom:
            by_defect.setdefault(test_full.defects[i], []).append(i)
        moved = sorted(j for d, ids in by_defect.items() for j in rng.permutation(ids)[: max(1, int(len(ids) * args.labelled_fraction))])
        labelled_set = test_full.subset(moved)
        test = test_full.subset([i for i in range(len(test_full)) if i not in set(moved)])
    base_train = TrainConfig(seed=0)
    fit_idx, val_idx = split_normals(train_set, base_train)
    model = build_model(cfg)
    t0 = time.perf_counter()
    test, fit_feats, test_feats, (mean, std) = split_features(model, cfg, train_set, fit_idx, test, cache, args.split)
    feature_seconds = time.perf_counter() - t0
    masks = masks_at(test, spec)
    rows, curves = [], {}
    if args.rescore:
        rows = rescore_rows(args.rescore, fit_feats, (raw_val_feats(model, train_set, val_idx, spec, cfg, cache) - mean) / std,
                            test_feats, test, masks)

    for name, fn in ({} if args.no_baselines else BASELINES).items():
        t = time.perf_counter()
        with torch.no_grad():
            grid = fn(fit_feats, test_feats)
            maps, scores = model.head.from_grid_map(grid)
        rep = report_for(scored_from(maps, scores, test, masks), None)
        rows.append({"method": name, "train_seconds": round(time.perf_counter() - t, 1), **summarise(rep), "per_defect": rep["per_defect"]})
        print(json.dumps(rows[-1] | {"per_defect": None}))

    def curve_callback(series, eval_seconds, tcfg):
        def cb(epoch, m, elapsed):
            if epoch % args.eval_every and epoch != 0:
                return
            t = time.perf_counter()
            if m.cfg.score == "mahalanobis":  # score as the finished model will: fit the head first
                from adtr_edge.train.residual_stats import fit_head_for

                fit_head_for(m, tcfg, fit_feats, torch.device("cpu"))
            scores, maps = score_features(m, test_feats, torch.device("cpu"))
            series.append({"epoch": epoch, "seconds": round(elapsed - eval_seconds[0], 1),
                           "image_auroc": auroc(scores, test.labels), "pixel_auroc": pixel_auroc(maps, masks)})
            eval_seconds[0] += time.perf_counter() - t
            print(json.dumps({"curve": series[-1]}), flush=True)
        return cb

    checkpoints = {"base": Path(args.base_checkpoint)} if args.base_checkpoint else {}
    for item in [r for r in args.recipes.split(",") if r and not args.base_checkpoint and not args.rescore]:
        recipe, _, epochs = item.partition(":")  # "fast:12" = preset fast, 12 epochs
        t_given = {"epochs": int(epochs or args.epochs) if epochs or args.epochs else None, "bf16": True if args.bf16 else None,
                   "feature_jitter": args.jitter, **t_sets}
        if args.time_budget:
            t_given["time_budget"] = args.time_budget
        # the input size the features were computed at (run_input_size) wins over the preset's
        m_over, t_over = apply_preset(recipe, {**m_sets, "input_size": cfg.input_size}, t_given)
        rcfg = replace(cfg, **m_over)
        tcfg = TrainConfig(**{**t_over, "device": "cpu"})
        series, eval_seconds = [], [0.0]
        result = train_model(train_set, rcfg, tcfg, out / f"adtr-{recipe}", progress=False, feature_cache=cache,
                             on_epoch_end=curve_callback(series, eval_seconds, tcfg))
        curves[f"ADTR {recipe}"] = series
        scores, maps = score_features(result.model, test_feats, torch.device("cpu"))
        rep = report_for(Scored(scores, maps, masks, np.asarray(test.labels), list(test.defects), []), result.checkpoint.thresholds)
        extra = result.checkpoint.extra
        label = args.name or recipe
        rows.append({"method": f"ADTR {label} ({rcfg.num_encoder_layers}+{rcfg.num_decoder_layers} d{rcfg.d_model}, {extra['epochs_run']} ep)",
                     "train_seconds": round(result.seconds - eval_seconds[0], 1), **summarise(rep), "per_defect": rep["per_defect"],
                     "at_threshold": rep.get("at_threshold"), "input_following": extra.get("input_following"),
                     "defect_pass_through": extra.get("defect_pass_through"), "model": rcfg.to_dict(), "train": tcfg.to_dict()})
        checkpoints[recipe] = out / f"adtr-{recipe}"
        print(json.dumps(rows[-1] | {"per_defect": None}), flush=True)

    if args.base_checkpoint:  # the starting point of every ADTR+ row, scored on the same images
        from adtr_edge.train.checkpoint import load_checkpoint

        base_model, base_ckpt = load_checkpoint(args.base_checkpoint)
        scores, maps = score_features(base_model, test_feats, torch.device("cpu"))
        rep = report_for(Scored(scores, maps, masks, np.asarray(test.labels), list(test.defects), []), base_ckpt.thresholds)
        rows.append({"method": f"ADTR base ({args.base_checkpoint})", "train_seconds": 0.0, **summarise(rep), "per_defect": rep["per_defect"]})
        print(json.dumps(rows[-1] | {"per_defect": None}), flush=True)

    base_recipe = next(iter(checkpoints), None)
    for source in [a for a in anomalies if a != "none"]:
        if base_recipe is None:
            break
        kwargs = {"synthetic": source} if source in SYNTHETIC_KINDS else {}
        if source == "external":
            ext = args.external_dir
            if ext is None:
                from adtr_edge.data.generate import generate_sample_dataset

                gen = generate_sample_dataset(out / "external", n_train=200, n_test_good=0, n_test_defect=0, size=(256, 256), seed=7,
                                              overwrite=True)
                ext = gen / "train" / "good"
            kwargs = {"external": Path(ext)}
        if source == "labelled":
            lab_dir = out / "labelled"
            _write_labelled(labelled_set, lab_dir)
            kwargs = {"labelled": lab_dir / "images", "labelled_masks": lab_dir / "masks"}
        pool = build_anomaly_pool(train_set, count=200 if source in SYNTHETIC_KINDS else 0, seed=0, **kwargs)
        tcfg = TrainConfig(**{**t_sets, "epochs": args.finetune_epochs, "lr": args.finetune_lr, "alpha": args.alpha, "device": "cpu",
                              "bf16": args.bf16, "preset": f"adtr+{source}"})
        series, eval_seconds = [], [0.0]
        result = train_model(train_set, cfg, tcfg, out / f"adtr-plus-{source}", anomalies=pool, init_from=checkpoints[base_recipe],
                             progress=False, feature_cache=cache, on_epoch_end=curve_callback(series, eval_seconds, tcfg))
        curves[f"ADTR+ {source}"] = series
        scores, maps = score_features(result.model, test_feats, torch.device("cpu"))
        rep = report_for(Scored(scores, maps, masks, np.asarray(test.labels), list(test.defects), []), result.checkpoint.thresholds)
        rows.append({"method": f"ADTR+ {source} (from {base_recipe}, +{tcfg.epochs} ep, lr {tcfg.lr:g}, alpha {tcfg.alpha:g}, "
                               f"loss {result.checkpoint.extra['loss_kind']})",
                     "train_seconds": round(result.seconds - eval_seconds[0], 1), **summarise(rep), "per_defect": rep["per_defect"]})
        print(json.dumps(rows[-1] | {"per_defect": None}), flush=True)

    results = {**header, "data": str(args.data), "split": args.split, "input_size": cfg.input_size[0], "stages": list(cfg.stages),
               "backbone": cfg.backbone, "feature_seconds": round(feature_seconds, 1), "n_fit": len(fit_idx), "n_test": len(test),
               "rows": rows, "curves": curves}
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", to_markdown(results))
    from adtr_edge.evaluation.plots import accuracy_vs_time_plot

    if any(curves.values()):
        accuracy_vs_time_plot({k: [(p["seconds"], p["image_auroc"]) for p in v] for k, v in curves.items()},
                              {r["method"]: r["image_auroc"] for r in rows if not r["method"].startswith("ADTR")},
                              out / "accuracy_vs_time.png")
    print(to_markdown(results))


def run_backbone(args) -> str:
    """One backbone per run (every row scores the same features): --backbone, else the recipes' own."""
    if args.backbone:
        return args.backbone
    if args.rescore or args.base_checkpoint:  # the checkpoint's own, read below
        return ModelConfig().backbone
    recipes = [r.partition(":")[0] for r in args.recipes.split(",") if r]
    named = sorted({preset_backbone(r) for r in recipes}) or [ModelConfig().backbone]
    if len(named) > 1:
        sys.exit(f"--recipes {args.recipes}: the presets train on different backbones ({', '.join(named)}); "
                 "run them separately or pass --backbone")
    return named[0]


def run_input_size(args) -> int:
    """One input size per run, like the backbone: --input-size, else the recipes' presets' own."""
    if args.input_size:
        return args.input_size
    recipes = [r.partition(":")[0] for r in args.recipes.split(",") if r] if not (args.rescore or args.base_checkpoint) else []
    sides = sorted({tuple(PRESETS[r].get("model", {}).get("input_size", ModelConfig().input_size)) for r in recipes})
    if len(sides) > 1:
        sys.exit(f"--recipes {args.recipes}: the presets train at different input sizes ({', '.join(f'{h}x{w}' for h, w in sides)}); "
                 "run them separately or pass --input-size")
    h, w = sides[0] if sides else ModelConfig().input_size
    if h != w:
        sys.exit(f"--recipes {args.recipes}: a {h}x{w} preset; pass --input-size")
    return h


def raw_val_feats(model, train_set, val_idx, spec, cfg, cache):
    return cached_raw_features(model.backbone, train_set, val_idx, spec, cfg, cache_dir=cache, device=torch.device("cpu"), progress=None)


def rescore_rows(checkpoint: str, fit_feats, val_feats, test_feats, test: ImageSet, masks: np.ndarray) -> list:
    """One trained checkpoint, several residual scores: what scoring alone is worth (issue #10 item 2).

    The transformer runs once per image set; every head is fitted and scored on those reconstructions."""
    from dataclasses import replace as dc_replace

    from adtr_edge.model.head import AnomalyHead
    from adtr_edge.train.checkpoint import load_checkpoint
    from adtr_edge.train.residual_stats import reconstruct, set_map_stats, whitening

    model, ckpt = load_checkpoint(checkpoint)
    cpu = torch.device("cpu")
    rec = {"fit": reconstruct(model, fit_feats, cpu), "val": reconstruct(model, val_feats, cpu), "test": reconstruct(model, test_feats, cpu)}
    normals = {"fit": fit_feats, "val": val_feats}

    def grid(head, feats, reconstruction):
        with torch.no_grad():
            return torch.cat([head.error_map(feats[i:i + 32], reconstruction[i:i + 32]) for i in range(0, len(feats), 32)])

    def scored_grid(head, grid_map, name: str) -> dict:
        with torch.no_grad():
            maps, scores = head.from_grid_map(grid_map)
        rep = report_for(scored_from(maps, scores, test, masks), None)
        row = {"method": name, "train_seconds": 0.0, **summarise(rep), "per_defect": rep["per_defect"]}
        print(json.dumps(row | {"per_defect": None}), flush=True)
        return row

    def scored(head, reconstruction, name: str) -> dict:
        return scored_grid(head, grid(head, test_feats, reconstruction), name)

    def head_for(kind: str, blur: float, residual=None, lam=None, target=None):
        # Per-location heads: these rows compare maps; the image-score terms are on docs/decisions.md.
        cfg = dc_replace(ckpt.model_config, score=kind, map_blur=blur, region_grid=0, map_pool=0)
        head = AnomalyHead(cfg, model.backbone.channels)
        if kind == "mahalanobis":
            set_map_stats(head, residual, *whitening(residual, lam, target=target))
        return head

    variants = [("l2", None, None, 0.0, None), ("l2", None, None, 4.0, None)]
    variants += [("mahalanobis", "fit", lam, 0.0, "pooled") for lam in (0.0, 0.05, 0.1, 0.5, 1.0)]
    variants += [("mahalanobis", "fit", lam, 0.0, "identity") for lam in (0.05, 0.2, 0.5, 0.8)]
    variants += [("mahalanobis", "val", lam, 0.0, "pooled") for lam in (0.1, 0.5)]
    variants += [("mahalanobis", "fit", 0.05, blur, "pooled") for blur in (2.0, 4.0)]
    variants += [("mahalanobis", "fit", 0.05, blur, "identity") for blur in (2.0, 4.0, 8.0)]
    rows = []
    for kind, src, lam, blur, target in variants:
        residual = normals[src] - rec[src] if src else None
        name = "L2 of the residual" if kind == "l2" else f"Mahalanobis of the residual, fitted on {src} normals, shrinkage {lam} to {target}"
        name += f", map blur sigma {blur:g}" if blur else ""
        rows.append(scored(head_for(kind, blur, residual, lam, target), rec["test"], name))

    # Both heads at once: each grid map divided by its mean on the fit normals, then summed with a
    # weight on the L2 part (L2 localises well on aligned data, Mahalanobis ranks images well).
    tcfg = ckpt.train_config
    maha = head_for("mahalanobis", 0.0, normals["fit"] - rec["fit"], tcfg.score_shrinkage, tcfg.score_target)
    l2 = head_for("l2", 0.0)
    norm_m, norm_l = grid(maha, fit_feats, rec["fit"]).mean(), grid(l2, fit_feats, rec["fit"]).mean()
    g_m, g_l = grid(maha, test_feats, rec["test"]) / norm_m, grid(l2, test_feats, rec["test"]) / norm_l
    for w in (0.25, 0.5, 1.0):
        rows.append(scored_grid(maha, g_m + w * g_l, f"shipped Mahalanobis + {w:g} x L2, each over its mean on the fit normals"))

    # What the reconstruction adds under the shipped head: f_hat' = mu + beta (f_hat - mu), beta 0 the
    # per-location mean (the Gaussian baseline under the Mahalanobis head), beta 1 the trained model.
    mu = fit_feats.mean(dim=0, keepdim=True)
    for beta in (0.0, 0.5, 1.0):
        fit_rec, test_rec = mu + beta * (rec["fit"] - mu), mu + beta * (rec["test"] - mu)
        head = head_for("mahalanobis", 0.0, fit_feats - fit_rec, tcfg.score_shrinkage, tcfg.score_target)
        rows.append(scored(head, test_rec, f"reconstruction scaled towards the mean, beta {beta:g} (shipped head: shrinkage "
                                           f"{tcfg.score_shrinkage:g} to {tcfg.score_target})"))
    return rows


def _write_labelled(images: ImageSet, folder: Path) -> None:
    import cv2

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(len(images)):
        stem = f"{images.defects[i]}_{Path(images.paths[i]).stem}"
        cv2.imwrite(str(folder / "images" / f"{stem}.png"), images.image(i))
        cv2.imwrite(str(folder / "masks" / f"{stem}_mask.png"), images.mask(i).astype(np.uint8) * 255)


def to_markdown(results: dict) -> str:
    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"Data `{results['data']}`, {results['backbone']} stages {results['stages']} at {results['input_size']} px, "
             f"{results['n_fit']} training images, {results['n_test']} test images; features once: {results['feature_seconds']} s.",
             f"Scored on: {results.get('split', 'all')} split.",
             "", "| method | train s (CPU) | image AUROC | pixel AUROC | AUPRO | F1-max | following | pass-through |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["rows"]:
        lines.append(f"| {r['method']} | {r['train_seconds']} | {f(r['image_auroc'])} | {f(r['pixel_auroc'])} | {f(r['aupro'])} | "
                     f"{f(r['f1_max'])} | {f(r.get('input_following'))} | {f(r.get('defect_pass_through'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
