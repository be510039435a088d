"""Accuracy of each deployable form of one trained model, and what INT8 costs.

    python benchmarks/deploy_accuracy.py CHECKPOINT --data DATASET --out runs/deploy [--calib-count 64]
        [--forms torch,fp16,...] [--split all|val|test]

Rows (``--forms``, default all): PyTorch FP32 (the checkpoint), FP16 emulated in PyTorch
(``adtr_edge.evaluation.evaluate.fp16_emulated``), the float16 graphs run by ONNX Runtime, ONNX FP32 (ONNX
Runtime, CPU), and the INT8 forms: the TensorRT form (symmetric Q/DQ) with only the backbone
quantised and with both graphs, its quantisation-matched pair, and the ``--target cpu`` form
unmatched and matched. Calibration and head refits use normal *training* images (never test
images); choices are made on ``--split val`` and reported on ``--split test``. Also times every
ONNX form side by side (interleaved, batch 1) on ONNX Runtime: backend inference plus the
detector's post-processing, i.e. what ``stream`` spends per frame. Prints Markdown with the cost
in AUROC points against ONNX FP32.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from adtr_edge.bench.timing import interleaved
from adtr_edge.data.datasets import load_dataset, validation_split
from adtr_edge.int8.matched import quantize_matched
from adtr_edge.int8.quantize import quantize_export
from adtr_edge.evaluation.evaluate import backend_predictor, fp16_emulated, report_for, score_imageset, torch_predictor
from adtr_edge.export.onnx_export import export_checkpoint
from adtr_edge.fileio import write_json_atomic
from adtr_edge.preprocessing import preprocess_spec
from adtr_edge.runtime.detector import Detector
from adtr_edge.runtime.loading import load_backend
from adtr_edge.train.checkpoint import load_checkpoint


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


FORMS = {  # key: row name
    "torch": "PyTorch FP32",
    "fp16-emulated": "PyTorch FP16 emulated (weights, module outputs rounded; head FP32)",
    "fp16-onnx": "ONNX FP16 graphs (TensorRT 11 conversion, head FP32), ONNX Runtime",
    "fp32": "ONNX FP32",
    "int8-backbone": "ONNX INT8 backbone only (--target tensorrt)",
    "int8-both": "ONNX INT8 both graphs (--target tensorrt)",
    "int8-matched": "ONNX INT8 backbone, matched head (quantize-matched)",
    "cpu": "ONNX INT8 --target cpu (U8S8 backbone, dynamic transformer)",
    "cpu-matched": "ONNX INT8 --target cpu, matched head (quantize-matched --target cpu)",
    "cpu-matched-backbone": "ONNX INT8 --target cpu, backbone only, matched head (--graphs backbone)",
}


def make_folders(keys, checkpoint: Path, data: Path, out: Path, calib_count: int, mahalanobis: bool, keep_float: str) -> dict[str, Path]:
    """The ONNX folder of each requested ONNX form (FP32 export first: the INT8 forms start from it)."""
    calib_dir = data / "train" / "good"
    fp32 = out / "onnx-fp32"
    export_checkpoint(checkpoint, fp32, force=True)
    print("exported", flush=True)
    folders = {"fp32": fp32}
    for key, sub, graphs, target in (("int8-backbone", "onnx-int8-backbone", ("backbone",), "tensorrt"),
                                     ("int8-both", "onnx-int8-both", ("backbone", "transformer"), "tensorrt"),
                                     ("cpu", "onnx-int8-cpu", None, "cpu")):
        if key in keys:
            shutil.rmtree(out / sub, ignore_errors=True)
            folders[key] = quantize_export(fp32, calib_dir, out / sub, graphs=graphs, calib_count=calib_count, target=target,
                                           keep_float=keep_float)
    for key, sub, target, graphs in (("int8-matched", "onnx-int8-matched", "tensorrt", None),
                                     ("cpu-matched", "onnx-int8-cpu-matched", "cpu", None),
                                     ("cpu-matched-backbone", "onnx-int8-cpu-matched-bb", "cpu", ("backbone",))):
        if key in keys and mahalanobis:  # the head refitted on the INT8 backbone's features
            shutil.rmtree(out / sub, ignore_errors=True)
            folders[key] = quantize_matched(checkpoint, data, calib_dir, out / sub, calib_count=calib_count, target=target,
                                            keep_float=keep_float, graphs=graphs)
    return folders


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--data", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--calib-count", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--timing-rounds", type=int, default=20)
    ap.add_argument("--forms", default=",".join(FORMS), help=f"comma-separated subset of {', '.join(FORMS)}")
    ap.add_argument("--keep-float", default="auto", help="mixed-precision plan of every INT8 form (adtr-edge quantize --keep-float)")
    ap.add_argument("--split", choices=("all", "val", "test"), default="all",
                    help="score the whole test set, its validation split (choices) or the held-out rest (reports)")
    args = ap.parse_args()
    keys = [k.strip() for k in args.forms.split(",") if k.strip()]
    bad = [k for k in keys if k not in FORMS]
    if bad or "fp32" not in keys:
        sys.exit(f"--forms {args.forms!r}: choose from {', '.join(FORMS)} (fp32 is the reference and must be included)")
    out = Path(args.out)
    print(f"command: {' '.join(sys.argv)}", flush=True)
    model, ckpt = load_checkpoint(args.checkpoint)
    spec = preprocess_spec(ckpt.model_config)
    test = load_dataset(args.data, "test")
    if args.split != "all":
        val_part, test_part = validation_split(test)
        test = test.subset(val_part if args.split == "val" else test_part)
    folders = make_folders(keys, Path(args.checkpoint), Path(args.data), out, args.calib_count, ckpt.model_config.score == "mahalanobis",
                           args.keep_float)

    rows = {}
    if "torch" in keys:
        rows[FORMS["torch"]] = report_for(score_imageset(torch_predictor(model), test, spec, progress=False), ckpt.thresholds)
    if "fp16-emulated" in keys:
        rows[FORMS["fp16-emulated"]] = report_for(
            score_imageset(torch_predictor(fp16_emulated(model)), test, spec, progress=False), ckpt.thresholds)
    if "fp16-onnx" in keys:
        rows[FORMS["fp16-onnx"]] = report_for(
            score_imageset(float16_predictor(folders["fp32"], out / "onnx-fp16", args.threads), test, spec, progress=False), ckpt.thresholds)
    detectors = {}
    for key, folder in folders.items():
        name = FORMS[key]
        backend = load_backend(folder, "onnxruntime", intra_op_threads=args.threads).activate()
        detectors[name] = Detector(backend)
        rows[name] = report_for(score_imageset(backend_predictor(backend), test, spec, progress=False), ckpt.thresholds)
        print(name, json.dumps({k: rows[name][k] for k in ("image_auroc", "pixel_auroc", "aupro")}), flush=True)

    # Interleaved timing: one batch-1 frame through each form in turn, so load spikes hit all.
    frame = np.random.default_rng(0).integers(0, 256, (spec.height, spec.width, 3), dtype=np.uint8)
    times = interleaved({k: (lambda d=d: d(frame)) for k, d in detectors.items()}, args.timing_rounds, 1, warmup=2)
    ref = rows[FORMS["fp32"]]
    lines = ["| form | image AUROC | pixel AUROC | AUPRO | cost vs ONNX FP32 (image / pixel AUROC points) | median ms per frame (batch 1, "
             f"{args.threads} thread) | speed vs FP32 |", "|---|---|---|---|---|---|---|"]
    base_ms = float(np.median(times[FORMS["fp32"]]))
    for name, r in rows.items():
        ms = float(np.median(times[name])) if name in times else None
        cost = f"{(r['image_auroc'] - ref['image_auroc']) * 100:+.2f} / {(r['pixel_auroc'] - ref['pixel_auroc']) * 100:+.2f}"
        lines.append(f"| {name} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['aupro']:.4f} | {cost} | "
                     + (f"{ms:.1f} | {base_ms / ms:.2f}x |" if ms else "n/a | n/a |"))
    table = "\n".join(lines)
    print(table)
    write_json_atomic(out / "deploy_accuracy.json", {"command": " ".join(sys.argv), "split": args.split, "images": len(test),
                      "rows": {k: {x: v.get(x) for x in ("image_auroc", "pixel_auroc", "aupro", "f1_max")} for k, v in rows.items()},
                      "median_ms": {k: float(np.median(v)) for k, v in times.items()}, "table": table})


if __name__ == "__main__":
    main()
