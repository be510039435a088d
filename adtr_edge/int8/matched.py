"""Quantisation-matched INT8 (issue #11): the score head's statistics fitted on the INT8 backbone.

The Mahalanobis head divides by the spread of normal residuals, which is small in some feature
directions; the INT8 backbone's deterministic quantisation error lands there and, scored against
FP32 statistics, looks like an anomaly (-27 image-AUROC points on magnetic tile). Fitting the head
and the threshold on the *quantised* backbone's features of the same training normals makes that
error part of normal (-0.9 points, docs/benchmarks.md section 4.1). The transformer is not retrained.

``quantize_matched`` makes the pair in one step:
  1. export the checkpoint and write its Q/DQ backbone (the same recipe as ``adtr-edge quantize``);
  2. run the training normals through that backbone (ONNX Runtime), refit the head, recalibrate, as
     the checkpoint was: with drifted views of the fit normals where its head was fitted on them
     (``fit_drift``), and of the held-out normals where its threshold was calibrated on them
     (``threshold_drift``), each view through the INT8 backbone too;
  3. export the refitted checkpoint and quantise its backbone again, which reproduces the same Q/DQ
     graph (same weights, same calibration images): checked digest for digest.
The folder's metadata names the backbone graph its head was fitted on
(``head_matched_to_backbone``); ``check_matched_backbone`` refuses any other backbone.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx

from ..errors import AdtrError, require
from ..fileio import sha256_bytes
from ..metadata import BACKBONE, HEAD_MATCH_KEY as MATCH_KEY, IMAGES, onnxruntime_config_for_target


def backbone_digest(path: Path) -> str:
    """sha256 of a graph without its metadata (the same digest ``adtr-edge export`` records)."""
    model = onnx.load(str(path))
    del model.metadata_props[:]
    return sha256_bytes(model.SerializeToString())


def check_matched_backbone(meta_raw: dict, backbone_path: Path) -> None:
    """Refuse a folder whose head was fitted on another backbone graph than the one it holds."""
    want = meta_raw.get(MATCH_KEY)
    if want and backbone_digest(backbone_path) != want:
        raise AdtrError(f"{backbone_path}: this transformer's head was fitted on another backbone ({want[:12]}...); "
                        "make the pair again with 'adtr-edge quantize-matched CHECKPOINT'")


def _session_features(session, images: list, spec, batch: int = 16):
    """Standardised features of ``images`` (H, W, 3 uint8) through the backbone graph's ``session``."""
    import torch  # noqa: PLC0415

    from ..preprocessing import prepare_batch  # noqa: PLC0415

    out = [session.run(None, {IMAGES: prepare_batch(images[s:s + batch], spec)})[0] for s in range(0, len(images), batch)]
    return torch.from_numpy(np.concatenate(out)) if out else torch.empty(0)


def _qdq_features(session, imageset, indices, spec, drifts=(), batch: int = 16):
    """The images at ``indices`` through the session; with ``drifts``, one drifted view of each per drift
    (``data.camera.drifted``, the strength fixed by the file name as training fixes it), stacked."""
    import torch  # noqa: PLC0415

    from ..data.camera import drifted_image  # noqa: PLC0415

    if not drifts:
        return _session_features(session, [imageset.image(int(i)) for i in indices], spec, batch)
    return torch.cat([_session_features(session, [drifted_image(imageset, int(i), d) for i in indices], spec, batch)
                      for d in drifts])


