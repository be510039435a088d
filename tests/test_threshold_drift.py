"""A threshold calibrated on drifted views of the held-out normals too (``train``/``refit-head
--threshold-drift``), and the robustness report that thresholds its baselines the same way and says
how many defects each threshold still flags."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adtr_edge.data.camera import threshold_drifts
from adtr_edge.errors import AdtrError
from adtr_edge.train.checkpoint import load_checkpoint
from adtr_edge.train.refit import RefitSource, refit_head

from .conftest import refit_beside_plain


def test_threshold_drift_names_are_checked_and_auto_is_not_one():
    assert threshold_drifts("none") == () and threshold_drifts("compression, pose") == ("compression", "pose")
    with pytest.raises(AdtrError, match=r"--threshold-drift auto: not a drift \(choose from light, focus, compression, pose, or none\)"):
        threshold_drifts("auto")


def test_the_threshold_is_the_quantile_over_the_held_out_normals_and_their_views(trained_checkpoint, sample_dataset, tmp_path):
    from adtr_edge.train.head_fit import score_features

    plain, drift, m0, m1, c1 = refit_beside_plain(trained_checkpoint, sample_dataset, tmp_path, threshold_drift="focus,compression")
    assert drift.changed == {"threshold_drift": ("none", "focus,compression")}
    assert c1.train_config.threshold_drift == "focus,compression"
    h0, h1 = m0.state_dict(), m1.state_dict()
    assert all(torch.equal(h0[k], h1[k]) for k in h0)  # the head is fitted as before: only the threshold moves

    source = RefitSource.load(trained_checkpoint, sample_dataset, device="cpu")
    views = source.held_out_drift(("focus", "compression"))
    assert len(views) == 2 * len(source.val_feats)
    clean, _ = score_features(m1, source.val_feats, "cpu")
    drifted, _ = score_features(m1, views, "cpu")
    q = c1.train_config.threshold_quantile
    assert drift.thresholds.threshold == pytest.approx(float(np.quantile(np.concatenate([clean, drifted]), q)), rel=1e-5)
    assert plain.thresholds.threshold == pytest.approx(float(np.quantile(clean, q)), rel=1e-5)
    assert drift.thresholds.threshold != pytest.approx(plain.thresholds.threshold)


def test_training_calibrates_as_a_refit_does(sample_dataset, tmp_path):
    from adtr_edge.config import TrainConfig
    from adtr_edge.data.datasets import load_dataset
    from adtr_edge.train.loop import train_model
    from tests.conftest import tiny_model_config

    cfg = TrainConfig(epochs=1, batch_size=8, val_fraction=0.2, device="cpu", head="per-location", score_select="none",
                      threshold_drift="light")
    res = train_model(load_dataset(sample_dataset, "train"), tiny_model_config(), cfg, tmp_path / "m", progress=False)
    again = refit_head(res.folder, sample_dataset, tmp_path / "again", device="cpu")
    assert res.checkpoint.train_config.threshold_drift == "light"
    assert again.thresholds.threshold == pytest.approx(res.checkpoint.thresholds.threshold, rel=1e-5)


def test_training_refuses_an_unknown_threshold_drift_before_any_work(sample_dataset, tmp_path, capsys):
    from adtr_edge.cli import main

    assert main(["train", str(sample_dataset), "--out", str(tmp_path / "m"), "--threshold-drift", "fog", "--epochs", "1", "--no-progress"]) != 0
    assert "--threshold-drift fog: not a drift" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_the_report_counts_defects_flagged_beside_false_alarms():
    from adtr_edge.evaluation.robustness import figures, report_table

    f = figures(np.array([0.1, 0.5, 2.0, 3.0, 0.2]), np.array([0, 0, 0, 1, 1]), threshold=1.0)
    assert f["false_alarm_rate"] == pytest.approx(1 / 3) and f["detection_rate"] == pytest.approx(0.5)
    assert figures(np.array([1.0, 2.0]), np.array([0, 0]), threshold=1.5)["detection_rate"] is None
    table = report_table({"conditions": [{"condition": "clean", "ADTR": f}]})
    assert "false alarms / defects flagged" in table and "| clean | 0.667 / 0.333 / 0.500 |" in table


def test_the_baselines_are_thresholded_on_the_same_views(trained_checkpoint, sample_dataset, tmp_path):
    from adtr_edge.evaluation.robustness import checkpoint_scorer

    plain, drift, *_ = refit_beside_plain(trained_checkpoint, sample_dataset, tmp_path, threshold_drift="light,compression")
    _, t0 = checkpoint_scorer(plain.out, sample_dataset)
    _, t1 = checkpoint_scorer(drift.out, sample_dataset)
    assert t1["ADTR"] == pytest.approx(drift.thresholds.threshold)
    assert set(t0) == set(t1) == {"ADTR", "gaussian", "1-nn", "mean-template"}
    assert any(t0[k] != pytest.approx(t1[k]) for k in ("gaussian", "1-nn", "mean-template"))


def test_eval_says_the_threshold_saw_drifted_views(trained_checkpoint, sample_dataset, tmp_path, capsys):
    from adtr_edge.cli import main

    drift = refit_head(trained_checkpoint, sample_dataset, tmp_path / "drift", device="cpu", threshold_drift="compression")
    assert main(["eval", str(drift.out), str(sample_dataset), "--out", str(tmp_path / "ev"), "--no-progress", "--no-pictures",
                 "--device", "cpu", "--bootstrap", "0"]) == 0
    printed = capsys.readouterr().out
    assert ("threshold: calibrated on the held-out normals and their drifted views (train --threshold-drift): threshold "
            f"{drift.thresholds.threshold:.4g} from the held-out normals and their drifted views (compression)") in printed


def test_the_cost_is_the_share_of_synthetic_defects_each_threshold_flags(trained_checkpoint, sample_dataset):
    from adtr_edge.data.datasets import load_dataset
    from adtr_edge.postprocessing import Thresholds
    from adtr_edge.preprocessing import preprocess_spec
    from adtr_edge.train.head_fit import score_features, threshold_drift_cost, why_threshold
    from adtr_edge.train.head_select import synthetic_set

    model, ckpt = load_checkpoint(trained_checkpoint)
    normals = load_dataset(sample_dataset, "train")
    synthetic = synthetic_set(model.backbone, [normals.image(i) for i in range(6)], preprocess_spec(ckpt.model_config), "cpu", seed=0)
    scores, _ = score_features(model, synthetic.feats, "cpu")
    defects = np.sort(scores[np.asarray(synthetic.labels) == 1])
    low, high = (Thresholds(float(defects[q * len(defects) // 4]), float(scores.min()), float(scores.max())) for q in (1, 3))
    record = threshold_drift_cost(model, ("light",), low, high, synthetic, "cpu")
    assert record["synthetic_defects"] == len(defects)
    assert record["flagged_clean"] == pytest.approx(np.mean(defects >= low.threshold), abs=1e-4)
    assert record["flagged"] == pytest.approx(np.mean(defects >= high.threshold), abs=1e-4) and record["flagged"] < record["flagged_clean"]
    assert f"it flags {record['flagged']:.0%} of {len(defects)} synthetic defects on them ({record['flagged_clean']:.0%} at" in why_threshold(record)
    assert "synthetic_defects" not in threshold_drift_cost(model, ("light",), low, high, None, "cpu")
