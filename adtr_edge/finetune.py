"""Fine-tune a model on what its line's operators reviewed, and promote it only past a gate.

    adtr-edge finetune MODEL --review DIR --out NEW [--export NEW-ONNX]

MODEL is the checkpoint the running export was made from; DIR the review folder
(``adtr_edge.runtime.review``: an MVTec-layout dataset). The reviews are split once, by id, into a
tuning share and a held-out share (``holdout``, 30% by default); the held-out reviews never reach
training.

1. Training continues from MODEL with ADTR+'s losses (``train_model(init_from=MODEL)``): the pixel
   loss on the tuning share's painted defects, the image-label loss on its unpainted ones (a second
   pass from the first's result: the training loop takes one kind of anomaly per run), and the
   tuning share's confirmed normals join the dataset's normals, so the head is refitted on them too.
   The threshold is calibrated again on the normals MODEL held out from its own training (the
   fine-tune does not train on them either).
2. The gate: both models score the held-out reviews (plus ``against_data``'s test split when given)
   and each metric's difference gets its 95% paired-bootstrap interval (``evaluate.compare_scored``,
   as ``eval --against``). The new model is refused when any metric is significantly worse (its
   interval lies below zero, or, with too few images to bound it, its estimate is lower) or when
   image AUROC, the figure every line has, is lower at all; the gate cannot run when the held-out
   images cannot rank (no normal or no defect among them).
3. A promoted model is renamed to NEW (and exported to ``export`` when asked); a refused one is
   kept aside as ``NEW.refused`` and ``FinetuneRefused`` is raised (the command exits 3).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional, Tuple

from .errors import AdtrError

GATE_METRICS = ("image_auroc", "pixel_auroc", "aupro")


class FinetuneRefused(AdtrError):
    """The gate refused the fine-tuned model (kept aside); exit code 3, so scripts can tell it
    from bad input (2)."""

    exit_code = 3


def split_reviews(records: list, holdout: float, seed: int = 0) -> Tuple[list, list]:
    """(tuning, held-out) by a hash of each review's id: stable as the folder grows (a review never
    moves from held-out to tuning), independent of the order writers added them."""
    if not 0.0 <= holdout < 1.0:
        raise AdtrError(f"--holdout {holdout}: a share in [0, 1)")

    def draw(r) -> float:
        h = hashlib.sha256(f"{seed}:{r['id']}".encode()).digest()
        return int.from_bytes(h[:8], "big") / 2**64

    held = [r for r in records if draw(r) < holdout]
    return [r for r in records if draw(r) >= holdout], held


def _imageset(review_dir: Path, records: list):
    """The reviews as an ImageSet: normals label 0, defects label 1 with their masks where painted."""
    from .data.datasets import ImageSet, Sample

    samples = []
    for r in records:
        image = review_dir / r["image"]
        if r["verdict"] == "normal":
            samples.append(Sample(image, 0, "good", None))
        else:
            samples.append(Sample(image, 1, r["label"], review_dir / r["mask"] if r.get("mask") else None))
    return ImageSet(samples, root=review_dir)


def _train_set(checkpoint: Path, data: Optional[Path], normals):
    """The normals MODEL trained on (``data``'s train split, default: the dataset its checkpoint
    records) plus the confirmed normals of the tuning share; and the file names of the normals MODEL
    held out from its training (its threshold's), which the fine-tune holds out too: calibrated on
    normals the base model had learnt, the new threshold would sit below unseen normals' scores.
    None where the checkpoint does not record what it trained on."""
    from .data.datasets import load_dataset
    from .train.checkpoint import read_checkpoint_meta

    meta = read_checkpoint_meta(checkpoint)
    if data is None:
        root = (meta.data_summary or {}).get("root")
        if not root or not Path(root).is_dir():
            raise AdtrError(f"{checkpoint}: its training data ({root or 'not recorded'}) is not here; give --data DATA (the dataset it was trained on)")
        data = Path(root)
    train = load_dataset(data, "train")
    trained = {Path(p).name for p in (meta.extra or {}).get("train_paths") or []}
    held_out = [s.path.name for s in train.samples if s.label == 0 and s.path.name not in trained] if trained else []
    return (train + normals if len(normals) else train), (held_out or None)


def finetune(checkpoint, review_dir, out, *, data=None, against_data=None, export=None, epochs: int = 3, lr: float = 1e-3,
             alpha: float = 0.1, holdout: float = 0.3, seed: int = 0, resamples: int = 1000, device: str = "auto",
             progress: bool = False, log: Callable[[str], None] = lambda s: None) -> dict:
    """Fine-tune ``checkpoint`` on the reviews in ``review_dir`` into ``out`` past the gate; returns
    the gate's report (also written to ``out/finetune.json``). Raises ``FinetuneRefused`` (the model
    kept in ``out.refused``) or ``AdtrError`` for bad input, with nothing written."""
    from .evaluation.evaluate import compare_scored, score_checkpoint
    from .folder import CHECKPOINT, read_model_folder
    from .runtime.review import ReviewFolder
    from .train.checkpoint import read_checkpoint_meta
    from .train.loop import AnomalyPool, train_model

    checkpoint, review_dir, out = Path(checkpoint), Path(review_dir), Path(out)
    folder = read_model_folder(checkpoint, purpose="finetune")
    if folder.kind != CHECKPOINT:
        raise AdtrError(f"{checkpoint}: is {folder.spec.what}; finetune continues training, so give the checkpoint it was made "
                        "from (adtr-edge train's --out)")
    if epochs < 1:
        raise AdtrError(f"--epochs must be >= 1, got {epochs}")
    refused_dir = out.with_name(out.name + ".refused")
    for p in (out, refused_dir):
        if p.exists():
            raise AdtrError(f"{p}: exists; choose a new --out (a model is never overwritten)")
    if not review_dir.is_dir():
        raise AdtrError(f"--review {review_dir}: not a folder")
    records = ReviewFolder(review_dir, option="--review").records()
    if not records:
        raise AdtrError(f"--review {review_dir}: no reviews yet; mark alarms in the web view (stream --review-dir) "
                        "or add frames with 'adtr-edge review add'")
    tune, held = split_reviews(records, holdout, seed)
    tune_defects = [r for r in tune if r["verdict"] == "defect"]
    if not tune_defects:
        raise AdtrError(f"--review {review_dir}: no reviewed defect to learn from ({sum(r['verdict'] == 'defect' for r in records)} "
                        f"defects in {len(records)} reviews, {len(held)} held out for the gate); review more defects")
    gate_set = _imageset(review_dir, held)
    if against_data is not None:
        from .data.datasets import load_dataset

        gate_set = gate_set + load_dataset(against_data, "test") if len(gate_set) else load_dataset(against_data, "test")
    labels = [int(x) for x in gate_set.labels] if len(gate_set) else []
    if 0 not in labels or 1 not in labels:
        raise AdtrError(f"the gate needs held-out normals and defects to rank; the held-out reviews have {labels.count(0)} normals "
                        f"and {labels.count(1)} defects; review more, lower --holdout's luck with more reviews, or give --against-data")
    normals = _imageset(review_dir, [r for r in tune if r["verdict"] == "normal"])
    train_set, held_out_normals = _train_set(checkpoint, data, normals)
    base = read_checkpoint_meta(checkpoint)
    cfg = replace(base.train_config, epochs=epochs, lr=lr, alpha=alpha, seed=seed, device=device, loss="auto", time_budget=0.0)

    if not base.model_config.score_reads_reconstruction:
        # ADTR+'s losses train the transformer, and this head never reads it: say so before minutes of training.
        log("note: this model's score head (nearest, on the backbone's features) does not read the transformer, so the "
            "reviewed defects cannot change its scores; the reviewed normals join its memory bank and the threshold is "
            "recalibrated")
    staging = out.with_name(f".tmp-{out.name}")
    if staging.exists():
        shutil.rmtree(staging)
    painted = [r for r in tune_defects if r.get("mask")]
    unpainted = [r for r in tune_defects if not r.get("mask")]
    groups = [(g, k) for g, k in ((painted, "labelled-pixel"), (unpainted, "labelled-image")) if g]
    first = staging.with_name(staging.name + "-first")
    passes = []
    start = checkpoint
    try:
        for i, (group, kind) in enumerate(groups):
            s = _imageset(review_dir, group)
            masks = [s.mask(i) for i in range(len(s))] if kind == "labelled-pixel" else None
            pool = AnomalyPool([s.image(i) for i in range(len(s))], masks, kind)
            target = staging if i == len(groups) - 1 else first
            log(f"fine-tuning {start} on {len(group)} reviewed defects ({'painted' if masks else 'image labels'}) "
                f"and {len(train_set)} normals ({len(normals)} reviewed), {epochs} epochs")
            result = train_model(train_set, base.model_config, cfg, target, anomalies=pool, init_from=start, progress=progress, log=log,
                                 held_out_normals=held_out_normals)
            passes.append({"defects": len(group), "kind": kind, "seconds": round(result.seconds, 2)})
            start = target
        shutil.rmtree(first, ignore_errors=True)
        log(f"gate: both models on {len(gate_set)} held-out images ({labels.count(1)} defects, {labels.count(0)} normals)")
        new_scored = score_checkpoint(staging, gate_set, device=device, progress=progress)[0]
        old_scored = score_checkpoint(checkpoint, gate_set, device=device, progress=progress)[0]
        vs = compare_scored(new_scored, old_scored, resamples=resamples)
    except BaseException:
        for p in (staging, first):
            shutil.rmtree(p, ignore_errors=True)
        raise
    metrics = {m: vs[m]["difference"] for m in GATE_METRICS if m in vs and vs[m]["difference"][0] is not None}
    # Worse: an interval entirely below zero; or, where too few held-out images bound it (NaN), a
    # lower estimate (nothing then says the drop is noise); and any drop of image AUROC.
    worse = [m for m, (d, lo, hi) in metrics.items() if hi < 0 or (math.isnan(hi) and d < 0)]
    worse += ["image_auroc"] if metrics.get("image_auroc", [0])[0] < 0 else []
    report = {"model": str(checkpoint), "review": str(review_dir), "reviews": len(records), "tuning": len(tune), "held_out": len(held),
              "against_data": str(against_data) if against_data else None, "passes": passes, "gate_images": len(gate_set),
              "reference": vs["reference"], "difference": metrics, "resamples": resamples,
              "promoted": not worse, "worse": sorted(set(worse)),
              "settings": {"epochs": epochs, "lr": lr, "alpha": alpha, "holdout": holdout, "seed": seed},
              "threshold_normals": len(held_out_normals) if held_out_normals else None}
    (staging / "finetune.json").write_text(json.dumps(report, indent=2) + "\n")
    if worse:
        staging.rename(refused_dir)
        report["kept_in"] = str(refused_dir)
        raise FinetuneRefused(f"not promoted: {', '.join(sorted(set(worse)))} worse on the held-out images ({gate_text(report)}); "
                              f"the model is kept in {refused_dir}")
    staging.rename(out)
    report["out"] = str(out)
    if export is not None:
        from .export.onnx_export import export_checkpoint

        export_checkpoint(out, export)
        report["export"] = str(export)
    return report


def gate_text(report: dict) -> str:
    """Each metric's difference in points with its 95% paired interval, as eval --against prints it."""
    names = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "aupro": "AUPRO"}
    def interval(lo, hi) -> str:
        return "[too few images to bound]" if math.isnan(lo) or math.isnan(hi) else f"[{100 * lo:+.2f}, {100 * hi:+.2f}]"

    return "  ".join(f"{names[m]} {100 * d:+.2f} {interval(lo, hi)}" for m, (d, lo, hi) in report["difference"].items())