def quantize_matched(checkpoint: Path, train_data: Path, calib_images: Path, out: Path, *, calib_count: int = 64,
                     batch_size: int = 8, log=print, target: str = "tensorrt", keep_float: str = "auto",
                     graphs=None, fuse_attention: bool = True) -> Path:
    """Write ``out``: an INT8 backbone and a transformer whose head is fitted on that backbone's features
    (FP32 for ``target`` tensorrt; for ``target`` cpu the transformer as ``quantize_export`` writes
    it: dynamically quantised MatMuls, the INT8 head and, unless ``fuse_attention`` is off, fused attention).
    ``graphs``: which graphs are INT8 (default: the target's ``DEFAULT_GRAPHS``); the backbone always is."""
    import onnxruntime as ort  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from ..data.datasets import load_dataset  # noqa: PLC0415
    from ..export.onnx_export import export_checkpoint  # noqa: PLC0415
    from ..preprocessing import preprocess_spec  # noqa: PLC0415
    from ..train.checkpoint import load_checkpoint, save_checkpoint  # noqa: PLC0415
    from ..data.camera import threshold_drifts  # noqa: PLC0415
    from ..train.drift_choice import head_drifts  # noqa: PLC0415
    from ..train.head_fit import calibrate_with_drift, fit_score  # noqa: PLC0415
    from ..train.loop import split_normals  # noqa: PLC0415
    from .quantize import DEFAULT_GRAPHS, parse_target, quantize_export  # noqa: PLC0415

    out, target = Path(out), parse_target(target)
    require(graphs is None or BACKBONE in graphs, f"--graphs {','.join(graphs or [])}: a matched pair quantises the backbone")
    require(not out.exists(), f"--out {out} already exists; choose a new folder for the matched pair")
    model, ckpt = load_checkpoint(checkpoint)
    require(ckpt.model_config.score == "mahalanobis",
            f"--match {checkpoint}: its head scores '{ckpt.model_config.score}'; only a mahalanobis head has statistics to match")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".tmp-matched-", dir=out.parent))
    try:
        first = quantize_export(export_checkpoint(checkpoint, staging / "export").folder, calib_images, staging / "qdq",
                                (BACKBONE,), calib_count, batch_size, log=log, target=target, keep_float=keep_float)
        digest = backbone_digest(first / f"{BACKBONE}.onnx")
        opts = ort.SessionOptions()
        for key, value in onnxruntime_config_for_target(target).items():
            opts.add_session_config_entry(key, value)  # compute the features as the target's runtime will
        session = ort.InferenceSession(str(first / f"{BACKBONE}.onnx"), opts, providers=["CPUExecutionProvider"])
        train_set = load_dataset(train_data, "train")
        fit_idx, val_idx = split_normals(train_set, ckpt.train_config)
        spec = preprocess_spec(ckpt.model_config)
        log(f"fitting the head on the INT8 backbone's features of {len(fit_idx)} training normals")
        fit8 = _qdq_features(session, train_set, fit_idx, spec)
        val8 = _qdq_features(session, train_set, val_idx, spec)
        tcfg, cpu, extra = ckpt.train_config, torch.device("cpu"), {**ckpt.extra, MATCH_KEY: digest}
        fit_drifts, cal_drifts = head_drifts(ckpt), threshold_drifts(tcfg.threshold_drift)
        if fit_drifts:
            log(f"  and on their drifted views ({', '.join(fit_drifts)}), as the head was fitted")
        drift8 = _qdq_features(session, train_set, fit_idx, spec, fit_drifts) if fit_drifts else None
        thresholds = fit_score(model, tcfg, fit8, val8, cpu, drift=drift8)
        if cal_drifts:  # the threshold as the checkpoint's was calibrated: on the held-out normals' drifted views too
            held8 = _qdq_features(session, train_set, val_idx, spec, cal_drifts)
            thresholds, extra["threshold_drift"] = calibrate_with_drift(
                model, tcfg, val8, held8, thresholds, cpu, train_set, val_idx,
                features=lambda images: _session_features(session, images, spec))  # the cost, measured through the INT8 graph
            log(f"  {extra['threshold_drift']['why']}")
        matched = save_checkpoint(staging / "checkpoint", model, replace(ckpt, thresholds=thresholds, extra=extra))
        result = quantize_export(export_checkpoint(matched, staging / "export-matched").folder, calib_images, staging / "out",
                                 graphs or DEFAULT_GRAPHS[target], calib_count, batch_size, log=log, target=target,
                                 keep_float=keep_float, fuse_attention=fuse_attention)
        if backbone_digest(result / f"{BACKBONE}.onnx") != digest:
            raise AdtrError("INT8 calibration did not reproduce the same backbone graph twice; the matched pair was not written")
        result.replace(out)  # the finished folder appears whole
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"matched pair: {out} (threshold {thresholds.threshold:.4f}, head fitted on backbone {digest[:12]})")
    return out
