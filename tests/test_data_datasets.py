"""Dataset loaders, splits, fingerprints, guards and batches on small generated trees."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from adtr_edge.data import (
    ImageSet,
    Sample,
    generate_sample_dataset,
    guard_disjoint,
    load_batch,
    load_dataset,
    load_folder,
    load_mvtec,
)
from adtr_edge.errors import AdtrError
from adtr_edge.preprocessing import PreprocessSpec


@pytest.fixture(scope="module")
def sample_root(tmp_path_factory) -> Path:
    return generate_sample_dataset(tmp_path_factory.mktemp("gen"), n_train=12, n_test_good=4, n_test_defect=8,
                                   size=(64, 80), seed=3)


def _write(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img), path
    return path


def _noise(rng, h, w, channels=3):
    shape = (h, w) if channels == 1 else (h, w, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _mask(h, w, y0, x0, y1, x1):
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 255
    return m


@pytest.fixture()
def mixed_mvtec(tmp_path) -> Path:
    """Grayscale .bmp and colour .tif/.jpg of mixed sizes, masks for one defect, none for another."""
    rng = np.random.default_rng(0)
    root = tmp_path / "mixed"
    _write(root / "train/good/a.bmp", _noise(rng, 40, 50, 1))
    _write(root / "train/good/b.tif", _noise(rng, 60, 30))
    _write(root / "train/good/c.jpg", _noise(rng, 33, 47))
    _write(root / "test/good/d.png", _noise(rng, 40, 40, 1))
    _write(root / "test/hole/e.bmp", _noise(rng, 50, 70, 1))
    _write(root / "test/hole/f.tiff", _noise(rng, 30, 20))
    _write(root / "ground_truth/hole/e_mask.png", _mask(50, 70, 5, 5, 20, 30))
    _write(root / "ground_truth/hole/f_mask.png", _mask(30, 20, 0, 0, 3, 3))
    _write(root / "test/smudge/g.jpeg", _noise(rng, 45, 45))  # no ground_truth/smudge: image label only
    return root


def test_generated_dataset_counts_and_masks(sample_root):
    train = load_mvtec(sample_root, "train")
    test = load_mvtec(sample_root, "test")
    assert len(train) == 12 and set(train.defects) == {"good"} and train.labels.sum() == 0
    counts = test.summary()["counts"]
    assert counts == {"crack": 2, "good": 4, "missing": 2, "scratch": 2, "spot": 2}
    for i, s in enumerate(test):
        img, mask = test.load(i)
        assert img.shape == (64, 80, 3) and img.dtype == np.uint8
        assert mask.shape == (64, 80) and mask.dtype == bool
        if s.label:
            assert s.mask_path == sample_root / "ground_truth" / s.defect / f"{s.path.stem}_mask.png"
            assert mask.any()
            raw = cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE)
            assert set(np.unique(raw)) <= {0, 255}
            np.testing.assert_array_equal(mask, raw == 255)
        else:
            assert s.mask_path is None and not mask.any()


def test_mvtec_mixed_formats_sizes_and_image_level_defects(mixed_mvtec):
    train = load_mvtec(mixed_mvtec, "train").validate()
    assert [p.name for p in train.paths] == ["a.bmp", "b.tif", "c.jpg"]
    assert [train.image(i).shape for i in range(3)] == [(40, 50, 3), (60, 30, 3), (33, 47, 3)]
    test = load_mvtec(mixed_mvtec, "test").validate()
    by_name = {s.path.name: s for s in test}
    assert by_name["d.png"].label == 0 and by_name["d.png"].defect == "good"
    assert by_name["e.bmp"].mask_path.name == "e_mask.png"
    assert by_name["g.jpeg"].label == 1 and by_name["g.jpeg"].defect == "smudge" and by_name["g.jpeg"].mask_path is None
    i = test.paths.index(by_name["g.jpeg"].path)
    assert test.mask(i).shape == (45, 45) and not test.mask(i).any()
    i = test.paths.index(by_name["e.bmp"].path)
    assert test.mask(i).sum() == 15 * 25
    np.testing.assert_array_equal(test.labels, [0, 1, 1, 1])


def test_missing_mask_in_partially_labelled_defect_is_an_error(mixed_mvtec):
    (mixed_mvtec / "ground_truth/hole/f_mask.png").unlink()
    with pytest.raises(AdtrError, match="f_mask.png"):
        load_mvtec(mixed_mvtec, "test")


def test_mask_size_mismatch_is_an_error(mixed_mvtec):
    _write(mixed_mvtec / "ground_truth/hole/e_mask.png", _mask(49, 70, 0, 0, 5, 5))
    test = load_mvtec(mixed_mvtec, "test")
    i = [p.name for p in test.paths].index("e.bmp")
    with pytest.raises(AdtrError, match="e_mask.png"):
        test.mask(i)
    with pytest.raises(AdtrError, match="e_mask.png"):
        test.validate()


def test_corrupt_image_is_reported_by_name(mixed_mvtec):
    (mixed_mvtec / "train/good/b.tif").write_bytes(b"not an image at all")
    train = load_mvtec(mixed_mvtec, "train")  # listing does not decode
    with pytest.raises(AdtrError, match="b.tif"):
        train.validate()
    with pytest.raises(AdtrError, match="b.tif"):
        train.image(1)


def test_missing_folders_and_empty_train_set(tmp_path, mixed_mvtec):
    with pytest.raises(AdtrError, match="nowhere"):
        load_mvtec(tmp_path / "nowhere")
    with pytest.raises(AdtrError, match="train"):
        load_mvtec(mixed_mvtec / "test", "train")
    for f in (mixed_mvtec / "train/good").iterdir():
        f.unlink()
    with pytest.raises(AdtrError, match="empty training set"):
        load_mvtec(mixed_mvtec, "train")
    with pytest.raises(AdtrError, match="split"):
        load_mvtec(mixed_mvtec, "val")


def _plain_tree(tmp_path, n_normal=10):
    rng = np.random.default_rng(1)
    normal = tmp_path / "ok"
    for i in range(n_normal):
        _write(normal / f"n{i:02d}.png", _noise(rng, 20 + i, 30))
    bad = tmp_path / "bad"
    masks = tmp_path / "masks"
    _write(bad / "x.png", _noise(rng, 24, 24))
    _write(bad / "y.jpg", _noise(rng, 30, 20, 1))
    _write(masks / "x_mask.png", _mask(24, 24, 0, 0, 4, 4))
    _write(masks / "y.png", _mask(30, 20, 10, 10, 12, 12))  # the bare <stem>.png convention
    return normal, bad, masks


def test_folder_layout_split_and_masks(tmp_path):
    normal, bad, masks = _plain_tree(tmp_path)
    train = load_folder(normal, bad, masks, split="train", test_fraction=0.3, seed=5)
    test = load_folder(normal, bad, masks, split="test", test_fraction=0.3, seed=5)
    assert len(train) == 7 and train.labels.sum() == 0
    assert test.labels.tolist().count(0) == 3 and test.labels.sum() == 2
    assert not set(train.paths) & set(test.paths)
    assert set(train.paths) | {p for p, s in zip(test.paths, test) if s.label == 0} == set(normal.iterdir())
    masks_by_name = {s.path.name: s.mask_path.name for s in test if s.label}
    assert masks_by_name == {"x.png": "x_mask.png", "y.jpg": "y.png"}
    assert {s.defect for s in test if s.label} == {"bad"}
    guard_disjoint(train, test)
    # Deterministic per seed; another seed holds out other images.
    again = load_folder(normal, bad, masks, split="train", test_fraction=0.3, seed=5)
    assert again.paths == train.paths
    other = load_folder(normal, split="train", test_fraction=0.3, seed=6)
    assert other.paths != train.paths


def test_folder_layout_errors(tmp_path):
    normal, bad, masks = _plain_tree(tmp_path)
    with pytest.raises(AdtrError, match="missing"):
        load_folder(tmp_path / "missing")
    with pytest.raises(AdtrError, match="test_fraction"):
        load_folder(normal, test_fraction=1.0)
    (masks / "y.png").unlink()
    with pytest.raises(AdtrError, match="y.jpg"):
        load_folder(normal, bad, masks, split="test")
    empty_masks = tmp_path / "empty_masks"
    empty_masks.mkdir()
    with pytest.raises(AdtrError, match="empty_masks"):
        load_folder(normal, bad, empty_masks, split="test")
    # Without a mask folder the anomalies carry image labels only.
    test = load_folder(normal, bad, split="test")
    assert all(s.mask_path is None for s in test)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AdtrError, match="empty"):
        load_folder(empty)


def test_folder_with_one_subfolder_per_defect(tmp_path):
    normal, _, _ = _plain_tree(tmp_path)
    rng = np.random.default_rng(2)
    _write(tmp_path / "defects/dent/a.png", _noise(rng, 16, 16))
    _write(tmp_path / "defects/rust/b.png", _noise(rng, 16, 16))
    _write(tmp_path / "gt/dent/a_mask.png", _mask(16, 16, 0, 0, 8, 8))
    test = load_folder(normal, tmp_path / "defects", tmp_path / "gt", split="test")
    anomalies = {s.defect: s.mask_path for s in test if s.label}
    assert anomalies == {"dent": tmp_path / "gt/dent/a_mask.png", "rust": None}


def test_load_dataset_detects_layout(tmp_path, sample_root):
    assert load_dataset(sample_root, "test").paths == load_mvtec(sample_root, "test").paths
    normal, bad, masks = _plain_tree(tmp_path)
    assert load_dataset(normal, "train").paths == load_folder(normal, split="train").paths
    spec = {"normal_dir": normal, "anomalous_dir": bad, "mask_dir": masks, "test_fraction": 0.5, "seed": 1}
    assert len(load_dataset(spec, "test")) == 5 + 2
    with pytest.raises(AdtrError, match="unknown keys"):
        load_dataset({"normal_dir": normal, "colour": "red"})
    with pytest.raises(AdtrError, match="neither"):
        load_dataset(tmp_path)


def test_split_is_stratified_and_deterministic(sample_root):
    test = load_mvtec(sample_root, "test")
    rest, held = test.split(0.5, seed=7)
    assert len(rest) + len(held) == len(test)
    assert sorted(held.defects) == ["crack", "good", "good", "missing", "scratch", "spot"]
    assert held.paths == test.split(0.5, seed=7)[1].paths
    assert not set(rest.paths) & set(held.paths)
    with pytest.raises(AdtrError, match="fraction"):
        test.split(1.5)
    sub = test.subset([3, 1])
    assert sub.paths == [test.paths[3], test.paths[1]]


def test_summary_fingerprint_is_location_independent_and_content_sensitive(tmp_path, sample_root):
    a = load_mvtec(sample_root, "train").summary()
    copy = shutil.copytree(sample_root, tmp_path / "elsewhere")
    b = load_mvtec(copy, "train").summary()
    assert a["files_sha256"] == b["files_sha256"] and a["root"] != b["root"]
    assert a["counts"] == {"good": 12} and a["n_images"] == 12
    with open(copy / "train/good/000.png", "ab") as f:
        f.write(b"\0")
    assert load_mvtec(copy, "train").summary()["files_sha256"] != a["files_sha256"]
    (copy / "train/good/001.png").rename(copy / "train/good/zzz.png")
    assert load_mvtec(copy, "train").summary()["files_sha256"] != a["files_sha256"]


def test_guard_disjoint_by_path_and_by_content(tmp_path, sample_root):
    train = load_mvtec(sample_root, "train")
    test = load_mvtec(sample_root, "test")
    guard_disjoint(train, test)
    with pytest.raises(AdtrError, match="000.png"):
        guard_disjoint(train, ImageSet([train[0]]))
    twin = tmp_path / "renamed.png"
    shutil.copy(train.paths[4], twin)
    leaky = ImageSet(test.samples + [Sample(twin, 0, "good", None)])
    with pytest.raises(AdtrError, match="renamed.png"):
        guard_disjoint(train, leaky)


def test_load_batch_shapes(mixed_mvtec):
    test = load_mvtec(mixed_mvtec, "test")
    spec = PreprocessSpec(height=32, width=48)
    batch, masks = load_batch(test, [1, 3, 0], spec)
    assert batch.shape == (3, 32, 48, 3) and batch.dtype == np.uint8 and batch.flags.c_contiguous
    assert masks.shape == (3, 32, 48) and masks.dtype == bool
    assert masks[0].any() and not masks[1].any() and not masks[2].any()
    with pytest.raises(AdtrError):
        load_batch(test, [], spec)
