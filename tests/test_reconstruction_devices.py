"""The devices that keep the decoder from copying its input or outputting the mean (issue #10):
neighbour-masked attention, sine positions, the Mahalanobis residual head, feature jitter, the
time budget, and the two collapse figures."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from adtr_edge.config import ModelConfig, TrainConfig
from adtr_edge.errors import AdtrError
from adtr_edge.model.adtr import MASKED_BIAS, Attention, neighbour_bias, sine_position
from adtr_edge.model.head import AnomalyHead
from adtr_edge.train.diagnostics import DefectProbe, collapse_figures, defect_pass_through, input_following
from adtr_edge.train.loop import check_train_choices, covariance_jitter_shape, epochs_for_budget, feature_jitter
from adtr_edge.train.residual_stats import whitening

from tests.conftest import tiny_model_config


def test_neighbour_bias_masks_exactly_the_window():
    bias = neighbour_bias((5, 6), 3)
    assert bias.shape == (30, 30) and torch.isfinite(bias).all()
    me = 2 * 6 + 3  # row 2, col 3
    masked = {int(j) for j in torch.nonzero(bias[me] < 0)}
    assert masked == {r * 6 + c for r in (1, 2, 3) for c in (2, 3, 4)}
    assert float(bias.min()) == MASKED_BIAS
    assert float(torch.tensor(MASKED_BIAS, dtype=torch.float16)) == MASKED_BIAS  # representable in FP16


def test_masked_attention_ignores_the_own_window():
    torch.manual_seed(0)
    att = Attention(16, 2, 0.0).eval()
    x = torch.randn(1, 9, 16)
    bias = neighbour_bias((3, 3), 3)
    # Token 0 (corner) may only read tokens outside rows 0-1 x cols 0-1: changing those 4 tokens changes nothing.
    y = x.clone()
    y[0, [0, 1, 3, 4]] += torch.randn(4, 16) * 5
    q = x[:, :1]  # the query is the same; only what it may read from differs
    torch.testing.assert_close(att(q, x, x, bias[:1]), att(q, y, y, bias[:1]), atol=1e-6, rtol=0)
    # Without the mask it would change: the test can fail.
    assert not torch.allclose(att(q, x, x), att(q, y, y), atol=1e-3)


def test_sine_position_is_fixed_distinct_and_starts_the_queries():
    pos = sine_position((4, 4), 32)
    assert pos.shape == (16, 32)
    assert torch.unique(pos, dim=0).shape[0] == 16
    from adtr_edge.model.adtr import ReconstructionTransformer

    cfg = replace(tiny_model_config(), pos_embed="sine")
    t = ReconstructionTransformer(cfg, 10)
    torch.testing.assert_close(t.query.detach(), sine_position(cfg.grid, cfg.d_model))
    assert "sine_pos" not in t.state_dict()  # rebuilt from the config, not stored
    assert all("row_embed" not in n for n, _ in t.named_parameters())


def test_config_rejects_bad_devices():
    with pytest.raises(AdtrError, match="neighbor_mask"):
        ModelConfig(neighbor_mask=2)
    with pytest.raises(AdtrError, match="grid"):
        ModelConfig(input_size=(64, 64), feature_stride=16, neighbor_mask=5)
    with pytest.raises(AdtrError, match="score"):
        ModelConfig(score="cosine")
    with pytest.raises(AdtrError, match="pos_embed"):
        ModelConfig(pos_embed="rope")


def test_mahalanobis_head_matches_explicit_distance():
    torch.manual_seed(0)
    n, c, h, w = 40, 6, 2, 3
    res = torch.randn(n, c, h, w) * torch.linspace(0.5, 3.0, c).view(1, c, 1, 1) + 0.3
    lam = 0.4
    mean, whiten = whitening(res, lam, eps=0.0)
    cfg = ModelConfig(input_size=(32, 48), feature_stride=16, score="mahalanobis", pool_kernel=4)
    head = AnomalyHead(cfg, c)
    head.set_residual_stats(mean, whiten)
    d = torch.randn(3, c, h, w) * 2
    got = head.error_map(d, torch.zeros_like(d))
    # Reference: per location, (d - mu)^T Sigma^-1 (d - mu) with the documented shrinkage.
    x = res.double().permute(2, 3, 0, 1).reshape(h * w, n, c)
    cov = torch.stack([torch.cov(x[k].T) for k in range(h * w)])
    sigma = (1 - lam) * cov + lam * cov.mean(0, keepdim=True)
    t = d.double().permute(2, 3, 0, 1).reshape(h * w, 3, c) - x.mean(1, keepdim=True)
    ref = torch.einsum("knc,kcd,knd->kn", t, torch.linalg.inv(sigma), t).sqrt().reshape(h, w, 3).permute(2, 0, 1)
    torch.testing.assert_close(got[:, 0].double(), ref, atol=1e-4, rtol=1e-4)


def test_mahalanobis_of_a_mean_reconstruction_is_the_gaussian_baseline():
    """A decoder that outputs the per-location mean scores exactly like PaDiM: the floor of this head."""
    from adtr_edge.evaluation.baselines import gaussian

    torch.manual_seed(1)
    train = torch.randn(60, 5, 2, 2) * torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0]).view(1, 5, 1, 1)
    test = torch.randn(7, 5, 2, 2) * 2
    mean_rec = train.mean(0, keepdim=True)
    mu, W = whitening(train - mean_rec, shrinkage=0.0, eps=0.0)
    head = AnomalyHead(ModelConfig(input_size=(32, 32), feature_stride=16, score="mahalanobis"), 5)
    head.set_residual_stats(mu, W)
    ours = head.error_map(test, mean_rec.expand_as(test))
    theirs = gaussian(train, test, shrinkage=0.0)
    torch.testing.assert_close(ours, theirs, atol=1e-3, rtol=1e-3)


def test_head_norm_is_finite_in_fp16_where_a_plain_sum_of_squares_overflows():
    c = 176
    d = torch.full((1, c, 2, 2), 200.0, dtype=torch.float16)  # 200^2 * 176 = 7.0e6 > 65504
    naive = torch.sqrt((d * d).sum(dim=1))
    assert not torch.isfinite(naive).all()
    head = AnomalyHead(ModelConfig(input_size=(32, 32), feature_stride=16))
    ours = head.error_map(d, torch.zeros_like(d))
    assert torch.isfinite(ours).all()
    assert float(ours.max()) == pytest.approx(200.0 * c ** 0.5, rel=1e-2)


def test_feature_jitter_scales_with_each_tokens_rms():
    g = torch.Generator().manual_seed(0)
    f = torch.ones(2, 8, 4, 4)
    f[1] *= 10
    j = feature_jitter(f, 0.5, g)
    assert j.shape == (2, 16, 8)
    assert float(j[0].std()) == pytest.approx(0.5, rel=0.2)
    assert float(j[1].std()) == pytest.approx(5.0, rel=0.2)


def test_covariance_jitter_follows_each_locations_normal_variation_at_isotropic_energy():
    g = torch.Generator().manual_seed(0)
    n, c = 4000, 3
    scales = torch.tensor([0.5, 1.0, 2.0]).reshape(1, c, 1, 1)
    feats = torch.randn(n, c, 2, 2, generator=g) * scales + 5.0  # one location's spread differs per channel
    feats[:, :, 0, 0] *= 2.0  # and per location
    shape = covariance_jitter_shape(feats)
    assert shape.shape == (4, c, c)
    noise = feature_jitter(feats[:500], 1.0, g, shape)  # (N, K, C)
    std = noise.std(dim=0)  # per location and channel
    expected = feats.std(dim=0).permute(1, 2, 0).reshape(4, c)
    ratio = std / expected  # one gain for every location and direction
    assert torch.allclose(ratio, ratio.mean(), rtol=0.15)
    # the same mean energy per token as UniAD's jitter at 1x the token's RMS
    iso = feature_jitter(feats[:500], 1.0, g)
    energy, iso_energy = noise.pow(2).sum(dim=2).mean(), iso.pow(2).sum(dim=2).mean()
    assert float(energy) == pytest.approx(float(iso_energy), rel=0.1)


def test_jitter_shape_is_checked_before_training():
    check_train_choices(TrainConfig(jitter_shape="covariance"))
    with pytest.raises(AdtrError, match="--jitter-shape 'round'"):
        check_train_choices(TrainConfig(jitter_shape="round"))


def test_time_budget_sets_epochs():
    cfg = TrainConfig(epochs=50, time_budget=100.0)
    assert epochs_for_budget(cfg, 9.0) == 11
    assert epochs_for_budget(cfg, 1.0) == 50  # capped by --epochs
    assert epochs_for_budget(cfg, 500.0) == 1
    assert epochs_for_budget(TrainConfig(epochs=7), 1000.0) == 7  # no budget


class _Fixed(torch.nn.Module):
    """A stand-in transformer: ``kind`` 'identity' copies its input, 'mean' outputs a constant."""

    def __init__(self, kind: str, mean: torch.Tensor):
        super().__init__()
        self.kind, self.mean = kind, mean

    def forward(self, f):
        return f.clone() if self.kind == "identity" else self.mean.expand_as(f).clone()


class _Model(torch.nn.Module):
    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer


def _features_and_probe():
    torch.manual_seed(0)
    normals = torch.randn(12, 8, 4, 4)
    mean = torch.zeros(1, 8, 4, 4)
    cells = torch.zeros(4, 4, 4)
    cells[:, 1:3, 1:3] = 1.0
    defective = normals[:4].clone()
    defective[:, :, 1:3, 1:3] += 3.0
    return normals, mean, DefectProbe(normals[:4], defective, cells)


def test_collapse_figures_tell_identity_from_mean():
    normals, mean, probe = _features_and_probe()
    cpu = torch.device("cpu")
    ident, const = _Model(_Fixed("identity", mean)), _Model(_Fixed("mean", mean))
    assert input_following(ident, normals, mean, cpu) == pytest.approx(1.0)
    assert defect_pass_through(ident, probe, cpu) == pytest.approx(1.0)
    assert input_following(const, normals, mean, cpu) == pytest.approx(0.0, abs=1e-6)
    assert defect_pass_through(const, probe, cpu) == pytest.approx(0.0, abs=1e-6)
    assert collapse_figures(const, normals, mean, None, cpu)["defect_pass_through"] is None


def test_training_logs_collapse_figures_on_generated_data(trained_checkpoint):
    """The session model's history and checkpoint carry both figures, measured on real pasted defects."""
    from adtr_edge.train.checkpoint import read_checkpoint_meta

    ckpt = read_checkpoint_meta(trained_checkpoint)
    for entry in ckpt.history:
        assert np.isfinite(entry["input_following"]) and np.isfinite(entry["defect_pass_through"])
    assert ckpt.extra["input_following"] == ckpt.history[-1]["input_following"]
    assert ckpt.extra["epochs_run"] == len(ckpt.history)


