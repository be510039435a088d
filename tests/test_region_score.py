"""The regional image score: cross-fitted normalisation, and what it sees that the map does not."""

from dataclasses import replace as dc_replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from adtr_edge.errors import AdtrError
from adtr_edge.model.head import AnomalyHead
from adtr_edge.train.residual_stats import fit_head, region_whitening
from tests.conftest import tiny_model_config

C = 8


def _normals(n, seed, offset=0.5):
    """Residual-like normals (n, C, 8, 8): channel-correlated noise plus a per-image offset shared by
    every location (the kind of variation a per-location covariance cannot discount jointly)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(C, C, generator=torch.Generator().manual_seed(99)) / C ** 0.5 + torch.eye(C)
    x = torch.einsum("dc,nchw->ndhw", mix, torch.randn(n, C, 8, 8, generator=g))
    return x + offset * torch.randn(n, C, 1, 1, generator=g)


def _fitted(grid=4):
    cfg = dc_replace(tiny_model_config(), region_grid=grid)
    model = SimpleNamespace(head=AnomalyHead(cfg, C), cfg=cfg)
    fit_head(model, None, torch.device("cpu"), shrinkage=0.05, target="identity", residual=_normals(300, 0),
             region_shrinkage=0.3, seed=0)
    return model.head


def _z(head, res):
    n = head.score_norm.double().numpy()
    with torch.no_grad():
        return (head.map_score(res).double().numpy() - n[0]) / n[1], (head.region_score(res).double().numpy() - n[2]) / n[3]


def test_cross_fitted_normalisation_puts_new_normals_near_zero_mean_unit_spread():
    head = _fitted()
    for z in _z(head, _normals(300, 1)):  # normals the head never saw
        assert abs(z.mean()) < 0.35 and 0.7 < z.std() < 1.4, (z.mean(), z.std())
    # In-sample the regional term would look too normal: that is why the spread is cross-fitted.
    _, z_fit = _z(head, _normals(300, 0))
    assert z_fit.mean() < -0.5


def test_the_regional_term_flags_a_faint_shift_spread_over_a_region_that_the_map_misses():
    head = _fitted()
    normal = _normals(100, 2)
    faint = normal.clone()
    faint[:, :, :4, :4] += 1.0  # a quarter of the image, under one normal std in every channel
    map_n, reg_n = _z(head, normal)
    map_f, reg_f = _z(head, faint)
    # Above the 99th percentile of normals: the regional term flags nearly all (0.93 when written),
    # the map, one location at a time, under half (0.40).
    assert (reg_f > np.quantile(reg_n, 0.99)).mean() > 0.85
    assert (map_f > np.quantile(map_n, 0.99)).mean() < 0.6


def test_region_whitening_keeps_at_most_the_data_rank():
    res = _normals(12, 3)
    mean, basis, scale, rest = region_whitening(res, 2, 0.3)
    assert mean.shape == (C * 4,) and basis.shape == (C * 4, 11) and scale.shape == (11,)
    np.testing.assert_allclose(basis.T @ basis, np.eye(11), atol=1e-5)
    assert float(scale.min()) > 0 and rest >= float(scale.max()) * 0.999  # the floor variance is the smallest


def _pooled_head(k=5, weight=0.25, offset=0.5, clip=0.0):
    cfg = dc_replace(tiny_model_config(), region_grid=0, map_pool=k, map_pool_weight=weight, map_pool_clip=clip)
    model = SimpleNamespace(head=AnomalyHead(cfg, C), cfg=cfg)
    fit_head(model, None, torch.device("cpu"), shrinkage=0.05, target="identity", residual=_normals(200, 0, offset))
    return model.head


def test_the_pooled_map_part_is_the_norm_of_the_neighbourhood_mean_at_its_fitted_weight():
    head = _pooled_head()
    res = _normals(200, 0)
    with torch.no_grad():
        local, pooled = head.map_parts(res)
        full = head.residual_map(res)
    # Its weight: a quarter of the per-location part, on average over the normals it was fitted on.
    assert float((head.pool_scale * pooled).mean()) == pytest.approx(0.25 * float(local.mean()), rel=1e-4)
    np.testing.assert_allclose(full, local + head.pool_scale * pooled, rtol=1e-6)
    np.testing.assert_allclose(pooled[:2, 0].double().numpy(), _pooled_reference(head, res[:2]), rtol=1e-4, atol=1e-5)


def _whitened(head, res) -> np.ndarray:
    x = res.double()
    n, c, h, w = x.shape
    flat = x.flatten(2).permute(2, 0, 1) - head.residual_mean.double()
    return torch.matmul(flat, head.residual_whiten.double()).permute(1, 2, 0).reshape(n, c, h, w).numpy()


def _pooled_reference(head, res, cap=None) -> np.ndarray:
    """Whiten each cell (and shorten it to ``cap``), average the whitened vectors over the 5x5 window
    inside the grid (edges average fewer cells), take the norm."""
    t = _whitened(head, res)
    if cap is not None:
        t = t * np.minimum(1.0, cap / np.linalg.norm(t, axis=1, keepdims=True))
    n, _, h, w = t.shape
    ref = np.zeros((n, h, w))
    for i in range(h):
        for j in range(w):
            win = t[:, :, max(0, i - 2):i + 3, max(0, j - 2):j + 3]
            ref[:, i, j] = np.linalg.norm(win.mean(axis=(2, 3)), axis=1)
    return ref


def test_the_clipped_pooled_part_shortens_each_cell_to_the_normal_cells_quantile_first():
    head = _pooled_head(clip=0.9)
    fit = _normals(200, 0)  # what _pooled_head fitted on
    norms = np.linalg.norm(_whitened(head, fit), axis=1)
    assert float(head.pool_cap) == pytest.approx(np.quantile(norms, 0.9), rel=1e-4)
    res = _normals(3, 4)
    res[:, :, 3, 3] += 20.0  # one cell far outside the normal range
    with torch.no_grad():
        local, pooled = head.map_parts(res)
        full = head.residual_map(res)
    np.testing.assert_allclose(pooled[:, 0].double().numpy(), _pooled_reference(head, res, float(head.pool_cap)), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(full, local + head.pool_scale * pooled, rtol=1e-6)
    with torch.no_grad():  # the fitted weight is a quarter of the per-location part, as without the clip
        lf, pf = head.map_parts(fit)
    assert float((head.pool_scale * pf).mean()) == pytest.approx(0.25 * float(lf.mean()), rel=1e-4)


def test_the_clip_keeps_one_strong_cell_from_spreading_over_its_window():
    """What the clip is for (docs/benchmarks.md 1.3, the pooled map part with its cells clipped): a small strong defect raises its
    neighbours through the pooled part (a halo of false positives), unless its cell is clipped."""
    spot = _normals(50, 6, offset=0.0)
    spot[:, :, 4, 4] += 12.0
    halo = (slice(None), 0, 4, 6)  # two cells away: inside the spot's 5x5 window, not the spot
    rises = {}
    for clip in (0.0, 0.99):
        head = _pooled_head(offset=0.0, clip=clip)
        with torch.no_grad():
            normal_map = head.residual_map(_normals(50, 6, offset=0.0))
            rises[clip] = float((head.residual_map(spot)[halo] - normal_map[halo]).mean() / normal_map.std())
    assert rises[0.0] > 3 * rises[0.99] > 0, rises


@pytest.mark.parametrize("clip", [0.0, 0.99])  # the clip leaves a faint change alone (6.33 against 6.37)
def test_the_pooled_part_raises_a_faint_coherent_patch_more_than_the_cells_do(clip):
    head = _pooled_head(offset=0.0, clip=clip)  # cells vary independently: averaging 25 of them cuts the noise 5x
    normal = _normals(50, 5, offset=0.0)
    faint = normal.clone()
    faint[:, :, 2:7, 2:7] += 0.5  # a 5x5-cell patch, half a normal std in every channel
    with torch.no_grad():
        (ln, pn), (lf, pf) = head.map_parts(normal), head.map_parts(faint)
    centre = (slice(None), 0, 4, 4)
    # In units of each part's own spread over normal cells, the patch stands out far more when pooled.
    gain_local = float((lf[centre].mean() - ln[centre].mean()) / ln.std())
    gain_pooled = float((pf[centre].mean() - pn[centre].mean()) / pn.std())
    assert gain_pooled > 4 * gain_local > 0  # 6.4 against 0.83 when written


def test_map_pool_is_checked():
    with pytest.raises(AdtrError, match="map_pool 4"):
        dc_replace(tiny_model_config(), map_pool=4)
    with pytest.raises(AdtrError, match="map_pool_weight"):
        dc_replace(tiny_model_config(), map_pool_weight=-1.0)
    for bad in (1.0, -0.1):
        with pytest.raises(AdtrError, match="map_pool_clip"):
            dc_replace(tiny_model_config(), map_pool_clip=bad)


def test_the_regional_term_is_blind_to_a_change_of_the_whole_image():
    head = _fitted()
    res = _normals(20, 7)
    shifted = res + 0.8 * torch.randn(1, C, 1, 1, generator=torch.Generator().manual_seed(3))  # every cell alike
    with torch.no_grad():
        np.testing.assert_allclose(head.region_score(shifted), head.region_score(res), rtol=1e-4, atol=1e-4)
        assert not torch.allclose(head.map_score(shifted), head.map_score(res), rtol=1e-3)  # the map does see it
