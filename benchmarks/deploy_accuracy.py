"""Accuracy of each deployable form of one trained model, and what INT8 costs.

    python benchmarks/deploy_accuracy.py CHECKPOINT --data DATASET --out runs/deploy [--calib-count 64]

Rows: PyTorch FP32 (the checkpoint), FP16 emulated in PyTorch (``adtr_edge.evaluate.fp16_emulated``), ONNX FP32 (ONNX Runtime, CPU), ONNX Q/DQ INT8 with only the
backbone quantised, and with both graphs quantised. Calibration uses normal *training* images
(never test images). Also times FP32 vs INT8 side by side (interleaved) on ONNX Runtime.
Prints Markdown with the cost in AUROC points against ONNX FP32.
"""

from __future__ import annotations

import argparse
import shutil
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adtr_edge.data.datasets import load_dataset  # noqa: E402
from adtr_edge.evaluate import backend_predictor, fp16_emulated, report_for, score_imageset, torch_predictor  # noqa: E402
from adtr_edge.export.onnx_export import export_checkpoint  # noqa: E402
from adtr_edge.engine.matched import quantize_matched  # noqa: E402
from adtr_edge.engine.quantize import quantize_export  # noqa: E402
from adtr_edge.fileio import write_json_atomic  # noqa: E402
from adtr_edge.preprocessing import preprocess_spec  # noqa: E402
from adtr_edge.runtime.loading import load_backend  # noqa: E402
from adtr_edge.train.checkpoint import load_checkpoint  # noqa: E402


def float16_predictor(export_dir: Path, out: Path, threads: int):
    """Both graphs converted as the TensorRT 11 path converts them (error head float32), run by ONNX
    Runtime on the CPU: every tensor between ops is stored in float16, as in an FP16 engine."""
    import onnx
    import onnxruntime as ort

    from adtr_edge.engine.onnx_tools import convert_to_fp16

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions = {}
    out.mkdir(parents=True, exist_ok=True)
    for name in ("backbone", "transformer"):
        path = out / f"{name}.fp16.onnx"
        onnx.save(convert_to_fp16(onnx.load(str(export_dir / f"{name}.onnx"))), str(path))
        sessions[name] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def predict(batch: np.ndarray):
        features = sessions["backbone"].run(None, {"images": batch})[0]
        amap, score = sessions["transformer"].run(None, {"features": features})
        return amap[:, 0], score

    return predict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--calib-count", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timing-rounds", type=int, default=20)
    args = ap.parse_args()
    out = Path(args.out)
    print(f"command: {' '.join(sys.argv)}", flush=True)
    model, ckpt = load_checkpoint(args.checkpoint)
    spec = preprocess_spec(ckpt.model_config)
    test = load_dataset(args.data, "test")
    calib_dir = Path(args.data) / "train" / "good"
    fp32 = out / "onnx-fp32"
    export_checkpoint(args.checkpoint, fp32, force=True)
    print("exported", flush=True)
    forms = {"ONNX FP32": fp32}
    forms["ONNX INT8 backbone only"] = quantize_export(fp32, calib_dir, out / "onnx-int8-backbone", graphs=("backbone",),
                                                       calib_count=args.calib_count)
    forms["ONNX INT8 both graphs"] = quantize_export(fp32, calib_dir, out / "onnx-int8-both", calib_count=args.calib_count)
    if ckpt.model_config.score == "mahalanobis":  # the head refitted on the INT8 backbone's features
        shutil.rmtree(out / "onnx-int8-matched", ignore_errors=True)
        forms["ONNX INT8 backbone, matched head (quantize-matched)"] = quantize_matched(
            Path(args.checkpoint), Path(args.data), calib_dir, out / "onnx-int8-matched", calib_count=args.calib_count)

    rows = {}
    scored = score_imageset(torch_predictor(model), test, spec, progress=False)
    rows["PyTorch FP32"] = report_for(scored, ckpt.thresholds)
    rows["PyTorch FP16 emulated (weights, module outputs rounded; head FP32)"] = report_for(
        score_imageset(torch_predictor(fp16_emulated(model)), test, spec, progress=False), ckpt.thresholds)
    rows["ONNX FP16 graphs (TensorRT 11 conversion, head FP32), ONNX Runtime"] = report_for(
        score_imageset(float16_predictor(fp32, out / "onnx-fp16", args.threads), test, spec, progress=False), ckpt.thresholds)
    backends = {}
    for name, folder in forms.items():
        backends[name] = load_backend(folder, "onnxruntime", intra_op_threads=args.threads).activate()
        rows[name] = report_for(score_imageset(backend_predictor(backends[name]), test, spec, progress=False), ckpt.thresholds)
        print(name, json.dumps({k: rows[name][k] for k in ("image_auroc", "pixel_auroc", "aupro")}), flush=True)

    # Interleaved timing: one batch-1 frame through each form in turn, so load spikes hit all.
    frame = np.random.default_rng(0).integers(0, 256, (1, spec.height, spec.width, 3), dtype=np.uint8)
    times = {k: [] for k in backends}
    for _ in range(2):
        for b in backends.values():
            b.infer(frame)
    for _ in range(args.timing_rounds):
        for k, b in backends.items():
            t = time.perf_counter()
            b.infer(frame)
            times[k].append((time.perf_counter() - t) * 1e3)
    ref = rows["ONNX FP32"]
    lines = ["| form | image AUROC | pixel AUROC | AUPRO | cost vs ONNX FP32 (image / pixel AUROC points) | median ms (batch 1, "
             f"{args.threads} thread) | speed vs FP32 |", "|---|---|---|---|---|---|---|"]
    base_ms = float(np.median(times["ONNX FP32"]))
    for name, r in rows.items():
        ms = float(np.median(times[name])) if name in times else None
        cost = f"{(r['image_auroc'] - ref['image_auroc']) * 100:+.2f} / {(r['pixel_auroc'] - ref['pixel_auroc']) * 100:+.2f}"
        lines.append(f"| {name} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['aupro']:.4f} | {cost} | "
                     + (f"{ms:.1f} | {base_ms / ms:.2f}x |" if ms else "n/a | n/a |"))
    table = "\n".join(lines)
    print(table)
    write_json_atomic(out / "deploy_accuracy.json", {"command": " ".join(sys.argv), "rows": {k: {x: v.get(x) for x in
                      ("image_auroc", "pixel_auroc", "aupro", "f1_max")} for k, v in rows.items()},
                      "median_ms": {k: float(np.median(v)) for k, v in times.items()}, "table": table})


if __name__ == "__main__":
    main()