def test_eval_reports_collapse_figures_and_they_separate_controls(trained_checkpoint, sample_dataset):
    from adtr_edge.data.datasets import load_dataset
    from adtr_edge.evaluation.evaluate import collapse_report
    from adtr_edge.preprocessing import preprocess_spec
    from adtr_edge.train.checkpoint import load_checkpoint

    model, ckpt = load_checkpoint(trained_checkpoint)
    test = load_dataset(sample_dataset, "test")
    spec = preprocess_spec(ckpt.model_config)
    cpu = torch.device("cpu")
    report = collapse_report(model, test, cpu, spec)
    assert report["images"] == int((np.asarray(test.labels) == 0).sum())
    assert -1.0 < report["input_following"] < 2.0 and -1.0 < report["defect_pass_through"] < 2.0
    # The same measurement with an identity "transformer" reads 1 and 1: the probe really pastes defects.
    model.transformer = _Fixed("identity", torch.zeros(1))
    ident = collapse_report(model, test, cpu, spec)
    assert ident["input_following"] == pytest.approx(1.0) and ident["defect_pass_through"] == pytest.approx(1.0)


def test_validation_split_is_stable_disjoint_and_covers(sample_dataset):
    from adtr_edge.data.datasets import load_dataset, validation_split

    test = load_dataset(sample_dataset, "test")
    val, rest = validation_split(test, 0.3)
    assert sorted(val + rest) == list(range(len(test))) and not set(val) & set(rest)
    reversed_set = test.subset(list(range(len(test)))[::-1])
    val2, _ = validation_split(reversed_set, 0.3)
    assert sorted(str(reversed_set.paths[i]) for i in val2) == sorted(str(test.paths[i]) for i in val)
    with pytest.raises(AdtrError, match="fraction"):
        validation_split(test, 1.5)


