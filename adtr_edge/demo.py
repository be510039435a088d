"""``adtr-edge demo``: the whole product on a fresh CPU machine, in a few minutes.

generate a sample dataset -> train a small ADTR (CPU, progress bar) -> evaluate -> export two ONNX
graphs -> stream a generated video with known defective frames through ONNX Runtime -> events
(JSON Lines), an overlay video, saved anomalies, and a check of the alarms against the truth.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import typer

from .errors import require

# Small but real: the default recipe's transformer (2+2 layers, d128, masked attention, sine
# positions, Mahalanobis head) on Lite0 stages at strides 4/8/16, a 16x16 grid at 128 px. Trains in
# about two minutes on 2 cores.
DEMO_MODEL = dict(input_size=(128, 128), feature_stride=8, pool_kernel=16)


@dataclass
class DemoResult:
    folder: Path
    metrics: dict
    stream: dict
    truth: dict


def run_demo(out: Path, *, epochs: int = 15, frames: int = 120, force: bool = False, progress: bool = True,
             log=typer.echo) -> DemoResult:
    from .config import PRESETS, ModelConfig, TrainConfig
    from .data.datasets import load_dataset
    from .data.generate import generate_sample_dataset, generate_video
    from .evaluation.evaluate import evaluate_checkpoint
    from .export.onnx_export import export_checkpoint
    from .runtime.pipeline import run_stream
    from .train.loop import train_model

    out = Path(out)
    require(frames >= 10, f"--frames {frames}: use at least 10")
    require(epochs >= 1, f"--epochs {epochs}: use at least 1")
    if out.exists():
        require(force, f"{out} already exists; pass --force to run the demo again there")
        shutil.rmtree(out)
    out.mkdir(parents=True)

    log("1/5 generating a sample dataset (textures with scratches, spots, cracks, missing patches)")
    data = generate_sample_dataset(out / "data", n_train=120, n_test_good=30, n_test_defect=40, size=(160, 160), seed=0)

    log(f"2/5 training ADTR on the CPU ({epochs} epochs)")
    recipe = PRESETS["default"]
    cfg = ModelConfig(**{**recipe["model"], **DEMO_MODEL})
    train_cfg = TrainConfig(**{**recipe["train"], "epochs": epochs, "preset": "default"})
    train_model(load_dataset(data, "train"), cfg, train_cfg, out / "model",
                progress=progress, log=log)

    log("3/5 evaluating on the held-out test split")
    metrics = evaluate_checkpoint(out / "model", load_dataset(data, "test"), out / "eval", progress=progress, resamples=1000)
    ci = metrics.get("intervals", {})

    def figure(key: str) -> str:  # "0.998 [0.990-1.000]": the 95% bootstrap interval of a test set this small
        return f"{metrics[key]:.3f}" + (f" [{ci[key][0]:.3f}-{ci[key][1]:.3f}]" if key in ci else "")

    log(f"    image AUROC {figure('image_auroc')}, pixel AUROC {figure('pixel_auroc')}, AUPRO {figure('aupro')}"
        f"  (95% intervals; pictures in {out / 'eval'})")

    log("4/5 exporting backbone.onnx + transformer.onnx")
    export_checkpoint(out / "model", out / "onnx")

    log(f"5/5 streaming a generated video ({frames} frames) through ONNX Runtime")
    defect_frames = {i for i in range(frames) if (i // 5) % 4 == 3}  # 5-frame bursts of defects, every 20 frames
    video = generate_video(out / "line.mp4", n_frames=frames, defect_frames=defect_frames, size=(160, 160), seed=1)
    summary = run_stream(out / "onnx", str(video.path), backend="onnxruntime", events=out / "events.jsonl",
                         record=out / "overlay.mp4", save_anomalies=out / "anomalies", min_consecutive=2,
                         summary_path=out / "summary.json", handle_signals=True)
    truth = _check_against_truth(out / "events.jsonl", dict(video.frames))
    (out / "truth.json").write_text(json.dumps(truth, indent=2))
    log(f"    frames {truth['frames']}: detected {truth['tp']}/{truth['tp'] + truth['fn']} defective frames, "
        f"{truth['fp']} false alarms on {truth['fp'] + truth['tn']} good frames")
    log(f"done: events {out / 'events.jsonl'}, overlay video {out / 'overlay.mp4'}, anomalies {out / 'anomalies'}")
    return DemoResult(out, metrics, summary, truth)


def _check_against_truth(events_path: Path, truth: dict) -> dict:
    tp = fp = fn = tn = 0
    n = 0
    with open(events_path, encoding="utf-8") as f:
        for line in f:
            ev = json.loads(line)
            if ev.get("event") != "frame":
                continue
            n += 1
            bad, said = truth.get(int(ev["frame"]), False), bool(ev["label"])
            tp += bad and said
            fp += (not bad) and said
            fn += bad and not said
            tn += (not bad) and not said
    return {"frames": n, "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("adtr-demo"), "--out", "-o", help="Folder for everything the demo writes."),
        epochs: int = typer.Option(15, help="Training epochs (each takes a few seconds on 2 cores)."),
        frames: int = typer.Option(120, help="Frames in the generated video."),
        force: bool = typer.Option(False, help="Replace an existing --out folder."),
        progress: bool = typer.Option(True, help="Show progress bars."),
    ):
        """Run the whole pipeline on generated data: train, evaluate, export, stream (ONNX Runtime, CPU)."""
        run_demo(out, epochs=epochs, frames=frames, force=force, progress=progress)
