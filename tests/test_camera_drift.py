"""Drifted views of the normals for fitting a score head (``data.camera``, ``train --fit-drift``,
``refit-head --fit-drift``): fixed per file, inside each drift's range, and the head really sees them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adtr_edge.data.camera import DRIFTS, check_drifts, drift_strength, drifted
from adtr_edge.errors import AdtrError
from adtr_edge.train.checkpoint import load_checkpoint
from adtr_edge.train.drift_choice import ships
from adtr_edge.train.refit import refit_head

from .conftest import refit_beside_plain


def _frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(40, 200, (256, 320, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", list(DRIFTS))
def test_a_drift_is_fixed_by_the_file_inside_its_range_and_changes_the_image(name):
    lo, hi = DRIFTS[name][1]
    strengths = [drift_strength(name, f"{i:03d}.png") for i in range(200)]
    assert all(lo <= s <= hi for s in strengths)
    assert max(strengths) - min(strengths) > 0.8 * (hi - lo)  # spread over the range, not one value
    assert drift_strength(name, "007.png") == strengths[7]
    img = _frame()
    out = drifted(img, name, "007.png")
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out, drifted(img, name, "007.png")) and not np.array_equal(out, img)


def test_drift_names_are_checked_with_the_option_named():
    assert check_drifts("none") == () and check_drifts("") == ()
    assert check_drifts("light, focus") == ("light", "focus")
    with pytest.raises(AdtrError, match=r"--fit-drift sharpen: not a drift"):
        check_drifts("light,sharpen")


def test_a_refit_on_drifted_views_changes_the_head_but_not_the_threshold_data(trained_checkpoint, sample_dataset, tmp_path):
    _, drift, m0, m1, c1 = refit_beside_plain(trained_checkpoint, sample_dataset, tmp_path, fit_drift="light,focus")
    assert drift.changed == {"fit_drift": ("none", "light,focus")}
    assert c1.train_config.fit_drift == "light,focus"
    t0, t1 = m0.transformer.state_dict(), m1.transformer.state_dict()
    assert all(torch.equal(t0[k], t1[k]) for k in t0)
    h0, h1 = dict(m0.head.named_buffers()), dict(m1.head.named_buffers())
    assert any(not torch.allclose(h0[k], h1[k]) for k in h0)  # the statistics saw more, and different, normals


def test_training_refuses_an_unknown_drift_before_any_work(sample_dataset, tmp_path, capsys):
    from adtr_edge.cli import main

    assert main(["train", str(sample_dataset), "--out", str(tmp_path / "m"), "--fit-drift", "fog", "--epochs", "1", "--no-progress"]) != 0
    assert "--fit-drift fog: not a drift" in capsys.readouterr().err and not (tmp_path / "m").exists()


def test_drifted_views_ship_only_when_they_cut_false_alarms_at_little_cost():
    from adtr_edge.train.drift_choice import MARGIN

    assert ships({"plain": 1.0, "drifted": 0.0}, [+0.3, -0.5, +1.1])
    assert not ships({"plain": 1.0, "drifted": 0.0}, [-3.0, -4.8, -1.2])  # robust but blind: kept off
    assert not ships({"plain": 0.2, "drifted": 0.2}, [+2.0, +1.0, +3.0])  # no fewer alarms: nothing to buy
    assert ships({"plain": 0.5, "drifted": 0.1}, [0.0, -MARGIN, +1.0]) and not ships({"plain": 0.5, "drifted": 0.1}, [0.0, -MARGIN - 0.01, 1.0])


def test_auto_decides_on_the_held_out_normals_and_says_why(trained_checkpoint, sample_dataset, tmp_path):
    from adtr_edge.train.head_select import head_summary

    res = refit_head(trained_checkpoint, sample_dataset, tmp_path / "auto", device="cpu", fit_drift="auto")
    choice = res.checkpoint.extra["drift_choice"]
    assert set(choice["false_alarms"]) == {"plain", "drifted"} and choice["drifted_normals"] > 0
    assert choice["drift"] == ships(choice["false_alarms"], choice["advantage_points"])
    assert "drifted views (light, focus, compression): false alarms on" in choice["why"]
    summary = head_summary(load_checkpoint(res.out)[1])
    assert summary["fit_drift"] == "auto" and summary["drift"] == {"fitted": choice["drift"], "why": choice["why"]}


def test_a_knock_moves_the_part_by_its_strength_and_turns_it_about_the_centre():
    from adtr_edge.data.camera import knock

    img = np.zeros((200, 200), np.uint8)
    img[90:110, 90:110] = 255  # a square at the centre: a turn about the centre leaves it there

    def centre(a):
        ys, xs = np.nonzero(a > 127)
        return ys.mean(), xs.mean()

    assert np.array_equal(knock(img, 0.0), img)
    for s in (1.0, -1.0, 0.4):
        cy, cx = centre(knock(img, s))
        assert abs(cy - (99.5 + round(0.05 * s * 200))) < 0.6 and abs(cx - (99.5 + round(0.05 * s * 200))) < 0.6
    bar = np.zeros((200, 200), np.uint8)
    bar[98:102, 20:180] = 255  # a horizontal bar turned by 5 degrees: its ends move apart vertically
    ys, xs = np.nonzero(knock(bar, 1.0) > 127)
    left, right = ys[xs < 60].mean(), ys[xs > 160].mean()
    assert abs(abs(left - right) - np.tan(np.radians(5)) * (xs[xs > 160].mean() - xs[xs < 60].mean())) < 2