def test_map_blur_keeps_a_constant_map_and_spreads_a_peak():
    from adtr_edge.model.head import MapBlur

    blur = MapBlur(2.0, (20, 24))
    flat = torch.full((1, 1, 20, 24), 3.0)
    torch.testing.assert_close(blur(flat), flat)  # borders too: normalised, not zero-padded
    peak = torch.zeros(1, 1, 20, 24)
    peak[0, 0, 10, 12] = 1.0
    out = blur(peak)
    assert float(out.sum()) == pytest.approx(1.0, rel=1e-3) and float(out.max()) < 0.1


def test_fp16_emulation_rounds_but_stays_close(trained_checkpoint):
    from adtr_edge.evaluation.evaluate import fp16_emulated
    from adtr_edge.train.checkpoint import load_checkpoint

    model, _ = load_checkpoint(trained_checkpoint)
    twin = fp16_emulated(model)
    w = twin.transformer.input_proj.weight
    assert torch.equal(w, w.half().float())  # weights hold FP16 values
    assert not torch.equal(model.transformer.input_proj.weight, w)  # ... the original is untouched
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        a32, s32 = model(x)
        a16, s16 = twin(x)
    assert not torch.equal(s32, s16)
    torch.testing.assert_close(s16, s32, rtol=2e-2, atol=1e-2)


