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
