#!/usr/bin/env python3
"""Validate this device: build FP16 and INT8 engines from an export folder, compare them with
ONNX Runtime (anomaly map and score, max abs / rel diff), time them, write a JSON report.

    python scripts/validate_device.py EXPORT_DIR --calib-images DIR [--out report.json] [--batch 4]
    python scripts/validate_device.py            # no export: trains a small model on generated data first

Needs a CUDA GPU, tensorrt, cuda-python and onnxruntime. INT8 uses the calibrator on 8.x-10.x and a
Q/DQ copy made with ``adtr-edge quantize`` (backbone only) on 11.x.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from adtr_edge.engine.builder import BuildOptions, build_engines  # noqa: E402
from adtr_edge.engine.manifest import Profile  # noqa: E402
from adtr_edge.errors import AdtrError  # noqa: E402
from adtr_edge.fileio import write_json_atomic  # noqa: E402


def _diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.abs(a - b)
    return {"max_abs": float(d.max()), "max_rel": float(d.max() / (np.abs(b).max() + 1e-12))}


def validate(export: Path, calib_images: Path, batch: int, iters: int, work: Path) -> dict:
    import onnxruntime as ort

    from adtr_edge.folder import read_export
    from adtr_edge.engine.calibration import backbone_batches, calibration_images
    from adtr_edge.engine.trt_api import load_api
    from adtr_edge.runtime.backends.tensorrt import TensorRTBackend, available
    from adtr_edge.cuda import make_cuda_runtime

    ok, why = available()
    if not ok:
        raise AdtrError(f"cannot validate: {why}")
    api = load_api()
    meta = read_export(export).meta
    images = backbone_batches(calibration_images(calib_images, batch), meta.preprocess, batch)[0]
    ref_b = ort.InferenceSession(str(export / "backbone.onnx"), providers=["CPUExecutionProvider"])
    ref_t = ort.InferenceSession(str(export / "transformer.onnx"), providers=["CPUExecutionProvider"])
    amap_ref, score_ref = ref_t.run(None, {"features": ref_b.run(None, {"images": images})[0]})
    gpu = make_cuda_runtime().device_info()  # cuda-python, else pycuda (JetPack images may have only pycuda)
    report = {"trt_version": api.version_string, "gpu": gpu.name, "compute_capability": gpu.compute_capability,
              "export": str(export), "batch": batch, "results": {}}
    for precision in ("fp16", "int8"):
        src = export
        if precision == "int8" and not api.has_calibrators:
            from adtr_edge.int8.quantize import quantize_export

            src = quantize_export(export, calib_images, work / "qdq", ["backbone"], 64, batch)
        opts = BuildOptions(precision=precision, profile=Profile(1, batch, batch), calib_images=calib_images,
                            calib_dir=work / "calibration", build_log=work / f"build-{precision}.log")
        t0 = time.perf_counter()
        rep = build_engines(src, work / "engines", precision, opts)
        build_s = time.perf_counter() - t0
        with TensorRTBackend(rep.folder) as be:
            r = be.infer(images)
            for _ in range(3):
                be.infer(images)  # warm-up
            t0 = time.perf_counter()
            timings = [res.timings for res in be.infer_many([images] * iters)]
            wall = (time.perf_counter() - t0) / iters
        report["results"][precision] = {
            "anomaly_map": _diff(r.anomaly_map, amap_ref), "score": _diff(r.score, score_ref),
            "build_seconds": round(build_s, 1), "ms_per_batch_pipelined": wall * 1e3,
            "images_per_second": batch / wall,
            "backbone_gpu_ms": float(np.median([t["backbone_gpu"] for t in timings])),
            "transformer_gpu_ms": float(np.median([t["transformer_gpu"] for t in timings])),
            "plan": {g: p.precision for g, p in rep.plans.items()},
        }
    return report


def export_opset() -> int:
    """The opset for the TensorRT installed here: 16 below 8.6 (JetPack 5), else 17."""
    from adtr_edge.engine.trt_api import installed_version
    from adtr_edge.export.opset import choose_opset

    return choose_opset(None, installed_version())


def small_model(work: Path) -> tuple[Path, Path]:
    """Generate the sample dataset, train the demo-sized model briefly (GPU if torch sees one), export it."""
    from adtr_edge.config import ModelConfig, TrainConfig
    from adtr_edge.data.datasets import load_dataset
    from adtr_edge.data.generate import generate_sample_dataset
    from adtr_edge.demo import DEMO_MODEL
    from adtr_edge.export.onnx_export import export_checkpoint
    from adtr_edge.train.loop import train_model

    data = generate_sample_dataset(work / "data", n_train=60, n_test_good=10, n_test_defect=10, size=(160, 160), seed=0,
                                   overwrite=True)
    train_model(load_dataset(data, "train"), ModelConfig(**DEMO_MODEL), TrainConfig(epochs=3), work / "model", progress=False)
    export_checkpoint(work / "model", work / "onnx", opset=export_opset(), force=True)
    return work / "onnx", data / "train" / "good"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", type=Path, nargs="?", default=None,
                    help="export folder from 'adtr-edge export' (default: train a small model on generated data)")
    ap.add_argument("--calib-images", type=Path, default=None, help="folder of normal images (calibration + test input)")
    ap.add_argument("--out", type=Path, default=Path("validate_device.json"))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--work", type=Path, default=None, help="keep engines and logs here (default: a temp folder)")
    a = ap.parse_args()
    try:
        with tempfile.TemporaryDirectory(prefix="adtr-validate-") as tmp:
            work = a.work or Path(tmp)
            export, calib = a.export, a.calib_images
            if export is None:
                from adtr_edge.runtime.backends.tensorrt import available

                ok, why = available()  # fail before spending minutes on training
                if not ok:
                    raise AdtrError(f"cannot validate: {why}")
                export, calib = small_model(work)
            if calib is None:
                raise AdtrError("--calib-images is required with an export folder")
            report = validate(export, calib, a.batch, a.iters, work)
    except AdtrError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_json_atomic(a.out, report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
