"""Score an image set with any predictor (PyTorch model, ONNX Runtime, TensorRT) and report.

One scoring loop serves every deployable form, so "PyTorch FP32 vs ONNX vs INT8" comparisons
differ only in the predictor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.datasets import ImageSet, guard_not_trained_on, load_batch
from ..errors import AdtrError
from ..fileio import write_json_atomic
from .metrics import auroc, evaluate, roc_curve
from ..postprocessing import Thresholds, label
from ..preprocessing import PreprocessSpec
from ..progress import Task, progress_bar

# uint8 NHWC BGR batch -> (maps (N, H, W) float32, scores (N,) float32)
Predictor = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


@dataclass
class Scored:
    scores: np.ndarray
    maps: np.ndarray  # (N, H, W) float32 at the model size
    masks: np.ndarray  # (N, H, W) bool
    labels: np.ndarray
    defects: list
    paths: list


def torch_predictor(model, device="cpu") -> Predictor:
    import torch

    model = model.to(device).eval()

    def predict(batch: np.ndarray):
        with torch.no_grad():
            amap, score = model(torch.from_numpy(batch).to(device))
        return amap[:, 0].float().cpu().numpy(), score.float().cpu().numpy()

    return predict


def fp16_emulated(model):
    """A copy of ``model`` that rounds to FP16 the way an FP16 engine stores numbers, head in FP32.

    Every weight of the backbone and transformer is rounded to FP16, and so is the output of every
    leaf module there (conv, linear, norm, activation), while arithmetic stays FP32 (TensorRT's FP16
    kernels accumulate in FP32). The error head (subtract, whiten, norm, resize, pool) stays FP32, as
    every engine path pins it. This measures FP16's cost on a CPU before any GPU is touched.
    """
    import copy

    import torch

    twin = copy.deepcopy(model).eval()

    def round_out(_module, _inputs, output):
        return output.half().float() if torch.is_tensor(output) and output.is_floating_point() else output

    for part in (twin.backbone.cnn, twin.transformer):
        for tensor in list(part.parameters()) + list(part.buffers()):
            if tensor.is_floating_point():
                tensor.data = tensor.data.half().float()
        for module in part.modules():
            if not list(module.children()):
                module.register_forward_hook(round_out)
    twin.transformer.register_forward_pre_hook(lambda _m, args: tuple(a.half().float() for a in args[:1]) + tuple(args[1:]))
    return twin


def backend_predictor(backend) -> Predictor:
    """A runtime backend (``adtr_edge.runtime.backends``) as a predictor."""

    def predict(batch: np.ndarray):
        result = backend.infer(batch)
        return result.anomaly_map[:, 0], result.score

    return predict


def score_imageset(predict: Predictor, images: ImageSet, spec: PreprocessSpec, *, batch_size: int = 8,
                   progress: bool = True, description: str = "scoring") -> Scored:
    n = len(images)
    if n == 0:
        raise AdtrError("evaluation set is empty")
    scores, maps, masks = [], [], []
    with progress_bar(progress) as bar:
        task = Task(bar, description, n)
        for s in range(0, n, batch_size):
            idx = list(range(s, min(n, s + batch_size)))
            batch, m = load_batch(images, idx, spec)
            amap, score = predict(batch)
            maps.append(amap.astype(np.float32))
            scores.append(np.asarray(score, np.float32).reshape(-1))
            masks.append(m)
            task.advance(len(idx))
    return Scored(np.concatenate(scores), np.concatenate(maps), np.concatenate(masks), np.asarray(images.labels),
                  list(images.defects), [str(p) for p in images.paths])


def report_for(scored: Scored, thresholds: Thresholds | None, fpr_limit: float = 0.3, resamples: int = 0,
               reference: tuple[str, Scored] | None = None) -> dict:
    """All metrics of ``scored``; ``resamples`` > 0 adds their 95% bootstrap intervals
    (``adtr_edge.evaluation.significance``: how far a test set of this size pins each figure down), and
    ``reference`` (its name, its scores on the same images) the paired differences from it under
    ``against``: one bootstrap gives both."""
    pixel = scored.masks.any()
    report = evaluate(scored.scores, scored.labels, scored.maps if pixel else None, scored.masks if pixel else None,
                      defects=scored.defects, fpr_limit=fpr_limit)
    y = np.asarray(scored.labels)
    figures = {m: report.get(m) for m in ("image_auroc", "pixel_auroc", "aupro")}
    if resamples > 0 and (y == 0).any() and (y == 1).any():
        if reference is not None:
            against = compare_scored(scored, reference[1], resamples, target_figures=figures)
            ranges = against.pop("target_intervals")
            report["against"] = {"model": reference[0], **against}
        else:
            from .significance import bootstrap_intervals

            found = bootstrap_intervals({"scores": scored.scores, "maps": scored.maps if pixel else None}, y,
                                        scored.masks if pixel else None, resamples=resamples, estimates=figures)
            ranges = {m: [iv.low, iv.high] for m, iv in found.items()}
        report["intervals"] = {"confidence": 0.95, "resamples": resamples, **ranges}
    if thresholds is not None:
        pred = label(scored.scores, thresholds)
        y = scored.labels.astype(bool)
        tp, fp = int((pred & y).sum()), int((pred & ~y).sum())
        fn, tn = int((~pred & y).sum()), int((~pred & ~y).sum())
        report["at_threshold"] = {
            "threshold": thresholds.threshold, "method": thresholds.method,
            "tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
            "false_positive_rate": fp / (fp + tn) if fp + tn else None,
        }
    return report


def write_pictures(scored: Scored, images: ImageSet, spec: PreprocessSpec, thresholds: Thresholds | None,
                   out_dir: Path, name: str = "model") -> dict:
    """ROC curve, score histogram and a grid of heat-map overlays; returns {picture: path}."""
    from . import plots
    from ..preprocessing import resize

    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    y = scored.labels.astype(bool)
    if y.any() and (~y).any():
        fpr, tpr, _ = roc_curve(scored.scores, y)
        plots.roc_plot({name: (fpr, tpr, auroc(scored.scores, y))}, out_dir / "roc.png")
        written["roc"] = str(out_dir / "roc.png")
    thr = thresholds.threshold if thresholds is not None else None
    plots.score_histogram(scored.scores[~y], scored.scores[y], thr, out_dir / "score_histogram.png")
    written["histogram"] = str(out_dir / "score_histogram.png")
    if thresholds is not None:
        # Most anomalous first, then a few normals, so the grid shows hits, misses and false alarms.
        order = [int(i) for i in np.argsort(-scored.scores) if y[i]][:12] + [int(i) for i in np.argsort(-scored.scores) if not y[i]][:4]
        frames = [resize(images.image(i), spec) for i in order]
        titles = [f"{scored.defects[i]} {scored.scores[i]:.2f}" for i in order]
        plots.overlay_grid(frames, [scored.maps[i] for i in order], thresholds, titles, out_dir / "overlays.png")
        written["overlays"] = str(out_dir / "overlays.png")
    return written


def collapse_report(model, test: ImageSet, device, spec: PreprocessSpec) -> dict:
    """Input following and defect pass-through on the test set's normal images (see train.diagnostics)."""
    from ..train.diagnostics import collapse_on_images

    good = [i for i in range(len(test)) if int(test.labels[i]) == 0]
    return collapse_on_images(model, [test.image(i) for i in good], spec, device)


