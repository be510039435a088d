import json
import subprocess
import sys
from pathlib import Path

from adtr_edge.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_train_eval_export_through_the_cli(tmp_path, sample_dataset, capsys):
    ckpt, ev, onnx_dir = tmp_path / "ckpt", tmp_path / "eval", tmp_path / "onnx"
    args = ["train", str(sample_dataset), "--out", str(ckpt), "--input-size", "64", "--encoder-layers", "1",
            "--decoder-layers", "1", "--d-model", "64", "--epochs", "2", "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    assert (ckpt / "checkpoint.json").is_file()
    model = json.loads((ckpt / "checkpoint.json").read_text())["model"]
    assert model["backbone"] == "tf_efficientnet_lite2" and model["stages"] == [1, 2, 3] and model["region_grid"] == 4  # the default preset's
    assert main(["eval", str(ckpt), str(sample_dataset), "--out", str(ev), "--no-progress", "--device", "cpu"]) == 0
    report = json.loads((ev / "report.json").read_text())
    assert 0.0 <= report["image_auroc"] <= 1.0 and report["pixel_auroc"] is not None
    ci = report["intervals"]  # 95% bootstrap intervals around each figure, printed with it
    for metric in ("image_auroc", "pixel_auroc", "aupro"):
        assert ci[metric][0] <= report[metric] + 1e-3 and report[metric] - 1e-3 <= ci[metric][1]
    printed = capsys.readouterr().out
    assert f"[{ci['pixel_auroc'][0]:.4f}, {ci['pixel_auroc'][1]:.4f}]" in printed
    at = report["at_threshold"]  # what the threshold does on these images, beside the ranking
    n_def, n_norm = at["tp"] + at["fn"], at["fp"] + at["tn"]
    assert n_def == report["n_anomalous"] and n_def + n_norm == report["n_images"]
    assert (f"at the threshold {at['threshold']:.4g}: flags {at['tp'] / n_def:.1%} ({at['tp']} of {n_def}) of the defective "
            f"images and {at['fp'] / n_norm:.1%} ({at['fp']} of {n_norm}) of the normal ones") in printed
    # 2 held-out normals are too few to choose the head on (train.head_select): the configured one is kept, and said so
    assert "score head: shrinkage 0.05 kept (2 held-out normals; choosing needs 5)" in printed
    assert report["score_head"] == {"score": "mahalanobis", "shrinkage": 0.05, "target": "identity", "fit": "fit", "selection": None,
                                    "region_grid": 4, "region_shrinkage": 0.3}  # the preset's regional image score
    for pic in ("roc.png", "score_histogram.png", "overlays.png"):
        assert (ev / pic).stat().st_size > 1000
    assert main(["export", str(ckpt), "--out", str(onnx_dir)]) == 0
    capsys.readouterr()
    assert main(["export", str(ckpt), "--out", str(onnx_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--force" in err and len(err.splitlines()) == 1


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "missing" in err and len(err.splitlines()) == 1
    assert main(["train", str(tmp_path), "--input-size", "banana"]) == 2
    assert "--input-size" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "ckpt"), str(tmp_path), "--bootstrap", "5"]) == 2
    assert "--bootstrap 5" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--map-pool-clip", "0.5", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "--map-pool-clip 0.5" in err and "--map-pool K" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_map_pool_turns_on_the_clipped_form_unless_told_otherwise():
    from adtr_edge.train.cli import _pool_clip
    from adtr_edge.config import MAP_POOL_CLIP

    assert _pool_clip(5, None) == MAP_POOL_CLIP == 0.99
    assert _pool_clip(5, 0.0) == 0.0 and _pool_clip(5, 0.9) == 0.9
    assert _pool_clip(None, None) is None and _pool_clip(0, None) is None  # off: the config's own default (no clip)


def test_eval_refuses_images_used_for_training(tmp_path, sample_dataset, trained_checkpoint, capsys):
    # A "test" set that is really the training set must not be scored.
    import shutil

    fake = tmp_path / "leaky"
    shutil.copytree(sample_dataset, fake)
    shutil.rmtree(fake / "test" / "good")
    shutil.copytree(sample_dataset / "train" / "good", fake / "test" / "good")
    assert main(["eval", str(trained_checkpoint), str(fake), "--out", str(tmp_path / "ev"), "--no-progress"]) == 2
    assert "share" in capsys.readouterr().err


def test_launcher_in_checkout():
    out = subprocess.run([sys.executable, str(REPO / "cli.py"), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for cmd in ("train", "eval", "export", "inspect", "quantize", "build-engine", "stream", "bench", "demo"):
        assert cmd in out.stdout


def test_each_preset_names_its_backbone_and_the_user_overrides_it():
    from adtr_edge.config import BACKBONES, PRESETS, ModelConfig, preset_backbone

    assert preset_backbone("default") == "tf_efficientnet_lite2"
    assert preset_backbone("fast") == "tf_efficientnet_lite0"
    for name in PRESETS:
        assert preset_backbone(name) in BACKBONES
        assert "backbone" not in PRESETS[name].get("model", {})  # stages and normalisation follow for_backbone
    assert ModelConfig.for_backbone(preset_backbone("default")).stages == BACKBONES["tf_efficientnet_lite2"]["stages"]


def test_a_preset_input_size_applies_unless_the_user_names_one():
    from adtr_edge.config import ModelConfig, apply_preset

    assert ModelConfig(**apply_preset("fast", {"input_size": None}, {})[0]).input_size == (224, 224)
    assert ModelConfig(**apply_preset("fast", {"input_size": (256, 256)}, {})[0]).input_size == (256, 256)
    assert ModelConfig(**apply_preset("default", {"input_size": None}, {})[0]).input_size == (256, 256)


def test_another_score_drops_the_presets_regional_term_unless_named():
    from adtr_edge.config import ModelConfig, apply_preset

    assert ModelConfig(**apply_preset("default", {"score": None, "region_grid": None}, {})[0]).region_grid == 4
    assert ModelConfig(**apply_preset("default", {"score": "l2", "region_grid": None}, {})[0]).region_grid == 0
    m, _ = apply_preset("default", {"score": "l2", "region_grid": 2}, {})
    assert m["region_grid"] == 2  # named: kept, and ModelConfig says why it cannot be


def test_eval_scores_a_deployed_folder_against_its_checkpoint(tmp_path, sample_dataset, trained_checkpoint, exported_model, capsys):
    # What an edge user trusts is the folder they deploy: eval runs it through its runtime backend and,
    # with --against, gives each metric's difference from the reference with a paired interval.
    ev = tmp_path / "ev"
    assert main(["eval", str(exported_model), str(sample_dataset), "--against", str(trained_checkpoint), "--out", str(ev),
                 "--no-progress", "--no-pictures", "--bootstrap", "50"]) == 0
    report = json.loads((ev / "report.json").read_text())
    assert report["kind"] == "onnx" and report["backend"] == "onnxruntime"
    vs = report["against"]
    for metric in ("image_auroc", "pixel_auroc", "aupro"):
        estimate, low, high = vs[metric]["difference"]
        assert abs(estimate) < 2e-3 and low - 1e-3 <= estimate <= high + 1e-3  # ONNX Runtime and PyTorch agree (parity)
        assert abs(vs["reference"][metric] + estimate - report[metric]) < 1e-9
    assert "against " + str(trained_checkpoint) in capsys.readouterr().out
    # A reference that is not there: one clear line, exit 2.
    assert main(["eval", str(exported_model), str(sample_dataset), "--against", str(tmp_path / "none"), "--out", str(ev),
                 "--no-progress"]) == 2
    assert "not found" in capsys.readouterr().err