def test_float16_graph_keeps_the_head_float32_and_a_huge_residual_finite(exported_model, tmp_path):
    """The TensorRT 11 float16 transformer graph, run by ONNX Runtime: the error head stays float32."""
    import onnx
    import onnxruntime as ort

    from adtr_edge.engine.onnx_tools import convert_to_fp16, head_nodes

    model = onnx.load(str(exported_model / "transformer.onnx"))
    assert {n.op_type for n in head_nodes(model)} >= {"Sub", "MatMul", "Sqrt", "Resize", "AveragePool", "ReduceMax"}
    half = convert_to_fp16(model)
    onnx.save(half, str(tmp_path / "t16.onnx"))
    casts_to_half = {n.input[0] for n in half.graph.node if n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT16}
    # No head node's float32 result is rounded to float16 on its way to the next head node.
    head16 = [n for n in half.graph.node if n.op_type in ("MatMul", "Sqrt", "ReduceSum") and any(i.endswith("__fp16") for i in n.input)]
    assert not head16 and casts_to_half
    s32 = ort.InferenceSession(str(exported_model / "transformer.onnx"), providers=["CPUExecutionProvider"])
    s16 = ort.InferenceSession(str(tmp_path / "t16.onnx"), providers=["CPUExecutionProvider"])
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_allclose(s16.run(None, {"features": x})[1], s32.run(None, {"features": x})[1], rtol=2e-2)
    huge = x * 3000.0  # a residual far past FP16's 65504 once squared and summed
    score16 = s16.run(None, {"features": huge})[1]
    assert np.isfinite(score16).all()
    np.testing.assert_allclose(score16, s32.run(None, {"features": huge})[1], rtol=2e-2)