def finish_report(scored: Scored, images: ImageSet, spec: PreprocessSpec, thresholds: Thresholds | None,
                  out_dir: str | Path | None, *, name: str, pictures: bool = True, resamples: int = 0,
                  reference: tuple[str, Scored] | None = None, extra: dict | None = None) -> dict:
    """The report of one scored set (``report_for``, with ``reference``, plus ``extra``), its pictures
    and report.json: the end of every evaluation, whatever produced the scores."""
    report = report_for(scored, thresholds, resamples=resamples, reference=reference) | dict(extra or {})
    if out_dir is not None:
        out = Path(out_dir)
        if pictures:
            report["pictures"] = write_pictures(scored, images, spec, thresholds, out, name=name)
        write_json_atomic(out / "report.json", report)
    return report


def compare_scored(target: Scored, reference: Scored, resamples: int = 1000, target_figures: dict | None = None) -> dict:
    """``target`` against ``reference`` on the same images: each metric's difference with its 95%
    paired-bootstrap interval (``adtr_edge.evaluation.significance``), e.g. an INT8 folder against its FP32 export,
    and the target's own intervals from the same resamples (``target_intervals``);
    ``target_figures``: the target's exact metrics if already computed."""
    from .significance import paired_bootstrap

    if list(target.paths) != list(reference.paths) or target.maps.shape != reference.maps.shape:
        raise AdtrError("the two models were not scored on the same images at the same size; compare models of one input size")
    pixel = bool(target.masks.any())
    result = paired_bootstrap({"scores": target.scores, "maps": target.maps if pixel else None},
                              {"scores": reference.scores, "maps": reference.maps if pixel else None},
                              target.labels, target.masks if pixel else None, resamples=resamples, a_estimates=target_figures)
    return {"resamples": resamples, "confidence": result.confidence, "reference": {m: iv.estimate for m, iv in result.b.items()},
            **{m: {"difference": [iv.estimate, iv.low, iv.high], "target_better": result.a_better[m]} for m, iv in result.difference.items()},
            "target_intervals": {m: [iv.low, iv.high] for m, iv in result.a.items()}}


def score_checkpoint(checkpoint: str | Path, test: ImageSet, *, device: str = "auto", batch_size: int = 8,
                     progress: bool = True) -> tuple[Scored, PreprocessSpec, Thresholds | None, dict]:
    """A checkpoint's scores on ``test`` (refused if it trained on any of them), with its preprocessing,
    thresholds and the report's checkpoint-only parts (collapse figures)."""
    from ..preprocessing import preprocess_spec
    from ..train.checkpoint import load_checkpoint
    from ..train.device import resolve_device
    from ..train.head_select import head_summary

    model, ckpt = load_checkpoint(checkpoint, device="cpu")
    guard_not_trained_on(test, ckpt.extra.get("train_paths", []))
    spec = preprocess_spec(ckpt.model_config)
    scored = score_imageset(torch_predictor(model, resolve_device(device)), test, spec, batch_size=batch_size, progress=progress)
    extra = {"collapse": collapse_report(model, test, resolve_device(device), spec), "checkpoint": str(checkpoint),
             "score_head": head_summary(ckpt)}
    return scored, spec, ckpt.thresholds, extra


def evaluate_checkpoint(checkpoint: str | Path, test: ImageSet, out_dir: str | Path | None = None, *,
                        device: str = "auto", batch_size: int = 8, progress: bool = True, pictures: bool = True,
                        resamples: int = 0) -> dict:
    scored, spec, thresholds, extra = score_checkpoint(checkpoint, test, device=device, batch_size=batch_size, progress=progress)
    return finish_report(scored, test, spec, thresholds, out_dir, name="ADTR", pictures=pictures, resamples=resamples,
                         extra=extra | {"dataset": test.summary()})
