"""Per-location or location-free head: the decision on synthetic defects, and a trained nearest head
end to end (checkpoint, export, ONNX Runtime)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adtr_edge.config import ModelConfig, TrainConfig
from adtr_edge.model.head import AnomalyHead
from adtr_edge.train.head_select import SyntheticSet
from adtr_edge.train.location_choice import compare_heads, location_gain, nearest_config, why
from adtr_edge.train.memory_bank import cells
from adtr_edge.train.residual_stats import set_map_stats, whitening

from .conftest import tiny_model_config

C, G = 6, 8  # channels, grid side (64 px input, stride 8)


def _heads(fit: torch.Tensor) -> tuple[AnomalyHead, AnomalyHead]:
    cfg = ModelConfig(input_size=(64, 64), feature_stride=8, pool_kernel=8, score="mahalanobis")
    per_location = AnomalyHead(cfg, C)
    set_map_stats(per_location, fit, *whitening(fit, 0.05, target="identity"))
    nearest = AnomalyHead(nearest_config(cfg, 512), C)
    nearest.set_bank(cells(fit)[torch.randperm(fit.shape[0] * G * G, generator=torch.Generator().manual_seed(0))[:512]])
    return per_location, nearest


def _synthetic(clean: torch.Tensor, defective: torch.Tensor, where: np.ndarray) -> SyntheticSet:
    masks = np.zeros((len(clean) + len(defective), 64, 64), bool)
    masks[len(clean):] = where
    labels = np.r_[np.zeros(len(clean)), np.ones(len(defective))].astype(int)
    return SyntheticSet(torch.cat([clean, defective]), masks, labels, 0.4)


def _spot() -> np.ndarray:
    m = np.zeros((64, 64), bool)
    m[24:40, 24:40] = True  # cells 3-4 of 8
    return m


def test_parts_that_move_choose_the_nearest_head():
    """Every cell is background or metal, wherever it is: a cell halfway between the two is normal for
    a per-location Gaussian (it sits on each location's mean) and far from every normal cell."""
    g = torch.Generator().manual_seed(0)
    metal = torch.randn(C, generator=g) * 4

    def images(n):
        part = (torch.rand(n, 1, G, G, generator=g) < 0.4).float()
        return part * metal.view(1, C, 1, 1) + 0.3 * torch.randn(n, C, G, G, generator=g)

    fit, clean, bad = images(200), images(30), images(30)
    bad[:, :, 3:5, 3:5] = metal.view(1, C, 1, 1) * 0.5 + 0.3 * torch.randn(30, C, 2, 2, generator=g)
    synthetic = _synthetic(clean, bad, _spot())
    choice = compare_heads(*_heads(fit), synthetic, torch.zeros_like(synthetic.feats), resamples=200)
    assert choice["head"] == "nearest", choice
    assert choice["advantage_points"][1] > 0
    assert "chose it" in why(choice)


def test_fixtured_parts_keep_the_per_location_head():
    """Each location has its own appearance: a cell from another location is normal to a location-free
    bank and a defect to the per-location head."""
    g = torch.Generator().manual_seed(1)
    layout = torch.randn(1, C, G, G, generator=g) * 3

    def images(n):
        return layout + 0.3 * torch.randn(n, C, G, G, generator=g)

    fit, clean, bad = images(200), images(30), images(30)
    bad[:, :, 3:5, 3:5] = layout[:, :, 6:8, 0:2]  # another place's normal look
    synthetic = _synthetic(clean, bad, _spot())
    choice = compare_heads(*_heads(fit), synthetic, torch.zeros_like(synthetic.feats), resamples=200)
    assert choice["head"] == "per-location", choice
    assert "kept per-location" in why(choice)


def test_location_gain_is_large_where_each_place_has_its_own_look():
    g = torch.Generator().manual_seed(2)
    layout = torch.randn(1, C, G, G, generator=g) * 3
    aligned = location_gain(layout + 0.3 * torch.randn(60, C, G, G, generator=g), layout + 0.3 * torch.randn(10, C, G, G, generator=g))
    moving = location_gain(torch.randn(60, C, G, G, generator=g), torch.randn(10, C, G, G, generator=g))
    assert aligned["gain"] > 1.0 > 0.2 > abs(moving["gain"])


@pytest.fixture(scope="module")
def nearest_checkpoint(tmp_path_factory, sample_dataset):
    from adtr_edge.data.datasets import load_dataset
    from adtr_edge.train.loop import train_model

    out = tmp_path_factory.mktemp("nearest") / "ckpt"
    cfg = TrainConfig(epochs=1, batch_size=8, val_fraction=0.2, device="cpu", head="nearest", nearest_bank=300, score_select="none")
    train_model(load_dataset(sample_dataset, "train"), tiny_model_config(), cfg, out, progress=False)
    return out


def test_a_nearest_head_trains_exports_and_runs_the_same_on_onnx_runtime(nearest_checkpoint, tmp_path, sample_dataset):
    import onnxruntime as ort

    from adtr_edge.export.onnx_export import export_checkpoint
    from adtr_edge.train.checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(nearest_checkpoint)
    assert ckpt.model_config.score == "nearest" and ckpt.model_config.region_grid == 0
    assert ckpt.extra["location_choice"]["set_by"] == "user"
    assert float(model.head.bank.abs().sum()) > 0 and ckpt.thresholds.threshold > 0
    export_checkpoint(nearest_checkpoint, tmp_path / "onnx", opset=17)
    sess = ort.InferenceSession(str(tmp_path / "onnx" / "transformer.onnx"), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in __import__("onnx").load(str(tmp_path / "onnx" / "transformer.onnx")).graph.node}
    assert {"MatMul", "ReduceMin"} <= ops
    from adtr_edge.export.op_support import restriction_problems, unsupported

    graph = __import__("onnx").load(str(tmp_path / "onnx" / "transformer.onnx"))
    for version in ("8.5", "8.6", "10.3", "10.16"):  # every TensorRT parser the project supports takes the head
        assert unsupported(graph, version) == [] and restriction_problems(graph, version) == [], version
    feats = torch.randn(2, model.backbone.channels, 8, 8)
    with torch.no_grad():
        amap, score = model.head(feats, model.transformer(feats))
    got = sess.run(None, {sess.get_inputs()[0].name: feats.numpy()})
    by_name = dict(zip([o.name for o in sess.get_outputs()], got))
    np.testing.assert_allclose(by_name["score"], score.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(by_name["anomaly_map"], amap.numpy(), rtol=1e-4, atol=1e-3)


def test_unknown_head_is_a_one_line_error(tmp_path, sample_dataset):
    from adtr_edge.data.datasets import load_dataset
    from adtr_edge.errors import AdtrError
    from adtr_edge.train.loop import train_model

    with pytest.raises(AdtrError, match="--head 'anywhere'"):
        train_model(load_dataset(sample_dataset, "train"), tiny_model_config(), TrainConfig(head="anywhere", device="cpu"),
                    tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_training_with_head_auto_records_its_decision_and_ships_what_it_decided(tmp_path, sample_dataset):
    from adtr_edge.data.datasets import load_dataset
    from adtr_edge.train.loop import train_model

    cfg = TrainConfig(epochs=1, batch_size=8, val_fraction=0.25, device="cpu", head="auto", nearest_bank=200, score_select="none")
    result = train_model(load_dataset(sample_dataset, "train"), tiny_model_config(), cfg, tmp_path / "auto", progress=False)
    choice = result.checkpoint.extra["location_choice"]
    assert choice["head"] in ("per-location", "nearest") and choice["synthetic_defects"] > 0
    assert set(choice["candidates"]) == {"per-location", "nearest"} and "location_gain" in choice
    assert result.checkpoint.model_config.score == ("nearest" if choice["head"] == "nearest" else "mahalanobis")
    assert choice["why"].startswith(choice["head"])
    from adtr_edge.train.head_select import head_summary

    assert head_summary(result.checkpoint)["location"] == {"head": choice["head"], "why": choice["why"]}  # eval prints it


def test_refit_head_switches_a_trained_checkpoint_to_the_nearest_head_or_lets_the_data_decide(trained_checkpoint, sample_dataset,
                                                                                              tmp_path, capsys):
    from adtr_edge.cli import main
    from adtr_edge.train.checkpoint import load_checkpoint

    base = [str(trained_checkpoint), str(sample_dataset), "--device", "cpu", "--nearest-bank", "256"]
    assert main(["refit-head", *base, "--out", str(tmp_path / "nn"), "--head", "nearest"]) == 0
    assert "score mahalanobis -> nearest" in capsys.readouterr().out
    model, ckpt = load_checkpoint(tmp_path / "nn")
    assert ckpt.model_config.score == "nearest" and ckpt.model_config.nearest_bank == 256 and ckpt.model_config.region_grid == 0
    assert float(model.head.bank.abs().sum()) > 0
    assert main(["refit-head", *base, "--out", str(tmp_path / "auto"), "--head", "auto"]) == 0
    printed = capsys.readouterr().out
    decided = load_checkpoint(tmp_path / "auto")[1]
    assert f"score head: {decided.extra['location_choice']['head']} head: on " in printed
    assert main(["refit-head", *base, "--out", str(tmp_path / "bad"), "--head", "anywhere"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--head 'anywhere'" in err and len(err.splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_refit_head_brings_a_nearest_checkpoint_back_to_the_per_location_head_it_was_chosen_over(nearest_checkpoint, sample_dataset,
                                                                                               tmp_path):
    from adtr_edge.train.checkpoint import load_checkpoint
    from adtr_edge.train.refit import refit_head

    kept = load_checkpoint(nearest_checkpoint)[1].extra["location_choice"]["per_location"]
    assert kept["score"] == "mahalanobis" and kept["region_grid"] == tiny_model_config().region_grid
    res = refit_head(nearest_checkpoint, sample_dataset, tmp_path / "pl", device="cpu", head="per-location")
    assert res.changed["score"] == ("nearest", "mahalanobis")
    model, ckpt = load_checkpoint(tmp_path / "pl")
    assert ckpt.model_config.score == "mahalanobis" and ckpt.model_config.region_grid == kept["region_grid"]
    assert ckpt.train_config.head == "per-location" and "location_choice" not in ckpt.extra
    assert ckpt.thresholds.threshold != load_checkpoint(nearest_checkpoint)[1].thresholds.threshold
    res = refit_head(nearest_checkpoint, sample_dataset, tmp_path / "auto", device="cpu", head="auto", nearest_bank=200)
    choice = res.checkpoint.extra["location_choice"]
    assert set(choice["candidates"]) == {"per-location", "nearest"}  # compared anew, not kept as it was
    assert res.checkpoint.model_config.score == ("nearest" if choice["head"] == "nearest" else "mahalanobis")
