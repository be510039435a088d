import json

import numpy as np
import pytest
import torch

from adtr_edge.config import TrainConfig
from adtr_edge.data.datasets import load_dataset
from adtr_edge.errors import AdtrError
from adtr_edge.train.checkpoint import load_checkpoint, read_checkpoint_meta
from adtr_edge.train.loop import AnomalyPool, lr_factor, train_model

from tests.conftest import tiny_model_config


def test_trained_checkpoint_roundtrip(trained_checkpoint):
    model, ckpt = load_checkpoint(trained_checkpoint)
    meta = json.loads((trained_checkpoint / "checkpoint.json").read_text())
    assert meta["format"] == "adtr-edge-checkpoint/1"
    assert ckpt.thresholds is not None and ckpt.thresholds.score_min <= ckpt.thresholds.threshold <= ckpt.thresholds.score_max + 1e-6
    assert len(ckpt.history) == 4
    # the loss went down over training
    assert ckpt.history[-1]["loss"] < ckpt.history[0]["loss"]
    # features are standardised with training statistics (not identity)
    assert not torch.allclose(model.backbone.feature_std, torch.ones_like(model.backbone.feature_std))
    assert ckpt.extra["train_paths"] and ckpt.data_summary["n_images"] == 24


def test_no_pickles_in_checkpoint(trained_checkpoint):
    files = sorted(p.name for p in trained_checkpoint.iterdir())
    assert "model.safetensors" in files and not any(f.endswith((".pt", ".pth", ".pkl")) for f in files)


def test_resume_continues_from_saved_epoch(tmp_path, sample_dataset):
    ds = load_dataset(sample_dataset, "train")
    cfg = TrainConfig(epochs=1, batch_size=8, device="cpu")
    train_model(ds, tiny_model_config(), cfg, tmp_path / "run", progress=False)
    more = TrainConfig(epochs=2, batch_size=8, device="cpu")
    result = train_model(ds, tiny_model_config(), more, tmp_path / "run", resume=True, progress=False)
    assert [h["epoch"] for h in result.checkpoint.history] == [1, 2]


def test_anomaly_pool_trains_with_pixel_loss(tmp_path, sample_dataset):
    from adtr_edge.data.anomalies import SyntheticAnomalies

    ds = load_dataset(sample_dataset, "train")
    maker = SyntheticAnomalies("confetti", probability=1.0, seed=0)
    rng = np.random.default_rng(0)
    imgs, masks = zip(*[maker(ds.image(i), rng)[:2] for i in range(8)])
    pool = AnomalyPool(list(imgs), list(masks), "confetti")
    cfg = TrainConfig(epochs=3, batch_size=8, device="cpu", lr=2e-3)
    result = train_model(ds, tiny_model_config(), cfg, tmp_path / "plus", anomalies=pool, progress=False)
    hist = result.checkpoint.history
    assert all(h["loss_kind"] == "pixel" for h in hist)
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_lr_schedules():
    cos = TrainConfig(schedule="cosine", warmup_fraction=0.1)
    assert lr_factor(0, 100, cos) == pytest.approx(0.1)
    assert lr_factor(10, 100, cos) == pytest.approx(1.0)
    assert lr_factor(99, 100, cos) < 0.01
    step = TrainConfig(schedule="step", step_at=0.8)
    assert lr_factor(79, 100, step) == 1.0 and lr_factor(80, 100, step) == 0.1


