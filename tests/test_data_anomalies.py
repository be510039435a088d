"""Anomaly sources: exact masks, determinism, probabilities, external and labelled anomalies."""

from __future__ import annotations


import cv2
import numpy as np
import pytest

from adtr_edge.data import (
    ExternalAnomalies,
    SyntheticAnomalies,
    confetti,
    generate_sample_dataset,
    load_labelled_anomalies,
    scar,
    texture_patch,
)
from adtr_edge.data.generate import weave_texture
from adtr_edge.errors import AdtrError


@pytest.fixture(scope="module")
def texture() -> np.ndarray:
    return weave_texture((112, 128), np.random.default_rng(11))


@pytest.fixture(scope="module")
def gray_texture(texture) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(texture, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


def _check_exact(src, out, mask, min_changed=0.8):
    assert out.shape == src.shape and out.dtype == np.uint8
    assert mask.shape == src.shape[:2] and mask.dtype == bool and mask.any()
    np.testing.assert_array_equal(out[~mask], src[~mask])
    changed = (out != src).any(axis=-1)
    assert changed[mask].mean() >= min_changed, changed[mask].mean()


def test_confetti_mask_is_exact(texture, gray_texture):
    for seed in range(20):
        for src in (texture, gray_texture):
            before = src.copy()
            out, mask = confetti(src, np.random.default_rng(seed))
            np.testing.assert_array_equal(src, before)  # input untouched
            _check_exact(src, out, mask)


def test_confetti_keeps_grayscale_images_gray(gray_texture):
    for seed in range(10):
        out, _ = confetti(gray_texture, np.random.default_rng(seed), colored_prob=1.0)
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])


def test_confetti_options(texture):
    rng = np.random.default_rng
    a, ma = confetti(texture, rng(4))
    b, mb = confetti(texture, rng(4))
    c, mc = confetti(texture, rng(5))
    assert np.array_equal(a, b) and np.array_equal(ma, mb) and not np.array_equal(ma, mc)
    # Blob size scales with the image: one tiny blob covers at most its (bounding) square.
    side = 10.0 * min(texture.shape[:2]) / 224.0
    for seed in range(5):
        _, m = confetti(texture, rng(seed), n_blobs=(1, 1), size=(10, 10))
        assert 0 < m.sum() <= (side * 1.5 + 2) ** 2
    weak, mw = confetti(texture, rng(6), strength=0.2, colored_prob=0.0)
    strong, ms = confetti(texture, rng(6), strength=1.0, colored_prob=0.0)
    assert np.array_equal(mw, ms)
    diff = lambda x: np.abs(x.astype(int) - texture.astype(int))[ms].mean()
    assert diff(weak) < 0.5 * diff(strong)
    for bad in (dict(strength=0.0), dict(strength=1.5), dict(n_blobs=(3, 2)), dict(size=(0, 5))):
        with pytest.raises(AdtrError):
            confetti(texture, rng(0), **bad)


def test_scar_is_thin_exact_and_seeded(texture, gray_texture):
    darker = brighter = 0
    for seed in range(20):
        for src in (texture, gray_texture):
            out, mask = scar(src, np.random.default_rng(seed))
            _check_exact(src, out, mask, min_changed=0.9)
            # Strokes, not blobs: each stroke is at most 5 px wide at 224 px, so the mask is a small
            # share of its bounding box and of the image.
            ys, xs = np.nonzero(mask)
            box = (np.ptp(ys) + 1) * (np.ptp(xs) + 1)
            assert mask.mean() < 0.08 and (mask.sum() < 0.6 * box or min(np.ptp(ys), np.ptp(xs)) < 6)
            delta = out[mask].astype(int).mean() - src[mask].astype(int).mean()
            darker += delta < 0
            brighter += delta > 0
    assert darker >= 5 and brighter >= 5  # both signs occur: cracks are dark, scratches bright
    for seed in range(10):
        out, _ = scar(gray_texture, np.random.default_rng(seed), colored_prob=1.0)
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    a, ma = scar(texture, np.random.default_rng(3))
    b, mb = scar(texture, np.random.default_rng(3))
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    weak, mw = scar(texture, np.random.default_rng(6), strength=0.2, colored_prob=0.0)
    strong, ms = scar(texture, np.random.default_rng(6), strength=1.0, colored_prob=0.0)
    assert np.array_equal(mw, ms)
    diff = lambda x: np.abs(x.astype(int) - texture.astype(int))[ms].mean()
    assert diff(weak) < 0.5 * diff(strong)
    tiny = np.full((6, 6, 3), 128, np.uint8)  # walks leave a tiny image: the mask is still non-empty
    for seed in range(10):
        _check_exact(tiny, *scar(tiny, np.random.default_rng(seed)), min_changed=0.9)
    for bad in (dict(strength=0.0), dict(n_strokes=(2, 1)), dict(length=(0, 5)), dict(width=(3, 2))):
        with pytest.raises(AdtrError, match="scar|strength"):
            scar(texture, np.random.default_rng(0), **bad)
    made = SyntheticAnomalies("scar", probability=1.0, seed=1)(texture)
    assert made[2] and made[1].any() and np.array_equal(made[0][~made[1]], texture[~made[1]])


