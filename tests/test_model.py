from dataclasses import replace as dc_replace

import numpy as np
import pytest
import torch

from adtr_edge.config import ModelConfig
from adtr_edge.errors import AdtrError
from adtr_edge.model import build_model
from adtr_edge.model.adtr import InGraphPreprocess
from adtr_edge.preprocessing import preprocess_spec
from adtr_edge.model.weights import LITE_WEIGHTS, bundled_lite_path, lukemelas_to_timm, read_state_dict
from adtr_edge.postprocessing import pooled_max_score
from adtr_edge.preprocessing import normalize_numpy

from tests.conftest import tiny_model_config


def test_lite0_weights_map_key_for_key():
    import timm

    full = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    renamed = lukemelas_to_timm(read_state_dict(bundled_lite_path()))
    assert set(renamed) == set(full.state_dict())
    full.load_state_dict(renamed, strict=True)  # shapes agree too


@pytest.mark.parametrize("backbone", ["tf_efficientnet_lite2"])
def test_bigger_lite_weights_map_key_for_key(backbone):
    """Lite2's deeper stages (1, 3, 3, 4, 4, 5, 1) map block for block onto timm's nesting."""
    import timm

    pytest.importorskip(LITE_WEIGHTS[backbone][0])
    full = timm.create_model(backbone, pretrained=False)
    renamed = lukemelas_to_timm(read_state_dict(bundled_lite_path(backbone)), LITE_WEIGHTS[backbone][1])
    assert set(renamed) == set(full.state_dict())
    full.load_state_dict(renamed, strict=True)
    # Lite0's depths place Lite2's blocks in the wrong stages: the names no longer match timm's.
    assert set(lukemelas_to_timm(read_state_dict(bundled_lite_path(backbone)))) != set(full.state_dict())


def test_pretrained_backbone_differs_from_random_and_is_frozen():
    cfg = tiny_model_config()
    m = build_model(cfg)
    r = build_model(cfg, pretrained=False)
    key = "cnn.conv_stem.weight"
    assert not torch.equal(m.backbone.state_dict()[key], r.backbone.state_dict()[key])
    assert all(not p.requires_grad for p in m.backbone.parameters())
    m.train()
    assert not m.backbone.cnn.training  # frozen BatchNorm statistics


def test_in_graph_preprocess_matches_numpy_reference():
    spec = preprocess_spec(ModelConfig(input_size=(32, 48)))
    x = np.random.default_rng(0).integers(0, 256, (3, 32, 48, 3), dtype=np.uint8)
    ours = InGraphPreprocess(spec)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, normalize_numpy(x, spec), atol=1e-6)
    # Lite0 weights want [-1, 1]: a white BGR pixel is +1 in every channel, black is -1.
    assert ours.max() <= 1.0 + 1e-6 and ours.min() >= -1.0 - 1e-6


def test_shapes_and_score_is_max_of_pooled_map():
    cfg = dc_replace(tiny_model_config(), region_grid=0)
    m = build_model(cfg).eval()
    x = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        amap, score = m(x)
        feats = m.backbone(x)
    assert feats.shape == (2, m.backbone.channels, 8, 8)
    assert amap.shape == (2, 1, 64, 64) and score.shape == (2,)
    np.testing.assert_allclose(score.numpy(), pooled_max_score(amap.numpy(), cfg.pool_kernel), rtol=1e-5)


def test_reconstruction_depends_on_input_not_only_queries():
    m = build_model(tiny_model_config(), pretrained=False).eval()
    f1, f2 = torch.randn(1, m.backbone.channels, 8, 8), torch.randn(1, m.backbone.channels, 8, 8)
    with torch.no_grad():
        assert not torch.allclose(m.transformer(f1), m.transformer(f2))


def test_bad_configs_are_one_line_errors():
    with pytest.raises(AdtrError, match="multiple of feature_stride"):
        ModelConfig(input_size=(100, 100))
    with pytest.raises(AdtrError, match="divisible by nhead"):
        ModelConfig(d_model=100, nhead=8)
    with pytest.raises(AdtrError, match="unknown backbone"):
        ModelConfig.for_backbone("resnet9000")


def test_b4_without_weights_is_a_clear_error():
    with pytest.raises(AdtrError, match="--weights"):
        build_model(ModelConfig.for_backbone("efficientnet_b4", input_size=(64, 64)))


def test_weights_file_errors(tmp_path):
    bad = tmp_path / "w.pth"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(AdtrError, match="w.pth"):
        read_state_dict(bad)
    with pytest.raises(AdtrError, match="not found"):
        read_state_dict(tmp_path / "missing.pth")


@pytest.mark.parametrize("region_grid", [3, 4])  # 3 on an 8x8 grid: overlapping windows (kernel 4, stride 2)
def test_regional_score_is_the_larger_z_score_of_map_and_region_means(region_grid):
    from adtr_edge.model.head import AnomalyHead

    cfg = dc_replace(tiny_model_config(), region_grid=region_grid)
    c, g = 24, region_grid
    head = AnomalyHead(cfg, c)
    gen = torch.Generator().manual_seed(0)
    dim, rank = c * g * g, 10
    basis = torch.linalg.qr(torch.randn(dim, rank, generator=gen))[0]
    mean, scale = torch.randn(dim, generator=gen), torch.rand(rank, generator=gen) + 0.5
    head.set_region_stats(mean, basis, scale, 0.7)
    head.set_score_norm(3.0, 2.0, 40.0, 5.0)
    f, rec = torch.randn(3, c, 8, 8, generator=gen), torch.randn(3, c, 8, 8, generator=gen)
    with torch.no_grad():
        amap, score = head(f, rec)
    # Reference: explicit windows that cover the 8 cells, one vector per image, low rank + isotropic.
    d = (f - rec).double().numpy()
    k, stride = {3: (4, 2), 4: (2, 2)}[g]
    x = np.stack([d[:, :, i * stride:i * stride + k, j * stride:j * stride + k].mean(axis=(2, 3))
                  for i in range(g) for j in range(g)], axis=2)  # (N, C, regions)
    x = (x - x.mean(axis=2, keepdims=True)).reshape(3, -1) - mean.double().numpy()  # less the image's own average
    b = basis.double().numpy()
    p = x @ b
    region = np.sqrt(((p * scale.double().numpy()) ** 2).sum(1) + (((x - p @ b.T) * 0.7) ** 2).sum(1))
    expected = np.maximum((pooled_max_score(amap.numpy(), cfg.pool_kernel) - 3.0) / 2.0, (region - 40.0) / 5.0)
    np.testing.assert_allclose(score.numpy(), expected, rtol=1e-4, atol=1e-4)
    assert head.describe()["region_grid"] == g and head.describe()["score_norm"]["region_std"] == 5.0


def test_region_grid_is_checked():
    with pytest.raises(AdtrError, match="region_grid 9"):
        dc_replace(tiny_model_config(), region_grid=9)  # the 8x8 feature grid has no 9 windows
    with pytest.raises(AdtrError, match="nothing to compare"):
        dc_replace(tiny_model_config(), region_grid=1)
    with pytest.raises(AdtrError, match="needs score 'mahalanobis'"):
        dc_replace(tiny_model_config(), score="l2", region_grid=2)