def register(app) -> None:
    """``adtr-edge finetune`` (the training extra; imported only when run)."""
    import typer

    @app.command("finetune")
    def finetune_cmd(
        model: Path = typer.Argument(..., help="The checkpoint to continue (adtr-edge train's --out; the stream's export was made from it)."),
        review: Path = typer.Option(..., "--review", help="The review folder (stream --review-dir, adtr-edge review add)."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for the promoted checkpoint (a refused one goes to OUT.refused)."),
        data: Optional[Path] = typer.Option(None, "--data", help="The dataset MODEL was trained on (default: the one its checkpoint records)."),
        against_data: Optional[Path] = typer.Option(None, "--against-data", help="Also gate on this dataset's test split."),
        export: Optional[Path] = typer.Option(None, "--export", help="Export the promoted model here (ONNX), ready for 'adtr-edge swap'."),
        epochs: int = typer.Option(3, "--epochs", help="Epochs of continued training."),
        lr: float = typer.Option(1e-3, "--lr", help="Learning rate."),
        alpha: float = typer.Option(0.1, "--alpha", help="Weight of the anomaly term."),
        holdout: float = typer.Option(0.3, "--holdout", help="Share of the reviews held out for the gate (by id, stable as the folder grows)."),
        seed: int = typer.Option(0, "--seed", help="Random seed (training and the split)."),
        bootstrap: int = typer.Option(1000, "--bootstrap", help="Resamples of the gate's paired intervals."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    ) -> None:
        """Fine-tune MODEL on the line's reviews (ADTR+ losses) and promote it only if the gate finds it no worse."""
        if bootstrap < 10:
            raise AdtrError(f"--bootstrap {bootstrap}: the gate needs at least 10 resamples")
        report = finetune(model, review, out, data=data, against_data=against_data, export=export, epochs=epochs, lr=lr,
                          alpha=alpha, holdout=holdout, seed=seed, resamples=bootstrap, device=device, log=typer.echo)
        typer.echo(f"gate on {report['gate_images']} held-out images, points [95% paired interval]: {gate_text(report)}")
        typer.echo(f"promoted: {report['out']}" + (f" (exported to {report['export']})" if report.get("export") else ""))
