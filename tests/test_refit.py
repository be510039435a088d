"""adtr-edge refit-head: another head on the same trained transformer, fitted as training fits it."""

from __future__ import annotations

import json

import pytest
import torch

from adtr_edge.cli import main
from adtr_edge.errors import AdtrError
from adtr_edge.fileio import staged_folder
from adtr_edge.train.checkpoint import load_checkpoint
from adtr_edge.train.refit import head_settings, refit_head


def test_a_refit_with_the_same_settings_reproduces_the_trained_head(trained_checkpoint, sample_dataset, tmp_path):
    res = refit_head(trained_checkpoint, sample_dataset, tmp_path / "same", device="cpu")
    (m0, c0), (m1, c1) = load_checkpoint(trained_checkpoint), load_checkpoint(res.out)
    assert res.changed == {} and c1.extra["refit"] == {"from": str(trained_checkpoint), "changed": {}}
    assert c1.thresholds.threshold == pytest.approx(c0.thresholds.threshold, rel=1e-5)
    s0, s1 = m0.state_dict(), m1.state_dict()
    assert s0.keys() == s1.keys() and all(torch.allclose(s0[k], s1[k], rtol=1e-4, atol=1e-5) for k in s0)


def test_a_refit_changes_only_the_head_and_says_what_changed(trained_checkpoint, sample_dataset, tmp_path):
    res = refit_head(trained_checkpoint, sample_dataset, tmp_path / "nopool", device="cpu", map_pool=0, region_grid=2)
    (m0, c0), (m1, c1) = load_checkpoint(trained_checkpoint), load_checkpoint(res.out)
    assert res.changed == {"map_pool": (5, 0), "region_grid": (4, 2)} and c1.model_config.map_pool == 0
    assert json.loads((res.out / "checkpoint.json").read_text())["extra"]["refit"]["changed"] == {"map_pool": [5, 0], "region_grid": [4, 2]}
    t0, t1 = m0.transformer.state_dict(), m1.transformer.state_dict()
    assert all(torch.equal(t0[k], t1[k]) for k in t0)  # the trained weights are the trained weights
    assert "pool_scale" not in dict(m1.head.named_buffers()) and m1.head.region_basis.shape[0] == m1.backbone.channels * 2 * 2
    assert c1.thresholds.threshold != pytest.approx(c0.thresholds.threshold)  # recalibrated for the new head
    from adtr_edge.train.head_select import head_summary

    summary = head_summary(c1)  # what eval reports and an export carries
    assert summary["region_grid"] == 2 and "map_pool" not in summary
    assert summary["refit"] == {"from": str(trained_checkpoint), "changed": {"map_pool": [5, 0], "region_grid": [4, 2]}}
    assert head_summary(c0)["map_pool"] == 5 and head_summary(c0)["map_pool_clip"] == 0.99 and "refit" not in head_summary(c0)


def test_turning_the_pool_on_gives_it_the_shipped_clip():
    from adtr_edge.config import MAP_POOL_CLIP, ModelConfig, TrainConfig
    from adtr_edge.train.checkpoint import Checkpoint

    ckpt = Checkpoint(ModelConfig(score="mahalanobis"), TrainConfig(), None, {}, [], {})
    cfg, _, changed = head_settings(ckpt, map_pool=5)
    assert cfg.map_pool_clip == MAP_POOL_CLIP and changed["map_pool_clip"] == (0.0, MAP_POOL_CLIP)
    assert head_settings(ckpt, map_pool=5, map_pool_clip=0.0)[0].map_pool_clip == 0.0  # the unclipped form, if asked
    with pytest.raises(AdtrError, match="--map-pool-clip 0.5"):
        head_settings(ckpt, map_pool_clip=0.5)  # no pooled part to clip
    with pytest.raises(AdtrError, match="map_pool 4"):
        head_settings(ckpt, map_pool=4)
    with pytest.raises(AdtrError, match="not head settings"):
        head_settings(ckpt, d_model=64)


def test_a_refit_refuses_other_data_an_existing_folder_and_the_checkpoint_itself(trained_checkpoint, tmp_path):
    from adtr_edge.data.generate import generate_sample_dataset

    other = generate_sample_dataset(tmp_path / "other", n_train=6, n_test_good=1, n_test_defect=1, size=(96, 96), seed=3)
    with pytest.raises(AdtrError, match="not the ones .* was trained on"):
        refit_head(trained_checkpoint, other, tmp_path / "x", device="cpu")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".tmp-*"))
    (tmp_path / "taken").mkdir()
    with pytest.raises(AdtrError, match="--force"):
        refit_head(trained_checkpoint, other, tmp_path / "taken", device="cpu")
    with pytest.raises(AdtrError, match="is the checkpoint itself"):
        refit_head(trained_checkpoint, other, trained_checkpoint, device="cpu", force=True)


def test_the_cli_refits_and_prints_the_comparison_to_run(trained_checkpoint, sample_dataset, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["refit-head", str(trained_checkpoint), str(sample_dataset), "--out", str(out), "--map-pool", "3", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "map_pool 5 -> 3" in printed and f"--against {trained_checkpoint}" in printed
    assert load_checkpoint(out)[1].model_config.map_pool == 3
    assert main(["refit-head", str(trained_checkpoint), str(sample_dataset), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--force" in err and len(err.splitlines()) == 1


def test_a_staged_folder_replaces_the_old_one_whole_or_not_at_all(tmp_path):
    final = tmp_path / "f"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_folder(final) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("disk full")
    assert [p.name for p in final.iterdir()] == ["old.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    with staged_folder(final) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
    assert final.stat().st_mode & 0o777 == 0o755  # readable by others, unlike mkdtemp's 0700


def test_a_staged_folder_puts_the_old_one_back_if_the_new_one_cannot_take_its_place(tmp_path, monkeypatch):
    import os

    final = tmp_path / "f"
    final.mkdir()
    (final / "old.txt").write_text("old")
    real_replace, calls = os.replace, []

    def flaky(src, dst):  # the first rename (old aside) works, the second (new into place) fails
        calls.append((src, dst))
        if len(calls) == 2:
            raise OSError("cross-device link")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky)
    with pytest.raises(OSError, match="cross-device"):
        with staged_folder(final) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert [p.name for p in final.iterdir()] == ["old.txt"] and sorted(p.name for p in tmp_path.iterdir()) == ["f"]
