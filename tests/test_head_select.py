"""The head's shrinkage chosen from synthetic defects on held-out normals (adtr_edge.train.head_select)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adtr_edge.config import TrainConfig
from adtr_edge.data.datasets import load_dataset
from adtr_edge.errors import AdtrError
from adtr_edge.train import head_select as H
from adtr_edge.train.checkpoint import load_checkpoint


def test_synthetic_images_keep_the_clean_ones_first_and_change_only_the_masked_pixels():
    rng = np.random.default_rng(0)
    clean = [rng.integers(0, 255, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    images, masks, labels = H.synthetic_images(clean, copies=2, strength=0.4, seed=1)
    assert len(images) == len(masks) == len(labels) == 3 + 3 * 2 * len(H.KINDS)
    assert labels.tolist() == [0] * 3 + [1] * 12
    for i, im in enumerate(clean):
        assert images[i] is im and not masks[i].any()
    source = clean * (2 * len(H.KINDS))
    for out, mask, base in zip(images[3:], masks[3:], source):
        assert mask.any()
        np.testing.assert_array_equal(out[~mask], base[~mask])


def test_default_copies_reach_the_minimum_number_of_defects():
    assert H.default_copies(76) == 2  # magnetic tile: 304 defects
    assert H.default_copies(12) == 13 and 12 * 13 * len(H.KINDS) >= H.MIN_DEFECTS  # the generated tiles
    assert H.default_copies(0) >= 2


def known_answer_set(model, fit_n: int = 200, n: int = 24, seed: int = 0, offset: float = 1.0):
    """Normals whose channels vary on two scales (half with std 10, half with 0.1), and defects that
    are an offset of 1 in the quiet half on a block of grid cells: the average variance (shrinkage 1,
    the L2 norm) drowns them in the loud channels, the per-location covariance (shrinkage 0) sees them."""
    g = torch.Generator().manual_seed(seed)
    c, (h, w) = model.backbone.channels, model.cfg.grid
    scale = torch.ones(1, c, 1, 1)
    scale[:, : c // 2], scale[:, c // 2:] = 10.0, 0.1
    fit = torch.randn(fit_n, c, h, w, generator=g) * scale
    feats = torch.randn(n, c, h, w, generator=g) * scale
    labels = np.array([0] * (n // 2) + [1] * (n - n // 2))
    cells = torch.zeros(n, h, w)
    for i in np.flatnonzero(labels):
        y, x = int(torch.randint(0, h - 2, (1,), generator=g)), int(torch.randint(0, w - 2, (1,), generator=g))
        cells[i, y:y + 2, x:x + 2] = 1
    quiet = (scale < 1).float()
    feats = feats + offset * quiet * cells.unsqueeze(1)
    H_img, W_img = model.cfg.input_size
    masks = torch.nn.functional.interpolate(cells.unsqueeze(1), size=(H_img, W_img), mode="nearest")[:, 0].numpy() > 0.5
    return fit, H.SyntheticSet(feats, masks, labels, strength=1.0)


def test_select_moves_to_the_head_that_sees_the_defects(trained_checkpoint):
    model, _ = load_checkpoint(trained_checkpoint)
    fit, synthetic = known_answer_set(model)
    d = H.select_shrinkage(model, fit, synthetic, configured=1.0, resamples=100)
    rows = {r["shrinkage"]: r for r in d["candidates"]}
    assert set(rows) == set(H.CANDIDATES)
    assert rows[0.0]["mean"] > rows[1.0]["mean"] + 0.05
    assert d["best"] <= 0.2 and d["shrinkage"] == d["best"]
    assert d["best_ahead"] >= d["confidence"] and d["advantage_points"][1] > 0
    for r in d["candidates"]:
        assert r["mean"] == pytest.approx(np.mean([r[m] for m in H.METRICS]))


def test_select_keeps_the_configured_shrinkage_when_the_defects_are_not_there(trained_checkpoint):
    model, _ = load_checkpoint(trained_checkpoint)
    fit, synthetic = known_answer_set(model, offset=0.0)  # masks, but nothing changed under them: every head guesses
    d = H.select_shrinkage(model, fit, synthetic, configured=0.05, resamples=200)
    assert d["best"] != 0.05 and d["best_ahead"] < d["confidence"] == pytest.approx(1 - 0.05 / 9, abs=1e-4)
    assert d["shrinkage"] == 0.05 and d["configured"] == 0.05
    assert d["advantage_points"][1] < 0 < d["advantage_points"][2]
    same = H.select_shrinkage(model, fit, synthetic, configured=0.9, candidates=(0.9,), resamples=100)
    assert same["shrinkage"] == same["best"] == 0.9 and same["best_ahead"] is None


def test_training_records_the_chosen_shrinkage(trained_checkpoint):
    _, ckpt = load_checkpoint(trained_checkpoint)
    chosen = ckpt.extra["score_selection"]
    assert chosen["shrinkage"] == ckpt.train_config.score_shrinkage
    assert chosen["configured"] == TrainConfig().score_shrinkage
    n = ckpt.extra["val_images"]
    assert chosen["synthetic_defects"] == H.default_copies(n) * len(H.KINDS) * n >= H.MIN_DEFECTS


def test_too_few_held_out_normals_keep_the_configured_head(tmp_path):
    from adtr_edge.data.generate import generate_sample_dataset
    from adtr_edge.train.loop import train_model
    from tests.conftest import tiny_model_config

    data = generate_sample_dataset(tmp_path / "small", n_train=20, n_test_good=2, n_test_defect=2, size=(64, 64), seed=1)
    cfg = TrainConfig(epochs=1, batch_size=8, val_fraction=0.1, device="cpu")  # 2 held-out normals
    result = train_model(load_dataset(data, "train"), tiny_model_config(), cfg, tmp_path / "ckpt", progress=False)
    assert result.checkpoint.extra["val_images"] < H.MIN_HELD_OUT
    assert result.checkpoint.extra["score_selection"] is None
    assert result.checkpoint.train_config.score_shrinkage == cfg.score_shrinkage


def test_the_export_says_how_its_head_was_set(trained_checkpoint, exported_model):
    import json

    _, ckpt = load_checkpoint(trained_checkpoint)
    head = json.loads((exported_model / "manifest.json").read_text())["meta"]["score_head"]
    assert head["score"] == "mahalanobis" and head["shrinkage"] == ckpt.train_config.score_shrinkage
    assert head["selection"]["shrinkage"] == head["shrinkage"] and "candidates" not in head["selection"]
    # ... and how its image score is made, with the normalisation the graph applies
    from adtr_edge.metadata import read_onnx_metadata

    assert head["region_grid"] == ckpt.model_config.region_grid == 4 and head["region_shrinkage"] == ckpt.train_config.region_shrinkage
    rule = read_onnx_metadata(exported_model / "transformer.onnx").image_score
    assert rule["region_grid"] == 4 and rule["score_norm"]["region_std"] > 0 and rule["score_norm"]["map_std"] > 0
    # the map's pooled part (the test config has one): its window, fitted weight and fitted clip travel too
    model, _ = load_checkpoint(trained_checkpoint)
    assert rule["map_pool"] == {"window": 5, "weight": pytest.approx(float(model.head.pool_scale)), "clip_quantile": 0.99,
                                "cap": pytest.approx(float(model.head.pool_cap))}
    assert 0 < rule["map_pool"]["cap"] < 1e4  # fitted, not the unfitted start


def test_a_bad_score_select_fails_before_any_feature(sample_dataset, tmp_path):
    from adtr_edge.train.loop import train_model
    from tests.conftest import tiny_model_config

    with pytest.raises(AdtrError, match="--score-select 'often'"):
        train_model(load_dataset(sample_dataset, "train"), tiny_model_config(), TrainConfig(score_select="often", device="cpu"),
                    tmp_path / "bad", progress=False, feature_cache=tmp_path / "cache")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "bad").exists()


def test_with_a_regional_term_the_candidates_are_judged_by_the_shipped_image_score(trained_checkpoint):
    """A faint shift over a quarter of the grid, in every channel: the regional term sees it better
    than the map does. Judged by the map's score, the candidates' image AUROC understates what the
    shipped head (the z-max of both terms) finds; the maps, and so pixel AUROC and AUPRO, are the same."""
    model, ckpt = load_checkpoint(trained_checkpoint)
    assert model.cfg.region_grid
    g = torch.Generator().manual_seed(3)
    c, (h, w) = model.backbone.channels, model.cfg.grid
    fit, feats = torch.randn(200, c, h, w, generator=g), torch.randn(60, c, h, w, generator=g)
    labels = np.array([0] * 30 + [1] * 30)
    feats[30:, :, : h // 2, : w // 2] += 0.2
    masks = np.zeros((60, *model.cfg.input_size), bool)
    masks[30:, : model.cfg.input_size[0] // 2, : model.cfg.input_size[1] // 2] = True
    synthetic = H.SyntheticSet(feats, masks, labels, strength=1.0)
    kw = dict(configured=0.05, candidates=(0.05, 0.5), resamples=50)
    by_map = H.select_shrinkage(model, fit, synthetic, **kw)
    shipped = H.select_shrinkage(model, fit, synthetic, region_shrinkage=ckpt.train_config.region_shrinkage, **kw)
    assert by_map["image_score"] == "the map's score" and shipped["image_score"].startswith("z-max")
    for a, b in zip(by_map["candidates"], shipped["candidates"]):
        assert b["image_auroc"] > a["image_auroc"] + 0.05  # +0.22 and +0.08 when written
        assert (a["pixel_auroc"], a["aupro"]) == (b["pixel_auroc"], b["aupro"])  # the maps are the same
    # ... and the shipped figure is the z-max of the map's score and the regional term, by hand
    from adtr_edge.evaluation.metrics import auroc
    from adtr_edge.train.residual_stats import reconstruct, residuals

    head = next(hd for lam, hd in H.candidate_heads(model, residuals(model, fit, torch.device("cpu")), ckpt.train_config.score_target, (0.05,)))
    rec = reconstruct(model, feats, torch.device("cpu"))
    scores, _ = H.head_maps(head, feats, rec)
    (region,) = H.region_term_scores(model, residuals(model, fit, torch.device("cpu")), [feats - rec], ckpt.train_config.region_shrinkage)
    assert shipped["candidates"][0]["image_auroc"] == pytest.approx(auroc(H.zscore_max(scores, region, labels == 0), labels))
    # the rule itself: each term's z-score on the clean images' scale, then the larger
    m, r, clean = np.array([1.0, 3.0, 5.0, 2.0]), np.array([10.0, 30.0, 10.0, 90.0]), np.array([True, True, False, False])
    np.testing.assert_allclose(H.zscore_max(m, r, clean), np.maximum((m - 2) / 1, (r - 20) / 10))
