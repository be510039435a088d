"""The generated sample dataset and video: exact masks, determinism, atomic writes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from adtr_edge.data import DEFECT_KINDS, draw_defect, generate_sample_dataset, generate_video, load_mvtec
from adtr_edge.data.generate import weave_texture
from adtr_edge.errors import AdtrError


def _tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    kw = dict(n_train=3, n_test_good=2, n_test_defect=4, size=(48, 64))
    a = _tree_bytes(generate_sample_dataset(tmp_path / "a", seed=1, **kw))
    b = _tree_bytes(generate_sample_dataset(tmp_path / "b", seed=1, **kw))
    c = _tree_bytes(generate_sample_dataset(tmp_path / "c", seed=2, **kw))
    assert a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a if k.startswith("train"))
    assert sorted(k for k in a if k.startswith("ground_truth")) == [
        f"ground_truth/{kind}/000_mask.png" for kind in sorted(DEFECT_KINDS)
    ]


def test_normal_images_vary_but_share_structure():
    imgs = [weave_texture((64, 64), np.random.default_rng(s)).astype(np.float32) for s in range(4)]
    assert all(not np.array_equal(imgs[0], im) for im in imgs[1:])
    means = [im.mean() for im in imgs]
    assert max(means) - min(means) < 40  # same kind of picture, not unrelated noise
    assert all(im.std() > 15 for im in imgs)  # a visible weave, not a flat field


@pytest.mark.parametrize("kind", DEFECT_KINDS)
def test_defect_mask_is_exactly_the_changed_pixels(kind):
    for seed in range(5):
        rng = np.random.default_rng(seed)
        clean = weave_texture((96, 96), rng)
        img, mask = draw_defect(clean, rng, kind)
        assert mask.dtype == bool and mask.shape == (96, 96) and mask.sum() >= 10
        np.testing.assert_array_equal(img[~mask], clean[~mask])
        changed = (img != clean).any(axis=-1)
        assert changed[mask].mean() > 0.9, (kind, seed, changed[mask].mean())
        assert np.array_equal(clean, weave_texture((96, 96), np.random.default_rng(seed)))  # input untouched


def test_unknown_defect_kind():
    with pytest.raises(AdtrError, match="bubble"):
        draw_defect(np.zeros((40, 40, 3), np.uint8), np.random.default_rng(0), "bubble")


def test_existing_folder_and_overwrite(tmp_path):
    root = generate_sample_dataset(tmp_path, n_train=2, n_test_good=1, n_test_defect=1, size=(32, 32))
    with pytest.raises(AdtrError, match="already exists"):
        generate_sample_dataset(tmp_path, n_train=2, size=(32, 32))
    generate_sample_dataset(tmp_path, n_train=5, n_test_good=1, n_test_defect=2, size=(32, 32), overwrite=True)
    assert len(load_mvtec(root, "train")) == 5 and len(load_mvtec(root, "test")) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["tiles"]  # no temp folders left behind


@pytest.mark.parametrize("bad", [dict(size=(16, 64)), dict(n_train=0), dict(n_test_good=-1), dict(category="../x")])
def test_bad_generator_arguments(tmp_path, bad):
    with pytest.raises(AdtrError):
        generate_sample_dataset(tmp_path, **bad)
    assert not any(tmp_path.iterdir())


def _read_frames(path):
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame.astype(np.float32))
    cap.release()
    return frames


def test_video_truth_and_visible_defects(tmp_path):
    defects = {4, 9}
    video = generate_video(tmp_path / "belt.mp4", n_frames=12, defect_frames=defects, size=(64, 96), fps=5, seed=3)
    clean = generate_video(tmp_path / "clean.mp4", n_frames=12, defect_frames=set(), size=(64, 96), fps=5, seed=3)
    assert video.path.exists() and video.path.suffix in (".mp4", ".avi")
    assert video.path.stat().st_mode & 0o777 == 0o644  # shared like every artefact, not mkstemp's 0600
    assert list(video) == [(i, i in defects) for i in range(12)] and len(video) == 12
    frames, reference = _read_frames(video.path), _read_frames(clean.path)
    assert len(frames) == 12 and frames[0].shape == (64, 96, 3)
    # A defect shows as a large local difference against the same frame without it.
    local_diff = [cv2.blur(np.abs(f - r).mean(axis=-1), (9, 9)).max() for f, r in zip(frames, reference)]
    for i in range(12):
        if i in defects:
            assert local_diff[i] > 25, (i, local_diff)
        elif i < min(defects):
            assert local_diff[i] < 1, (i, local_diff)  # identical input before any defect
        else:
            assert local_diff[i] < 12, (i, local_diff)  # codec history only
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_video_arguments(tmp_path):
    with pytest.raises(AdtrError, match="defect_frames"):
        generate_video(tmp_path / "v.mp4", n_frames=5, defect_frames={5})
    with pytest.raises(AdtrError, match="v.mkv"):
        generate_video(tmp_path / "v.mkv", n_frames=5)
    avi = generate_video(tmp_path / "v.avi", n_frames=3, size=(32, 32))
    assert avi.path == tmp_path / "v.avi" and avi.fourcc == "MJPG" and len(_read_frames(avi.path)) == 3


def test_bolts_scene_moves_and_turns_the_part_and_masks_exactly_the_defect(tmp_path):
    from adtr_edge.data.objects import OBJECT_DEFECT_KINDS, bolt_image, draw_object_defect

    parts = [bolt_image((128, 128), np.random.default_rng(s))[1] for s in range(6)]
    centres = np.array([np.argwhere(p).mean(axis=0) for p in parts])
    assert np.ptp(centres, axis=0).min() > 10  # not fixtured: the part sits elsewhere every time
    assert all(0.03 < p.mean() < 0.2 for p in parts)  # one part, most of the frame background
    for s in range(8):
        rng = np.random.default_rng(100 + s)
        img, part = bolt_image((128, 128), rng)
        kind = OBJECT_DEFECT_KINDS[s % len(OBJECT_DEFECT_KINDS)]
        out, mask = draw_object_defect(img, part, rng, kind)
        assert mask.any(), kind
        assert np.array_equal(mask, np.any(out != img, axis=2))
        near = cv2.dilate(part.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool)
        assert not (mask & ~near).any(), kind  # on the part or standing off its edge, never loose in the frame
    root = generate_sample_dataset(tmp_path, n_train=2, n_test_good=1, n_test_defect=4, size=(64, 64), scene="bolts",
                                   category="bolts")
    assert sorted(p.name for p in (root / "ground_truth").iterdir()) == sorted(OBJECT_DEFECT_KINDS)
    with pytest.raises(AdtrError, match="scene 'nuts'"):
        generate_sample_dataset(tmp_path, scene="nuts", category="x")
