"""refit-head --map-pool auto: the pooled part chosen on labelled defects, reported on the rest."""

from __future__ import annotations

import json

import pytest

from adtr_edge.cli import main
from adtr_edge.data.datasets import load_dataset, validation_split
from adtr_edge.errors import AdtrError
from adtr_edge.train import choose_head
from adtr_edge.train.checkpoint import load_checkpoint
from adtr_edge.train.choose_head import choose_map_pool
from adtr_edge.train.head_select import METRICS, figures

SMALL = {"fraction": 0.5, "min_defects": 2, "min_good": 2, "resamples": 50, "device": "cpu"}


@pytest.fixture(scope="module")
def choice(trained_checkpoint, sample_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("choose") / "auto"
    return choose_map_pool(trained_checkpoint, sample_dataset, out, **SMALL)


def test_the_choice_is_written_with_its_record_and_follows_the_rule(choice, trained_checkpoint):
    r = choice.record
    model, ckpt = load_checkpoint(choice.out)
    assert ckpt.model_config.map_pool == r["chosen"] == choice.chosen
    assert json.loads((choice.out / "checkpoint.json").read_text())["extra"]["head_choice"]["chosen"] == r["chosen"]
    assert r["current"] == load_checkpoint(trained_checkpoint)[1].model_config.map_pool == 5
    assert [c["map_pool"] for c in r["candidates"]] == [0, 3, 5]
    assert r["best"] == max(r["candidates"], key=lambda c: c["mean"])["map_pool"]
    assert r["confidence"] == pytest.approx(1 - 0.05 / 2)
    if r["best"] == r["current"]:
        assert r["chosen"] == r["current"] and r["best_ahead"] is None and r["advantage_points"] == [0.0, 0.0, 0.0]
    else:
        lo, hi = r["advantage_points"][1:]
        assert lo <= r["advantage_points"][0] <= hi and (r["chosen"] == r["best"]) == (r["best_ahead"] >= r["confidence"])
    t0, t1 = load_checkpoint(trained_checkpoint)[0].transformer.state_dict(), model.transformer.state_dict()
    assert all((t0[k] == t1[k]).all() for k in t0)  # only the head changes


def test_the_two_parts_are_the_benchmarks_validation_split_and_the_rest_reports(choice, sample_dataset):
    r = choice.record
    val, rest = validation_split(load_dataset(sample_dataset, "test"), 0.5)
    assert r["choice_part"]["images"] == len(val) and r["held_out"]["images"] == len(rest)
    held = r["held_out"]
    assert set(held["figures"]) == {"chosen", "original"} and set(held["against_original"]) == set(METRICS)
    for m in METRICS:
        point, lo, hi = held["against_original"][m]["difference"]
        assert point == pytest.approx(held["figures"]["chosen"][m] - held["figures"]["original"][m], abs=1e-9)
        assert lo <= point + 1e-9 and point - 1e-9 <= hi


def test_the_current_candidate_scores_what_eval_gives_the_original_checkpoint(choice, trained_checkpoint, sample_dataset):
    """Reconstructing once and swapping heads is the same scoring as eval's full forward pass."""
    from adtr_edge.evaluation.evaluate import score_checkpoint

    test = load_dataset(sample_dataset, "test")
    val, _ = validation_split(test, 0.5)
    scored, *_ = score_checkpoint(trained_checkpoint, test.subset(val), device="cpu", progress=False)
    expected = figures(scored.scores, scored.maps, scored.masks, scored.labels)
    current = next(c for c in choice.record["candidates"] if c["map_pool"] == choice.record["current"])
    assert all(current[m] == pytest.approx(expected[m], abs=2e-3) for m in METRICS)


def test_too_few_labelled_defects_to_choose_from_is_refused_and_nothing_written(trained_checkpoint, sample_dataset, tmp_path):
    with pytest.raises(AdtrError, match=r"holds \d+ defect images with masks .* needs at least 10"):
        choose_map_pool(trained_checkpoint, sample_dataset, tmp_path / "few", device="cpu")
    assert not (tmp_path / "few").exists() and not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(AdtrError, match="chooses --map-pool itself"):
        choose_map_pool(trained_checkpoint, sample_dataset, tmp_path / "x", device="cpu", map_pool=3)


def test_the_cli_chooses_prints_the_decision_and_refuses_bad_values(trained_checkpoint, sample_dataset, tmp_path, capsys,
                                                                    monkeypatch):
    monkeypatch.setattr(choose_head, "MIN_DEFECTS", 2)
    monkeypatch.setattr(choose_head, "MIN_GOOD", 2)
    out = tmp_path / "cli"
    args = ["refit-head", str(trained_checkpoint), str(sample_dataset), "--out", str(out), "--device", "cpu"]
    assert main(args + ["--map-pool", "auto", "--choice-fraction", "0.5"]) == 0
    printed = capsys.readouterr().out
    assert "map_pool 0:" in printed and "map_pool 5:" in printed and "held-out part (" in printed and f"wrote {out}" in printed
    assert load_checkpoint(out)[1].extra["head_choice"]["choice_part"]["fraction"] == 0.5
    assert main(args + ["--map-pool", "five", "--force"]) == 2
    assert "--map-pool 'five'" in capsys.readouterr().err
    assert main(args + ["--map-pool", "auto", "--map-pool-clip", "0.9", "--force"]) == 2
    assert "--map-pool-clip" in capsys.readouterr().err


def test_eval_and_exports_name_the_choice(choice):
    from adtr_edge.train.head_select import head_summary

    summary = head_summary(load_checkpoint(choice.out)[1])
    assert summary["head_choice"]["chosen"] == choice.chosen and "candidates" not in summary["head_choice"]
    assert summary["head_choice"]["held_out"]["figures"]["chosen"] == choice.record["held_out"]["figures"]["chosen"]