def test_checkpoint_errors(tmp_path, trained_checkpoint):
    with pytest.raises(AdtrError, match="not found"):
        read_checkpoint_meta(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "checkpoint.json").write_text("{not json")
    (broken / "model.safetensors").write_bytes(b"x")
    with pytest.raises(AdtrError, match="corrupt checkpoint metadata"):
        read_checkpoint_meta(broken)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "checkpoint.json").write_text((trained_checkpoint / "checkpoint.json").read_text())
    (truncated / "model.safetensors").write_bytes((trained_checkpoint / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(AdtrError, match="corrupt checkpoint weights"):
        load_checkpoint(truncated)


def test_loss_needs_anomalies(tmp_path, sample_dataset):
    ds = load_dataset(sample_dataset, "train")
    with pytest.raises(AdtrError, match="needs anomalies"):
        train_model(ds, tiny_model_config(), TrainConfig(epochs=1, loss="pixel", device="cpu"), tmp_path / "x", progress=False)


@pytest.mark.parametrize("source", ["external", "labelled-image", "labelled-pixel"])
def test_each_anomaly_source_trains_and_lowers_its_loss(tmp_path, sample_dataset, source):
    """External images -> image-label loss; labelled anomalies with masks -> pixel loss, without -> image loss."""
    import shutil

    from adtr_edge.train.sources import build_anomaly_pool

    ds = load_dataset(sample_dataset, "train")
    if source == "external":
        pool = build_anomaly_pool(ds, external=sample_dataset / "test" / "good")
    else:
        lab = tmp_path / "lab"
        defect = sorted(p for p in (sample_dataset / "test").iterdir() if p.name != "good")[0]
        shutil.copytree(defect, lab / "images")
        masks = None
        if source == "labelled-pixel":
            masks = sample_dataset / "ground_truth" / defect.name
        pool = build_anomaly_pool(ds, labelled=lab / "images", labelled_masks=masks)
    expected = "pixel" if source == "labelled-pixel" else "image"
    assert pool.pixel_labelled == (expected == "pixel")
    cfg = TrainConfig(epochs=3, batch_size=8, device="cpu", lr=2e-3)
    hist = train_model(ds, tiny_model_config(), cfg, tmp_path / "run", anomalies=pool, progress=False).checkpoint.history
    assert {h["loss_kind"] for h in hist} == {expected}
    assert hist[-1]["loss"] < hist[0]["loss"]


def test_one_anomaly_source_per_run(sample_dataset):
    from adtr_edge.train.sources import build_anomaly_pool

    ds = load_dataset(sample_dataset, "train")
    with pytest.raises(AdtrError, match="one anomaly source"):
        build_anomaly_pool(ds, synthetic="confetti", external=sample_dataset / "test" / "good")


def test_views_are_the_square_symmetries():
    from adtr_edge.train.features import AUGMENTS, VIEWS, augment_views

    im = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    seen = {im.tobytes()} | {VIEWS[v](im).tobytes() for v in VIEWS}
    assert len(seen) == 8  # identity + 7 distinct views: the dihedral group of the square
    assert np.array_equal(VIEWS["hflip"](im)[:, 0], im[:, -1]) and np.array_equal(VIEWS["vflip"](im)[0], im[-1])
    assert augment_views("none") == [] and augment_views("flip") == ["hflip", "vflip"] and len(AUGMENTS["d4"]) == 7
    with pytest.raises(AdtrError, match="--augment 'rot'"):
        augment_views("rot")


def test_augmented_views_are_cached_and_trained_on(tmp_path, sample_dataset):
    ds = load_dataset(sample_dataset, "train")
    cache = tmp_path / "cache"
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", augment="flip")
    steps = []
    import adtr_edge.train.loop as loop

    real_step = loop.step_loss

    def counting(model, f, *a, **k):
        steps.append(f.shape[0])
        return real_step(model, f, *a, **k)

    loop.step_loss = counting
    try:
        result = train_model(ds, tiny_model_config(), cfg, tmp_path / "run", progress=False, feature_cache=cache)
    finally:
        loop.step_loss = real_step
    names = sorted(p.name.rsplit("-", 1)[-1] for p in cache.glob("features-*-*.safetensors"))
    assert names == ["hflip.safetensors", "vflip.safetensors"]
    n_fit = len(result.checkpoint.extra["train_paths"])
    assert sum(steps) == (3 * n_fit // 4) * 4  # one epoch over the fit normals and both views
    assert result.checkpoint.train_config.augment == "flip"
    with pytest.raises(AdtrError, match="--augment"):
        train_model(ds, tiny_model_config(), TrainConfig(epochs=1, device="cpu", augment="rot"), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()


def test_covariance_jitter_is_what_training_adds(tmp_path, sample_dataset):
    """--jitter-shape covariance: training draws its noise from the fit normals' per-location factors."""
    import adtr_edge.train.loop as loop

    ds = load_dataset(sample_dataset, "train")
    cfg = TrainConfig(epochs=1, batch_size=4, device="cpu", feature_jitter=1.0, jitter_shape="covariance")
    shapes = []
    real_jitter = loop.feature_jitter

    def recording(f, scale, g, shape=None):
        shapes.append(shape)
        return real_jitter(f, scale, g, shape)

    loop.feature_jitter = recording
    try:
        result = train_model(ds, tiny_model_config(), cfg, tmp_path / "run", progress=False)
    finally:
        loop.feature_jitter = real_jitter
    c, (h, w) = result.model.backbone.channels, result.model.cfg.grid
    assert shapes and all(s is not None and s.shape == (h * w, c, c) for s in shapes)
    assert result.checkpoint.train_config.jitter_shape == "covariance"
