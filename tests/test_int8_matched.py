"""The quantisation-matched INT8 pair (issue #11): the head refitted on the Q/DQ backbone's features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adtr_edge.errors import AdtrError


def test_quantize_matched_writes_a_pair_that_names_its_backbone(tmp_path, trained_checkpoint, sample_dataset):
    pytest.importorskip("onnxruntime")
    from adtr_edge.int8.matched import MATCH_KEY, backbone_digest, quantize_matched
    from adtr_edge.runtime.detector import Detector

    out = quantize_matched(trained_checkpoint, sample_dataset, sample_dataset / "train" / "good", tmp_path / "pair",
                           calib_count=8, batch_size=4, log=lambda s: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "onnx-qdq"
    assert manifest["meta"][MATCH_KEY] == backbone_digest(out / "backbone.onnx")
    assert not list(tmp_path.glob(".tmp-matched-*"))  # staging cleaned up
    # The head's statistics really changed (fitted on INT8 features, not the checkpoint's FP32 ones).
    import onnx
    from onnx import numpy_helper

    from adtr_edge.export.onnx_export import export_checkpoint

    plain = export_checkpoint(trained_checkpoint, tmp_path / "plain").folder

    def head_mean(folder):
        g = onnx.load(str(folder / "transformer.onnx")).graph
        inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        return next(v for k, v in inits.items() if "residual_mean" in k)

    assert not np.allclose(head_mean(out), head_mean(plain))
    det = Detector.load(out, backend="onnxruntime")
    frame = np.random.default_rng(0).integers(0, 256, (96, 96, 3), dtype=np.uint8)
    assert np.isfinite(det(frame).score)
    with pytest.raises(AdtrError, match="already exists"):
        quantize_matched(trained_checkpoint, sample_dataset, sample_dataset / "train" / "good", out, log=lambda s: None)


def test_a_head_fitted_on_another_backbone_is_refused(tmp_path, exported_model):
    from adtr_edge.int8.matched import MATCH_KEY, backbone_digest, check_matched_backbone

    backbone = exported_model / "backbone.onnx"
    check_matched_backbone({MATCH_KEY: backbone_digest(backbone)}, backbone)  # its own backbone: fine
    check_matched_backbone({}, backbone)  # not a matched pair: nothing to check
    with pytest.raises(AdtrError, match="fitted on another backbone"):
        check_matched_backbone({MATCH_KEY: "0" * 64}, backbone)


def test_quantize_warns_only_for_an_unmatched_cpu_form(tmp_path, exported_model, sample_dataset):
    pytest.importorskip("onnxruntime")
    from adtr_edge.int8.quantize import quantize_export, warn_unmatched

    assert json.loads((exported_model / "manifest.json").read_text())["meta"]["model"]["score"] == "mahalanobis"
    images = sample_dataset / "train" / "good"
    for target, warned in (("tensorrt", False), ("cpu", True)):
        out = quantize_export(exported_model, images, tmp_path / target, None, 8, 4, log=lambda s: None, target=target)
        lines = []
        warn_unmatched(out, log=lines.append)
        assert bool(lines) == warned and all("quantize-matched CHECKPOINT --target cpu" in line for line in lines)


def test_a_matched_pair_calibrates_its_threshold_as_the_checkpoint_did(tmp_path, trained_checkpoint, sample_dataset):
    """A checkpoint whose threshold was calibrated on drifted views of the held-out normals too
    (``--threshold-drift``) keeps that calibration in its matched pair: the deployed pair's threshold
    is the quantile of its own scores (through ONNX Runtime) over the held-out normals and their views."""
    pytest.importorskip("onnxruntime")
    from pathlib import Path

    from adtr_edge.data.camera import drifted
    from adtr_edge.data.datasets import load_dataset
    from adtr_edge.int8.matched import quantize_matched
    from adtr_edge.runtime.detector import Detector
    from adtr_edge.train.checkpoint import load_checkpoint
    from adtr_edge.train.loop import split_normals
    from adtr_edge.train.refit import refit_head

    source = refit_head(trained_checkpoint, sample_dataset, tmp_path / "drift", device="cpu", threshold_drift="compression",
                        fit_drift="focus").out
    out = quantize_matched(source, sample_dataset, sample_dataset / "train" / "good", tmp_path / "pair", calib_count=8,
                           batch_size=4, log=lambda s: None)
    _, ckpt = load_checkpoint(source)
    train = load_dataset(sample_dataset, "train")
    _, val_idx = split_normals(train, ckpt.train_config)
    det = Detector.load(out, backend="onnxruntime")
    clean = [det(train.image(i)).score for i in val_idx]
    views = [det(drifted(train.image(i), "compression", Path(train.paths[i]).name)).score for i in val_idx]
    want = np.quantile(np.asarray(clean + views, np.float64), ckpt.train_config.threshold_quantile)
    assert det.thresholds.threshold == pytest.approx(want, rel=1e-3, abs=1e-3)
    assert det.thresholds.threshold != pytest.approx(np.quantile(clean, ckpt.train_config.threshold_quantile), rel=1e-3, abs=1e-3)
    meta = json.loads((out / "manifest.json").read_text())["meta"]
    assert meta["postprocess"]["thresholds"]["threshold"] == pytest.approx(det.thresholds.threshold)


def test_a_matched_head_is_fitted_on_the_drifts_the_checkpoints_head_was():
    from types import SimpleNamespace

    from adtr_edge.config import TrainConfig
    from adtr_edge.data.camera import AUTO_DRIFTS
    from adtr_edge.train.drift_choice import head_drifts

    def ckpt(fit_drift, choice=None):
        return SimpleNamespace(train_config=TrainConfig(fit_drift=fit_drift), extra={"drift_choice": choice})

    assert head_drifts(ckpt("none")) == ()
    assert head_drifts(ckpt("focus,pose")) == ("focus", "pose")
    assert head_drifts(ckpt("auto", {"drift": True})) == AUTO_DRIFTS
    assert head_drifts(ckpt("auto", {"drift": False})) == ()
    assert head_drifts(ckpt("auto")) == ()  # too few held-out normals to choose: fitted on the normals alone
