"""The review folder: operators' verdicts written as an MVTec-layout dataset that the loaders
(train, eval, check-data) read as they are; JSON sidecars; two writers sharing one folder; undo;
``adtr-edge review add``; bad input as one line with nothing written."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.runtime_fakes import make_frame, write_fake_export

from adtr_edge.cli import main as cli_main
from adtr_edge.data.datasets import load_dataset
from adtr_edge.errors import AdtrError
from adtr_edge.runtime import review as review_mod
from adtr_edge.runtime.review import ReviewFolder, model_digest


def _files(root: Path) -> list:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _mask(h=96, w=128):
    m = np.zeros((h, w), np.uint8)
    m[24:72, 32:96] = 1
    return m


def test_reviews_form_a_dataset_the_loaders_read(tmp_path):
    root = tmp_path / "reviews"
    folder = ReviewFolder(root)
    model = {"path": "m", "digest": "abc"}
    normal = folder.add(make_frame(False), "normal", source="cam-1", frame=3, score=0.61, threshold=0.5, model=model,
                        reviewer={"by": "test"})
    painted = folder.add(make_frame(True), "defect", label="scratch", mask=_mask(), source="cam-1", frame=9, score=0.97)
    unpainted = folder.add(make_frame(True), "defect", label="scratch", source="cam-2", frame=9, score=0.95)
    assert normal["image"].startswith("train/good/") and normal["mask"] is None
    assert painted["image"].startswith("test/scratch/") and painted["mask"] == f"ground_truth/scratch/{painted['id']}_mask.png"
    assert unpainted["image"].startswith("test/scratch-no-mask/") and unpainted["mask"] is None
    side = json.loads((root / normal["image"]).with_suffix(".json").read_text())
    assert side == {**side, "verdict": "normal", "source": "cam-1", "frame": 3, "score": 0.61, "model": model,
                    "reviewer": {"by": "test"}, "size": [128, 96], "format": "adtr-edge-review/1"}
    # The raw frame, bit for bit (PNG), and the mask as 0/255.
    assert np.array_equal(cv2.imread(str(root / painted["image"])), make_frame(True))
    assert set(np.unique(cv2.imread(str(root / painted["mask"]), cv2.IMREAD_GRAYSCALE))) == {0, 255}

    train, test = load_dataset(root, "train"), load_dataset(root, "test")
    assert [s.path.name for s in train.samples] == [Path(normal["image"]).name]
    groups = {s.defect: s.mask_path is not None for s in test.samples}
    assert groups == {"scratch": True, "scratch-no-mask": False}  # each group all-masked or unmasked
    assert test.mask(next(i for i, s in enumerate(test.samples) if s.defect == "scratch")).sum() == 48 * 64
    assert cli_main(["check-data", str(root)]) == 0
    assert [r["id"] for r in folder.records()] == [normal["id"], painted["id"], unpainted["id"]]


def test_undo_removes_every_file_of_a_review(tmp_path):
    folder = ReviewFolder(tmp_path / "r")
    keep = folder.add(make_frame(False), "normal")
    gone = folder.add(make_frame(True), "defect", mask=_mask())
    assert folder.remove(gone["id"])["id"] == gone["id"]
    assert _files(tmp_path / "r") == sorted([keep["image"], keep["image"][:-4] + ".json"])
    with pytest.raises(AdtrError, match=r"no review .* \(already undone\?\)"):
        folder.remove(gone["id"])
    with pytest.raises(AdtrError, match="not an id"):
        folder.remove("../../etc/passwd")


def _writer(args):
    root, writer, n = args
    folder = ReviewFolder(root)
    ids = []
    for i in range(n):
        image = np.full((48, 64, 3), writer * 100 + i, np.uint8)  # which writer, which review: in the pixels
        ids.append(folder.add(image, "defect" if i % 2 else "normal", mask=np.ones((48, 64), np.uint8) if i % 4 == 1 else None,
                              source="shared-cam", frame=7, reviewer={"writer": writer, "i": i})["id"])
    return ids


def test_two_writers_sharing_a_folder_never_clobber(tmp_path):
    root = tmp_path / "shared"
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        a, b = pool.map(_writer, [(root, 0, 40), (root, 1, 40)])
    assert len(set(a) | set(b)) == 80
    records = ReviewFolder(root).records()
    assert len(records) == 80
    for r in records:  # every image is the one its sidecar describes
        pixels = cv2.imread(str(root / r["image"]))
        assert int(pixels[0, 0, 0]) == r["reviewer"]["writer"] * 100 + r["reviewer"]["i"]
        assert (r["mask"] is not None) == (r["reviewer"]["i"] % 4 == 1)
    assert not [p for p in root.rglob(".tmp-*")]  # no temporary file left behind


def test_a_name_clash_draws_a_new_id_instead_of_replacing(tmp_path, monkeypatch):
    """Two writers that draw the same id (same second, source, frame and random bits): the second
    finds the name taken (hard link / O_EXCL) and writes under a new one."""
    folder = ReviewFolder(tmp_path / "r")
    draws = iter(["same", "same", "other"])
    monkeypatch.setattr(review_mod.secrets, "token_hex", lambda n: next(draws))
    monkeypatch.setattr(review_mod.time, "time", lambda: 1_700_000_000.0)
    first = folder.add(make_frame(False), "normal", source="cam", frame=1)
    second = folder.add(np.zeros((96, 128, 3), np.uint8), "normal", source="cam", frame=1)
    assert first["id"].endswith("-same") and second["id"].endswith("-other")
    assert np.array_equal(cv2.imread(str(tmp_path / "r" / first["image"])), make_frame(False))  # not overwritten


def test_bad_reviews_are_one_line_and_write_nothing(tmp_path):
    folder = ReviewFolder(tmp_path / "r")
    before = _files(tmp_path / "r")
    for kwargs, message in (({"verdict": "maybe"}, "verdict 'maybe'"),
                            ({"verdict": "defect", "mask": np.ones((10, 10), np.uint8)}, "mask is 10x10, the frame is 128x96"),
                            ({"verdict": "normal", "mask": _mask()}, "a frame reviewed as not a defect has none"),
                            ({"verdict": "defect", "label": "../x"}, "label '../x'"),
                            ({"verdict": "defect", "label": "good"}, "reserved")):
        verdict = kwargs.pop("verdict")
        with pytest.raises(AdtrError, match=message):
            folder.add(make_frame(True), verdict, **kwargs)
    assert _files(tmp_path / "r") == before


def test_unwritable_review_folder_is_one_line_at_start(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(AdtrError, match=r"--review-dir .*a-file/reviews: cannot write there \(Not a directory\)"):
        ReviewFolder(blocker / "reviews")
    with pytest.raises(AdtrError, match="is a file, not a folder"):
        ReviewFolder(blocker)
    model = write_fake_export(tmp_path / "model")
    # Before the model loads or a source opens: the source does not even exist.
    rc = cli_main(["stream", str(model), "--source", str(tmp_path / "none.mp4"), "--http", "127.0.0.1:0",
                   "--review-dir", str(blocker / "reviews")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1] == f"error: --review-dir {blocker / 'reviews'}: cannot write there (Not a directory)"
    rc = cli_main(["stream", str(model), "--source", str(tmp_path / "none.mp4"), "--review-dir", str(tmp_path / "ok")])
    assert rc == 2 and capsys.readouterr().err.strip() == "error: --review-dir: reviews are made in the web view; give --http too"
    if os.geteuid() != 0:  # root writes through permissions; the path above covers it there
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(AdtrError, match="cannot write there"):
            ReviewFolder(locked)


def test_cli_review_add_frames_saved_by_the_stream(tmp_path, capsys):
    saved = tmp_path / "anomalies"
    saved.mkdir()
    for i in range(3):
        cv2.imwrite(str(saved / f"0000001{i}_frame.png"), make_frame(True))
    mask = tmp_path / "m.png"
    cv2.imwrite(str(mask), _mask() * 255)
    model = write_fake_export(tmp_path / "model")
    root = tmp_path / "reviews"
    assert cli_main(["review", "add", str(root), str(saved / "00000010_frame.png"), "--verdict", "defect", "--label", "dent",
                     "--mask", str(mask), "--model", str(model), "--score", "0.93", "--by", "ana"]) == 0
    assert cli_main(["review", "add", str(root), str(saved / "00000011_frame.png"), str(saved / "00000012_frame.png"),
                     "--verdict", "normal"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[0].startswith("test/dent/") and "mask ground_truth/dent/" in out[0]
    records = ReviewFolder(root).records()
    dent = next(r for r in records if r["verdict"] == "defect")
    assert dent["model"] == model_digest(model) and dent["score"] == 0.93 and dent["name"] == "00000010_frame.png"
    assert dent["reviewer"] == {"by": "adtr-edge review add", "user": "ana"}
    assert sorted(r["name"] for r in records if r["verdict"] == "normal") == ["00000011_frame.png", "00000012_frame.png"]


@pytest.mark.parametrize("extra, message", [
    (["--mask", "WRONG"], "--mask {wrong}: is 10x10, the image {img} is 128x96"),
    (["--verdict", "normal", "--mask", "WRONG"], "--mask marks one defect's region: give it with --verdict defect and exactly one image"),
    (["--label", "good"], "label 'good': reserved ('good' holds normals, '*-no-mask' defects without a mask)"),
    (["CORRUPT"], "cannot decode image (corrupt or unsupported format): {corrupt}"),
])
def test_cli_review_add_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, extra, message):
    img, wrong, corrupt = tmp_path / "f.png", tmp_path / "wrong.png", tmp_path / "bad.png"
    cv2.imwrite(str(img), make_frame(True))
    cv2.imwrite(str(wrong), np.full((10, 10), 255, np.uint8))
    corrupt.write_bytes(b"not a png")
    args = [str(wrong) if a == "WRONG" else str(corrupt) if a == "CORRUPT" else a for a in extra]
    if "--verdict" not in args:
        args += ["--verdict", "defect"]
    rc = cli_main(["review", "add", str(tmp_path / "reviews"), str(img), *args])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err == "error: " + message.format(wrong=wrong, img=img, corrupt=corrupt)
    assert not (tmp_path / "reviews").exists() or not [p for p in (tmp_path / "reviews").rglob("*.png")]


def test_cli_review_undo(tmp_path, capsys):
    root = tmp_path / "reviews"
    folder = ReviewFolder(root)
    a = folder.add(make_frame(True), "defect", mask=_mask())
    b = folder.add(make_frame(False), "normal")
    assert cli_main(["review", "undo", str(root), a["id"], "nope"]) == 2
    assert capsys.readouterr().err.strip() == f"error: review undo {root}: no review 'nope' (already undone?)"
    assert len(folder.records()) == 2  # all or nothing
    assert cli_main(["review", "undo", str(root), a["id"]]) == 0
    assert capsys.readouterr().out.strip() == f"removed {a['image']}  mask {a['mask']}"
    assert [r["id"] for r in folder.records()] == [b["id"]]
