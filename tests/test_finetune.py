"""``finetune``: a tiny trained model continues training on a review folder (painted and unpainted
defects, confirmed normals) and is promoted only past the gate; a deliberately ruined one is
refused and kept aside; bad input is one line with nothing written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch", reason="finetune needs the train extra")

from adtr_edge.data.datasets import load_dataset  # noqa: E402
from adtr_edge.errors import AdtrError  # noqa: E402
from adtr_edge.finetune import FinetuneRefused, finetune, split_reviews  # noqa: E402
from adtr_edge.runtime.review import ReviewFolder  # noqa: E402


@pytest.fixture(scope="module")
def reviews(tmp_path_factory, sample_dataset) -> Path:
    """What operators would have reviewed: the sample test split's defects (every other one painted
    with its true mask) and its normals as confirmed "not a defect"."""
    root = tmp_path_factory.mktemp("reviews") / "line"
    folder = ReviewFolder(root)
    test = load_dataset(sample_dataset, "test")
    for i, s in enumerate(test.samples):
        image = test.image(i)
        if s.label == 0:
            folder.add(image, "normal", source="line", frame=i)
        else:
            mask = test.mask(i).astype(np.uint8) if i % 2 == 0 and s.mask_path is not None else None
            folder.add(image, "defect", label="defect", mask=mask, source="line", frame=i)
    return root


def test_split_is_stable_by_id():
    records = [{"id": f"r{i}"} for i in range(200)]
    tune, held = split_reviews(records, 0.3)
    assert 40 < len(held) < 80 and len(tune) + len(held) == 200
    tune2, held2 = split_reviews(records + [{"id": "new"}], 0.3)
    assert {r["id"] for r in held} <= {r["id"] for r in held2}  # a new review never moves an old one


def test_the_fine_tune_holds_out_the_normals_its_base_held_out(trained_checkpoint, sample_dataset, reviews):
    """Reviewed normals change the training set's size, and a random split of another size is another
    split: the base's threshold normals would go to training and the new threshold would sit below
    unseen normals' scores. The fine-tune holds out exactly the normals its base held out."""
    from adtr_edge.finetune import _imageset, _train_set
    from adtr_edge.train.checkpoint import read_checkpoint_meta
    from adtr_edge.train.loop import split_normals

    normals = [r for r in ReviewFolder(reviews).records() if r["verdict"] == "normal"]
    assert normals
    train_set, held = _train_set(Path(trained_checkpoint), Path(sample_dataset), _imageset(reviews, normals))
    meta = read_checkpoint_meta(trained_checkpoint)
    trained = {Path(p).name for p in meta.extra["train_paths"]}
    fit, val = split_normals(train_set, meta.train_config, held)
    val_names = {train_set[i].path.name for i in val}
    assert held and val_names == set(held) and not val_names & trained
    assert {Path(r["image"]).name for r in normals} <= {train_set[i].path.name for i in fit}
    # Without the names, the split of the larger set is another one (what the fine-tune did before).
    assert {train_set[i].path.name for i in split_normals(train_set, meta.train_config)[1]} != val_names


def _worse(d, lo, hi) -> bool:
    return hi < 0 or (math.isnan(hi) and d < 0)


def _seed_with_both_kinds(reviews: Path, holdout: float) -> int:
    """Review ids are random, so the split is too: a seed whose held-out share has normals and
    defects, a painted one among them (the gate can rank, and has pixel metrics), and whose tuning
    share has painted and unpainted defects."""
    records = ReviewFolder(reviews).records()
    for seed in range(100):
        tune, held = split_reviews(records, holdout, seed)
        if {r["verdict"] for r in held} == {"normal", "defect"} and any(r["mask"] for r in held if r["verdict"] == "defect") and \
                {bool(r["mask"]) for r in tune if r["verdict"] == "defect"} == {True, False}:
            return seed
    raise AssertionError("no seed splits the reviews usefully")


