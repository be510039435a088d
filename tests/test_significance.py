"""Paired bootstrap: the binned pixel metrics agree with the exact ones, and the intervals behave."""

import numpy as np
import pytest

from adtr_edge.errors import AdtrError
from adtr_edge.evaluation.metrics import aupro, auroc, pixel_auroc
from adtr_edge.evaluation.significance import _PixelHistograms, _stratified_weights, paired_bootstrap, paired_draws


def _case(n=40, size=32, signal=1.5, seed=0):
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), bool)
    labels = np.zeros(n, int)
    for i in range(n // 2, n):
        labels[i] = 1
        y, x = rng.integers(2, size - 10, 2)
        masks[i, y:y + rng.integers(2, 8), x:x + rng.integers(2, 8)] = True
        if i % 3 == 0:  # a second region in some images
            masks[i, -4:-1, 1:4] = True
    maps = rng.normal(size=(n, size, size)) + signal * masks
    return maps, masks, labels, maps.reshape(n, -1).max(axis=1)


def test_binned_pixel_metrics_match_the_exact_ones_on_a_resample():
    maps, masks, labels, _ = _case()
    hist = _PixelHistograms(maps, masks, 2048)
    w = _stratified_weights(labels, 1, seed=3)[0]
    picked = np.repeat(np.arange(len(labels)), w.astype(int))
    assert hist.pixel_auroc(w) == pytest.approx(pixel_auroc(maps[picked], masks[picked]), abs=1e-3)
    assert hist.aupro(w) == pytest.approx(aupro(maps[picked], masks[picked]), abs=2e-3)
    assert hist.aupro(np.ones(len(labels))) == pytest.approx(aupro(maps, masks), abs=2e-3)


def test_resamples_keep_the_class_balance():
    labels = np.array([0] * 7 + [1] * 13)
    w = _stratified_weights(labels, 50, seed=0)
    assert np.all(w[:, :7].sum(axis=1) == 7) and np.all(w[:, 7:].sum(axis=1) == 13)
    assert len({tuple(r) for r in w}) > 40  # the resamples differ


def test_a_method_against_itself_differs_by_exactly_nothing():
    maps, masks, labels, scores = _case()
    same = {"scores": scores, "maps": maps}
    result = paired_bootstrap(same, same, labels, masks, resamples=20)
    for m in ("image_auroc", "pixel_auroc", "aupro"):
        d = result.difference[m]
        assert (d.estimate, d.low, d.high) == (0.0, 0.0, 0.0)
        assert result.a_better[m] == 0.0
        assert result.a[m].low <= result.a[m].estimate <= result.a[m].high


def test_a_clearly_better_method_is_ahead_in_every_resample():
    maps, masks, labels, scores = _case(signal=3.0)
    weak_maps, _, _, weak_scores = _case(signal=0.3, seed=1)
    result = paired_bootstrap({"scores": scores, "maps": maps}, {"scores": weak_scores, "maps": weak_maps}, labels, masks,
                              resamples=100)
    assert result.difference["pixel_auroc"].low > 0 and result.a_better["pixel_auroc"] == 1.0
    assert result.difference["aupro"].low > 0
    assert result.a["image_auroc"].estimate == auroc(scores, labels)


def test_paired_draws_are_the_resamples_paired_bootstrap_summarises():
    maps, masks, labels, scores = _case(signal=3.0)
    weak_maps, _, _, weak_scores = _case(signal=0.3, seed=1)
    a, b = {"scores": scores, "maps": maps}, {"scores": weak_scores, "maps": weak_maps}
    exact, draws = paired_draws({"a": a, "b": b}, labels, masks, resamples=50, seed=4)
    result = paired_bootstrap(a, b, labels, masks, resamples=50, seed=4)
    for m in ("image_auroc", "pixel_auroc", "aupro"):
        assert draws["a"][m].shape == (50,)
        assert exact["a"][m] - exact["b"][m] == pytest.approx(result.difference[m].estimate)
        assert np.percentile(draws["a"][m] - draws["b"][m], 2.5) == pytest.approx(result.difference[m].low)
        assert float((draws["a"][m] > draws["b"][m]).mean()) == result.a_better[m]


def test_image_scores_alone_give_the_image_metric_only():
    _, _, labels, scores = _case()
    result = paired_bootstrap({"scores": scores}, {"scores": scores[::-1].copy()}, labels, resamples=20)
    assert set(result.difference) == {"image_auroc"}


def test_one_class_is_refused():
    with pytest.raises(AdtrError, match="both normal and anomalous"):
        paired_bootstrap({"scores": np.ones(4)}, {"scores": np.ones(4)}, np.zeros(4), resamples=20)


def test_compare_scored_refuses_models_scored_at_another_size():
    from adtr_edge.evaluation.evaluate import Scored, compare_scored

    maps, masks, labels, scores = _case()
    paths = [f"img{i}.png" for i in range(len(labels))]
    a = Scored(scores, maps, masks, labels, ["d"] * len(labels), paths)
    small = Scored(scores, maps[:, ::2, ::2], masks[:, ::2, ::2], labels, ["d"] * len(labels), paths)
    with pytest.raises(AdtrError, match="same size"):
        compare_scored(a, small, resamples=20)
    same = compare_scored(a, a, resamples=20)
    assert same["aupro"]["difference"] == [0.0, 0.0, 0.0] and same["reference"]["image_auroc"] == auroc(scores, labels)


def test_defects_painted_in_part_give_finite_pixel_intervals(recwarn):
    """Reviews where some defects are painted and some only labelled: a draw of only the unpainted
    ones would have no anomalous pixel, so they are a stratum of their own."""
    maps, masks, labels, scores = _case(n=24)
    unpainted = np.flatnonzero(labels == 1)[:10]
    masks[unpainted] = False  # ten of twelve defects carry no mask
    a, b = {"scores": scores, "maps": maps}, {"scores": scores * 0.5, "maps": maps * 0.5 + 0.1}
    result = paired_bootstrap(a, b, labels, masks, resamples=200, seed=1)
    for metric in ("pixel_auroc", "aupro"):
        iv = result.a[metric]
        assert np.isfinite([iv.low, iv.high]).all() and iv.low <= iv.high
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    strata = labels.copy()
    strata[unpainted] = 2
    w = _stratified_weights(strata, 30, seed=0)
    assert np.all(w[:, unpainted].sum(axis=1) == 10) and np.all(w[:, labels == 0].sum(axis=1) == 12)
