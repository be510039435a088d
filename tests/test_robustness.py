"""eval --perturb: every perturbation changes the images (and moves masks with geometric ones), the
report's figures are what the scores say, and the CLI writes the table for a checkpoint and its baselines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adtr_edge.data.datasets import load_dataset
from adtr_edge.evaluation.robustness import PERTURBATIONS, PerturbedSet, conditions, figures, robustness_report


def _frame() -> np.ndarray:
    img = np.full((120, 160, 3), 90, np.uint8)
    img[40:80, 60:100] = 200
    return img


@pytest.mark.parametrize("p", PERTURBATIONS, ids=lambda p: p.name)
def test_each_perturbation_changes_the_image_more_at_the_second_strength(p):
    img = _frame()
    changes = [float(np.abs(p.image(img, s).astype(float) - img).mean()) for s in p.strengths]
    assert 0 < changes[0] < changes[1], changes
    assert p.image(img, p.strengths[0]).shape == img.shape


def test_geometric_perturbations_move_the_mask_with_the_image(sample_dataset):
    test = load_dataset(sample_dataset, "test")
    i = int(np.flatnonzero(np.asarray(test.labels) == 1)[0])
    img, mask = test.load(i)
    for p in PERTURBATIONS:
        moved_img, moved_mask = PerturbedSet(test, p, p.strengths[1]).load(i)
        if p.mask is None:
            assert np.array_equal(moved_mask, mask)
        else:
            assert not np.array_equal(moved_mask, mask)
            expected = p.mask(mask.astype(np.uint8), p.strengths[1]).astype(bool)
            assert np.array_equal(moved_mask, expected)


def test_figures_are_the_auroc_and_the_share_of_normals_over_the_threshold():
    labels = np.array([0, 0, 0, 0, 1, 1])
    f = figures(np.array([0.1, 0.2, 0.9, 0.3, 0.8, 0.95]), labels, threshold=0.5)
    assert f["false_alarm_rate"] == 0.25
    assert f["image_auroc"] == pytest.approx(7 / 8)
    assert figures(np.zeros(6), labels, None)["false_alarm_rate"] is None


def test_the_report_scores_the_clean_set_then_every_condition(sample_dataset):
    test = load_dataset(sample_dataset, "test")
    seen = []

    def score(images):
        seen.append(type(images).__name__)
        return {"brightness": np.array([images.image(i).mean() for i in range(len(images))])}

    report = robustness_report(score, test, {"brightness": 1e9})
    assert [r["condition"] for r in report["conditions"]] == [c[0] for c in conditions()]
    assert len(report["conditions"]) == 1 + 2 * len(PERTURBATIONS) and seen[0] == "ImageSet"
    rows = {r["condition"]: r["brightness"] for r in report["conditions"]}
    assert all(r["false_alarm_rate"] == 0.0 for r in rows.values())


def test_eval_perturb_writes_the_table_for_the_model_and_its_baselines(trained_checkpoint, sample_dataset, tmp_path, capsys):
    from adtr_edge.cli import main

    out = tmp_path / "eval"
    assert main(["eval", str(trained_checkpoint), str(sample_dataset), "--out", str(out), "--device", "cpu", "--no-pictures",
                 "--bootstrap", "0", "--no-progress", "--perturb"]) == 0
    report = json.loads((out / "robustness.json").read_text())
    methods = set(report["conditions"][0]) - {"condition"}
    assert methods == {"ADTR", "gaussian", "1-nn", "mean-template"}
    assert all(v is not None for v in report["thresholds"].values())
    clean = report["conditions"][0]["ADTR"]
    main_report = json.loads((out / "report.json").read_text())
    assert clean["image_auroc"] == pytest.approx(main_report["image_auroc"], abs=1e-6)  # the same model, the same images
    table = (out / "robustness.md").read_text()
    assert table.count("\n") == 2 + len(conditions()) and "rotate 5 degrees" in table
    printed = capsys.readouterr().out
    assert "robustness report:" in printed and "the gaussian baseline's under" in printed
    assert all("false_alarms_against_model" in row["gaussian"] for row in report["conditions"])
    # The advice follows the conditions the report found above the Gaussian, for this checkpoint.
    from adtr_edge.evaluation.robustness import drift_advice
    from adtr_edge.train.checkpoint import read_checkpoint_meta

    advice = drift_advice(report, read_checkpoint_meta(trained_checkpoint), str(trained_checkpoint), str(sample_dataset))
    assert (advice in printed) if advice else ("to calm the" not in printed)
    assert not (out / "robustness.png").exists()  # --no-pictures


def test_the_robustness_picture_draws_every_condition_and_refuses_an_empty_report(tmp_path):
    from matplotlib.image import imread

    from adtr_edge.errors import AdtrError
    from adtr_edge.evaluation.plots import robustness_plot

    cell = {"image_auroc": 0.9, "false_alarm_rate": 0.1, "detection_rate": 0.6}
    report = {"conditions": [{"condition": c[0], "ADTR": cell, "gaussian": {**cell, "detection_rate": None}} for c in conditions()]}
    png = robustness_plot(report, tmp_path / "r.png")
    assert imread(png).shape[1] >= 600  # a real picture, wide enough for 13 conditions
    with pytest.raises(AdtrError, match="no conditions"):
        robustness_plot({"conditions": []}, tmp_path / "e.png")
    assert not (tmp_path / "e.png").exists()


def test_exact_mcnemar_p_values():
    from adtr_edge.evaluation.significance import mcnemar_exact

    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(1, 0) == 1.0 and mcnemar_exact(3, 3) == 1.0
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64) and mcnemar_exact(0, 6) == mcnemar_exact(6, 0)
    assert mcnemar_exact(8, 2) == pytest.approx(2 * (1 + 10 + 45) / 1024)


def test_false_alarms_are_paired_with_the_models_and_the_worse_conditions_named(sample_dataset):
    from adtr_edge.evaluation.robustness import above_baseline

    test = load_dataset(sample_dataset, "test")
    labels = np.asarray(test.labels)
    normal = np.flatnonzero(labels == 0)

    def score(images):  # the model alarms on every normal once the images change; the baseline on the first only
        changed = type(images).__name__ != "ImageSet"
        model = np.where(labels == 0, 2.0 if changed else 0.0, 3.0)
        baseline = np.where(labels == 0, 0.0, 3.0)
        baseline[normal[0]] = 2.0
        return {"ADTR": model, "gaussian": baseline}

    report = robustness_report(score, test, {"ADTR": 1.0, "gaussian": 1.0})
    clean, shifted = report["conditions"][0], report["conditions"][1]
    n = len(normal)
    assert clean["gaussian"]["false_alarms_against_model"] == {"model_only": 0, "baseline_only": 1, "p": 1.0}
    pair = shifted["gaussian"]["false_alarms_against_model"]
    assert pair["model_only"] == n - 1 and pair["baseline_only"] == 0
    assert pair["p"] == pytest.approx(round(2 / 2 ** (n - 1), 4))
    line = above_baseline(report)
    assert line.startswith(f"false alarms above the gaussian baseline's under {len(conditions()) - 1} of {len(conditions())} conditions: ")
    assert f"shift 0.02 of the side ({n} against 1 of {n}; McNemar p {pair['p']:.2f})" in line and "clean" not in line
    assert above_baseline({"conditions": [clean], "normal_images": n}) == \
        "false alarms: at or below the gaussian baseline's under every condition"


def _report_worse_under(*worse_families):
    """A robustness report in which the model raises one false alarm more than the Gaussian under
    every condition of the named drift families, and none anywhere else."""
    from adtr_edge.evaluation.robustness import conditions

    rows = []
    for label, p, _ in conditions():
        model_rate = 0.5 if p is not None and p.drift in worse_families else 0.0
        rows.append({"condition": label, "ADTR": {"false_alarm_rate": model_rate}, "gaussian": {"false_alarm_rate": 0.25 * (model_rate > 0)}})
    return {"conditions": rows, "normal_images": 4}


def _ckpt(score="mahalanobis", fit_drift="none", threshold_drift="none", choice=None):
    from types import SimpleNamespace

    from adtr_edge.config import ModelConfig, TrainConfig
    from adtr_edge.train.location_choice import nearest_config

    cfg = nearest_config(ModelConfig(), 4096) if score == "nearest" else ModelConfig()
    return SimpleNamespace(model_config=cfg, train_config=TrainConfig(fit_drift=fit_drift, threshold_drift=threshold_drift),
                           extra={"drift_choice": choice})


def test_the_kinds_of_false_alarm_above_the_gaussians_are_named_by_drift_family():
    from adtr_edge.evaluation.robustness import worse_drifts

    assert worse_drifts(_report_worse_under()) == []
    assert worse_drifts(_report_worse_under("compression", "pose", "focus")) == ["pose", "focus", "compression"]


def test_eval_advises_the_options_measured_for_each_kind_of_false_alarm():
    from adtr_edge.evaluation.robustness import drift_advice

    report = _report_worse_under("focus", "compression")
    line = drift_advice(report, _ckpt(), "runs/m", "data")
    assert line.startswith("to calm the focus, compression alarms: adtr-edge refit-head runs/m data "
                           "--threshold-drift light,focus,compression --out NEW, then adtr-edge eval NEW data --perturb")
    # The nearest head: a threshold alone flagged no defect on screw and the bolts, so the head learns the drifts too.
    assert "--fit-drift light,focus,compression --threshold-drift light,focus,compression --out" in drift_advice(report, _ckpt("nearest"))
    # A knocked camera: the head fitted on pose views, with the other drifts where both are needed.
    assert "refit-head MODEL DATA --fit-drift pose --out" in drift_advice(_report_worse_under("pose"), _ckpt())
    both = drift_advice(_report_worse_under("pose", "light"), _ckpt("nearest"))
    assert "--fit-drift pose,light,focus,compression --threshold-drift light,focus,compression" in both
    # Nothing to advise: no condition above the Gaussian, or the model already has those options.
    assert drift_advice(_report_worse_under(), _ckpt()) is None
    assert drift_advice(report, _ckpt(threshold_drift="light,focus,compression")) is None
    assert drift_advice(report, _ckpt("nearest", "auto", "light,focus,compression", {"drift": True})) is None
    # --fit-drift auto that chose the normals alone did not fit the head on the drifts.
    assert "--fit-drift light,focus,compression --out" in drift_advice(report, _ckpt("nearest", "auto", "light,focus,compression", {"drift": False}))
