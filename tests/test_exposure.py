"""``train --normalize-exposure``: every frame's mean grey level is brought to the fit normals' median
inside the backbone graph, the same in PyTorch, the numpy reference and ONNX Runtime; a change of
exposure that clips nothing then leaves the features where they were."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from adtr_edge.config import ModelConfig, TrainConfig
from adtr_edge.errors import AdtrError
from adtr_edge.model.adtr import InGraphPreprocess
from adtr_edge.preprocessing import exposure_gain, median_grey, normalize_numpy, preprocess_spec

from .conftest import tiny_model_config


def _frames(seed: int, n: int = 3, low: int = 20, high: int = 180) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, (n, 32, 48, 3), dtype=np.uint8)


def test_in_graph_exposure_matches_the_numpy_reference_and_undoes_a_gain():
    spec = preprocess_spec(ModelConfig(input_size=(32, 48), exposure_reference=120.0))
    x = _frames(0)
    ours = InGraphPreprocess(spec)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, normalize_numpy(x, spec), atol=1e-5)
    # Each frame's mean is brought to 120 grey levels (the spec maps 0-255 to [-1, 1]).
    assert np.allclose((ours.mean(axis=(1, 2, 3)) + 1) * 127.5, 120.0, atol=0.05)
    # A darker exposure (nothing clips) is undone up to the uint8 rounding of the darker frame.
    darker = np.round(x * 0.7).astype(np.uint8)
    np.testing.assert_allclose(InGraphPreprocess(spec)(torch.from_numpy(darker)).numpy(), ours, atol=0.02)
    # Off by default: the output follows the exposure.
    plain = preprocess_spec(ModelConfig(input_size=(32, 48)))
    # Off, the spec's record is what it was before the field (calibration-cache keys depend on it).
    assert plain.exposure_reference == 0.0 and "exposure_reference" not in plain.to_dict()
    assert type(spec).from_dict(spec.to_dict()) == spec
    off = InGraphPreprocess(plain)
    assert np.abs(off(torch.from_numpy(darker)).numpy() - off(torch.from_numpy(x)).numpy()).mean() > 0.1


def test_a_black_frame_and_the_clip():
    spec = preprocess_spec(ModelConfig(input_size=(32, 48), exposure_reference=200.0))
    black = np.zeros((1, 32, 48, 3), np.uint8)
    assert np.all(InGraphPreprocess(spec)(torch.from_numpy(black)).numpy() == -1.0)  # no division by zero
    assert exposure_gain(black, 200.0)[0] == 200.0
    bright = _frames(1, 1, 150, 256)
    out = InGraphPreprocess(spec)(torch.from_numpy(bright)).numpy()
    assert out.max() <= 1.0 + 1e-6  # scaled up, clipped to white


def test_exposure_reference_is_checked_and_old_configs_load_without_it():
    with pytest.raises(AdtrError, match="exposure_reference 300"):
        ModelConfig(exposure_reference=300.0)
    d = ModelConfig().to_dict()
    d.pop("exposure_reference")
    assert ModelConfig.from_dict(d).exposure_reference == 0.0


def test_median_grey_is_measured_at_the_model_size():
    spec = preprocess_spec(ModelConfig(input_size=(32, 48)))
    frames = [np.full((64, 64, 3), v, np.uint8) for v in (10, 90, 200)]
    assert median_grey(frames, spec) == 90.0
    with pytest.raises(AdtrError, match="no images"):
        median_grey([], spec)


def test_training_sets_the_reference_and_the_onnx_graph_carries_it(tmp_path, sample_dataset, capsys):
    ort = pytest.importorskip("onnxruntime")
    import onnx

    from adtr_edge.data.datasets import load_dataset
    from adtr_edge.export.onnx_export import export_checkpoint
    from adtr_edge.train.checkpoint import load_checkpoint
    from adtr_edge.train.loop import split_normals, train_model

    train = load_dataset(sample_dataset, "train")
    cfg = TrainConfig(epochs=1, batch_size=8, val_fraction=0.2, device="cpu", head="per-location", score_select="none",
                      normalize_exposure=True)
    lines = []
    train_model(train, replace(tiny_model_config(), region_grid=0, map_pool=0, map_pool_clip=0.0), cfg, tmp_path / "ckpt",
                progress=False, log=lines.append)
    model, ckpt = load_checkpoint(tmp_path / "ckpt")
    fit_idx, _ = split_normals(train, cfg)
    expected = round(median_grey((train.image(i) for i in fit_idx), preprocess_spec(ckpt.model_config)), 2)
    assert ckpt.model_config.exposure_reference == expected > 0
    assert ckpt.train_config.normalize_exposure and any(f"mean grey level of {expected:g}" in s for s in lines)

    export_checkpoint(tmp_path / "ckpt", tmp_path / "onnx", opset=17)
    graph = onnx.load(str(tmp_path / "onnx" / "backbone.onnx"))
    reduces = [n for n in graph.graph.node if n.op_type == "ReduceMean"]
    # One axis per mean (FP16-safe partial sums); the stem's own pooling is not a ReduceMean.
    assert len(reduces) >= 3
    for n in reduces:
        axes = next((list(a.ints) for a in n.attribute if a.name == "axes"), None)
        if axes is None:  # opset 18+: axes as an input
            init = {i.name: i for i in graph.graph.initializer}
            axes = list(onnx.numpy_helper.to_array(init[n.input[1]])) if len(n.input) > 1 and n.input[1] in init else None
        assert axes is not None and len(axes) == 1, n
    from adtr_edge.export.op_support import VERSIONS, restriction_problems, unsupported

    for version in VERSIONS:  # every TensorRT parser the engine builder targets imports the new ops
        assert unsupported(graph, version) == [] and restriction_problems(graph, version) == [], version
    x = _frames(3, 2, 30, 200)
    x = np.stack([np.resize(f, (64, 64, 3)) for f in x])
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "backbone.onnx"), providers=["CPUExecutionProvider"])
    feats = sess.run(None, {"images": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(feats, model.backbone(torch.from_numpy(x)).numpy(), atol=1e-4)
    darker = np.round(x * 0.75).astype(np.uint8)
    moved = np.abs(sess.run(None, {"images": darker})[0] - feats).mean()
    assert moved < 0.05 * np.abs(feats).mean()

    # eval says the model normalises exposure, from a checkpoint and from its export alike
    from adtr_edge.cli import main as cli_main

    for model_path in (tmp_path / "ckpt", tmp_path / "onnx"):
        capsys.readouterr()
        assert cli_main(["eval", str(model_path), str(sample_dataset), "--out", str(tmp_path / f"eval-{model_path.name}"),
                         "--no-pictures", "--bootstrap", "0", "--device", "cpu", "--no-progress"]) == 0
        assert f"exposure: every frame brought to a mean grey level of {expected:g}" in capsys.readouterr().out


def test_the_hint_names_a_wide_spread_only():
    from adtr_edge.data.datasets import EXPOSURE_HINT_RATIO, exposure_hint

    assert exposure_hint({}) is None
    assert exposure_hint({"normal_mean_grey": {"p5": 146.0, "p50": 158.0, "p95": 169.0}}) is None  # the generated weave
    hint = exposure_hint({"normal_mean_grey": {"p5": 62.2, "p50": 108.8, "p95": 165.6}})  # magnetic tile
    assert hint == ("note: your normals' exposure varies (mean grey level 62.2 to 165.6 from the 5th to the 95th percentile, x2.7); "
                    "--normalize-exposure takes that out inside the graph (compare with eval --against)")
    assert exposure_hint({"normal_mean_grey": {"p5": 100.0, "p50": 120.0, "p95": 100.0 * EXPOSURE_HINT_RATIO}}) is not None
    assert exposure_hint({"normal_mean_grey": {"p5": 100.0, "p50": 120.0, "p95": 99.0 * EXPOSURE_HINT_RATIO}}) is None


def test_train_suggests_the_option_where_the_normals_exposure_varies(tmp_path, sample_dataset, capsys):
    import shutil

    import cv2

    from adtr_edge.cli import main

    data = tmp_path / "uneven"
    shutil.copytree(sample_dataset, data)
    for i, path in enumerate(sorted((data / "train" / "good").iterdir())):
        if i % 2:  # every other normal at a third of its exposure
            cv2.imwrite(str(path), (cv2.imread(str(path)) / 3).astype(np.uint8))
    args = ["--input-size", "64", "--encoder-layers", "1", "--decoder-layers", "1", "--d-model", "64", "--epochs", "1",
            "--no-progress", "--device", "cpu", "--head", "per-location", "--score-select", "none"]
    assert main(["train", str(data), "--out", str(tmp_path / "m"), *args]) == 0
    assert "note: your normals' exposure varies" in capsys.readouterr().out
    assert main(["train", str(sample_dataset), "--out", str(tmp_path / "even"), *args]) == 0
    assert "exposure varies" not in capsys.readouterr().out