def test_finetune_promotes_or_refuses_by_the_gate_and_ruins_are_refused(tmp_path, trained_checkpoint, sample_dataset, reviews,
                                                                       monkeypatch):
    out = tmp_path / "tuned"
    seed = _seed_with_both_kinds(reviews, 0.4)
    try:
        report = finetune(trained_checkpoint, reviews, out, data=sample_dataset, epochs=2, holdout=0.4, seed=seed, resamples=200,
                          device="cpu")
    except FinetuneRefused as e:  # the gate may refuse a tiny model's fine-tune; then it says why and keeps it aside
        report = json.loads((tmp_path / "tuned.refused" / "finetune.json").read_text())
        assert not out.exists() and str(tmp_path / "tuned.refused") in str(e)
    else:
        assert (out / "finetune.json").is_file() and report["promoted"]
    d = report["difference"]
    assert set(d) >= {"image_auroc", "pixel_auroc", "aupro"} and report["passes"][0]["kind"] == "labelled-pixel"
    assert [p["kind"] for p in report["passes"]] == ["labelled-pixel", "labelled-image"]  # painted first, then image labels
    # The decision follows the numbers: refused exactly when a metric is significantly worse (or lower
    # where too few images bound it) or image AUROC lower.
    assert report["promoted"] == (not any(_worse(*v) for v in d.values()) and d["image_auroc"][0] >= 0)
    assert report["held_out"] + report["tuning"] == report["reviews"]
    assert not list(tmp_path.glob(".tmp-*"))

    # A deliberately ruined fine-tune must not pass: each pass's transformer is scrambled after training
    # (its head and threshold kept), so the new model ranks by noise. A very high learning rate alone was
    # not reliably worse on the tiny model: on some runs it landed as good as the base on 7 images.
    import torch

    import adtr_edge.train.loop as loop
    from adtr_edge.train.checkpoint import load_checkpoint, save_checkpoint

    real_train = loop.train_model

    def ruined_train(*args, **kwargs):
        result = real_train(*args, **kwargs)
        model, ckpt = load_checkpoint(result.folder)
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for w in model.transformer.parameters():
                w.copy_(torch.randn(w.shape, generator=g) * 3.0)
        save_checkpoint(result.folder, model, ckpt)
        return result

    monkeypatch.setattr(loop, "train_model", ruined_train)
    with pytest.raises(FinetuneRefused, match=r"not promoted: .* worse on the held-out images \(image AUROC .*\); the model is kept in "):
        finetune(trained_checkpoint, reviews, tmp_path / "ruined", data=sample_dataset, epochs=1,
                 holdout=0.4, seed=seed, resamples=200, device="cpu")
    kept = json.loads((tmp_path / "ruined.refused" / "finetune.json").read_text())
    assert not kept["promoted"] and not (tmp_path / "ruined").exists()
    assert kept["worse"] and all(_worse(*kept["difference"][m]) or (m == "image_auroc" and kept["difference"][m][0] < 0)
                                 for m in kept["worse"])


def test_finetune_bad_input_is_one_line_and_writes_nothing(tmp_path, trained_checkpoint, sample_dataset, exported_model, capsys):
    empty = tmp_path / "empty"
    ReviewFolder(empty)
    only_normals = tmp_path / "normals"
    folder = ReviewFolder(only_normals)
    for i in range(4):
        folder.add(np.full((32, 32, 3), 40 + i, np.uint8), "normal")
    taken = tmp_path / "taken"
    taken.mkdir()
    cases = [
        ((trained_checkpoint, empty, tmp_path / "o1"), "no reviews yet"),
        ((trained_checkpoint, only_normals, tmp_path / "o2"), "no reviewed defect to learn from (0 defects in 4 reviews"),
        ((exported_model, only_normals, tmp_path / "o3"), "finetune continues training, so give the checkpoint"),
        ((trained_checkpoint, only_normals, taken), "exists; choose a new --out"),
        ((trained_checkpoint, tmp_path / "missing", tmp_path / "o4"), "not a folder"),
    ]
    for args, message in cases:
        with pytest.raises(AdtrError, match=None) as e:
            finetune(*args, data=sample_dataset, device="cpu")
        assert message in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "normals", "taken"]
    from adtr_edge.cli import main as cli_main

    assert cli_main(["finetune", str(trained_checkpoint), "--review", str(empty), "--out", str(tmp_path / "o5"),
                     "--data", str(sample_dataset)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: --review {empty}: no reviews yet;") and "\n" not in err


def test_review_folder_defects_are_what_finetune_reads(reviews):
    """The fixture's folder is a dataset the loaders read: painted defects with their masks."""
    test = load_dataset(reviews, "test")
    painted = [i for i, s in enumerate(test.samples) if s.mask_path is not None]
    assert painted and all(cv2.imread(str(test.samples[i].mask_path), cv2.IMREAD_GRAYSCALE).max() == 255 for i in painted)


def test_finetune_says_when_the_head_cannot_learn_from_the_reviewed_defects(tmp_path, trained_checkpoint, sample_dataset, reviews):
    """A nearest head on the backbone's features never reads the transformer that ADTR+ trains: the
    operator is told before the training, for that model and not for one whose head reads it."""
    from adtr_edge.train.refit import refit_head

    nearest = refit_head(trained_checkpoint, sample_dataset, tmp_path / "nearest", device="cpu", head="nearest", nearest_bank=128).out
    seed = _seed_with_both_kinds(reviews, 0.4)  # review ids are random: a split the gate can rank, every run
    for model, told in ((nearest, True), (trained_checkpoint, False)):
        lines = []
        try:
            finetune(model, reviews, tmp_path / f"ft-{told}", data=sample_dataset, epochs=1, holdout=0.4, seed=seed, resamples=50,
                     device="cpu", log=lines.append)
        except FinetuneRefused:
            pass
        notes = [s for s in lines if s.startswith("note:") and "does not read the transformer" in s]
        assert len(notes) == (1 if told else 0), lines