@pytest.mark.parametrize("shape", ["perlin", "polygon", "random"])
def test_texture_patch_from_same_image(texture, shape):
    for seed in range(10):
        out, mask = texture_patch(texture, np.random.default_rng(seed), shape=shape)
        _check_exact(texture, out, mask, min_changed=0.6)


def test_texture_patch_from_sources(texture, tmp_path):
    other = np.full((50, 70, 3), (20, 200, 40), np.uint8)  # other size: resized to the image
    path = tmp_path / "source.png"
    cv2.imwrite(str(path), other)
    for sources in ([other], [path]):
        out, mask = texture_patch(texture, np.random.default_rng(0), source_images=sources)
        _check_exact(texture, out, mask, min_changed=0.99)
        np.testing.assert_array_equal(out[mask], np.broadcast_to([20, 200, 40], out[mask].shape))
    half, mh = texture_patch(texture, np.random.default_rng(0), source_images=[other], strength=0.5)
    expected = np.round(texture[mh].astype(np.float32) * 0.5 + np.array([20, 200, 40]) * 0.5)
    assert np.abs(half[mh].astype(np.float32) - expected).max() <= 1
    with pytest.raises(AdtrError, match="star"):
        texture_patch(texture, np.random.default_rng(0), shape="star")


def test_synthetic_anomalies_probability_and_seed(texture):
    never = SyntheticAnomalies("confetti", probability=0.0)
    img, mask, applied = never(texture)
    assert img is texture and not mask.any() and not applied
    always = SyntheticAnomalies("patch", probability=1.0, strength=0.8, seed=2)
    img, mask, applied = always(texture)
    assert applied and mask.any() and np.array_equal(img[~mask], texture[~mask])
    half = SyntheticAnomalies("confetti", probability=0.5, seed=3)
    hits = [half(texture)[2] for _ in range(200)]
    assert 70 < sum(hits) < 130
    runs = [SyntheticAnomalies("confetti", probability=0.5, seed=9) for _ in range(2)]
    for _ in range(5):
        (a, ma, fa), (b, mb, fb) = (r(texture) for r in runs)
        assert fa == fb and np.array_equal(a, b) and np.array_equal(ma, mb)
    out, _, _ = half(texture, np.random.default_rng(0))  # an explicit generator wins over the own one
    assert np.array_equal(out, half(texture, np.random.default_rng(0))[0])
    for bad in (dict(kind="noise"), dict(probability=1.2), dict(strength=0)):
        with pytest.raises(AdtrError):
            SyntheticAnomalies(**bad)


def test_external_anomalies(tmp_path):
    folder = tmp_path / "outliers"
    folder.mkdir()
    with pytest.raises(AdtrError, match="outliers"):
        ExternalAnomalies(folder)
    with pytest.raises(AdtrError, match="absent"):
        ExternalAnomalies(tmp_path / "absent")
    cv2.imwrite(str(folder / "a.png"), np.zeros((10, 12), np.uint8))
    cv2.imwrite(str(folder / "b.jpg"), np.full((20, 8, 3), 90, np.uint8))
    ext = ExternalAnomalies(folder)
    assert len(ext) == 2 and ext.image(0).shape == (10, 12, 3) and ext.image(1).shape == (20, 8, 3)
    assert ext.random_image(np.random.default_rng(0)).ndim == 3
    s = ext.as_imageset()
    assert s.labels.tolist() == [1, 1] and s.defects == ["external", "external"]


def test_labelled_anomalies_mvtec_and_folder(tmp_path):
    root = generate_sample_dataset(tmp_path, n_train=2, n_test_good=2, n_test_defect=4, size=(32, 32))
    mv = load_labelled_anomalies(root)
    assert len(mv) == 4 and mv.labels.tolist() == [1] * 4 and all(s.mask_path for s in mv)
    with pytest.raises(AdtrError, match="mask_dir"):
        load_labelled_anomalies(root, mask_dir=root / "ground_truth")
    plain = load_labelled_anomalies(root / "test" / "crack", mask_dir=root / "ground_truth" / "crack")
    assert len(plain) == 1 and plain[0].defect == "crack" and plain.mask(0).any()
    image_level = load_labelled_anomalies(root / "test" / "spot")
    assert image_level[0].mask_path is None and not image_level.mask(0).any()
    with pytest.raises(AdtrError, match="nothing"):
        load_labelled_anomalies(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdtrError, match="empty"):
        load_labelled_anomalies(tmp_path / "empty")
