"""OpenVINO against ONNX Runtime on the same export folders: agreement, then speed (issue #11 item 6).

    python benchmarks/openvino_speed.py LABEL=FOLDER [LABEL=FOLDER ...] --reference FOLDER
        [--data DATASET] [--images 16] [--threads 1] [--rounds 15] [--iters 3] [--runtimes ...] [--json FILE]

Every folder is an ``adtr-edge export`` / ``quantize`` folder, read unchanged: OpenVINO loads the
same ``backbone.onnx`` and ``transformer.onnx`` (uint8 NHWC input, Q/DQ nodes, dynamic INT8 nodes,
the adtr-edge metadata) that the ONNX Runtime backend runs. ONNX Runtime goes through the
project's own backend (``load_backend(..., "onnxruntime")``), so a ``--target tensorrt`` folder
runs with exact rounding as it does in ``stream``. OpenVINO runs on its CPU plugin with
``INFERENCE_NUM_THREADS`` = ``--threads``, the latency hint and one stream, twice: as read (the
batch dimension dynamic, as exported) and reshaped to a static batch of 1.

1. Agreement: on ``--images`` test images of ``--data`` (else seeded random frames), OpenVINO's
   features, anomaly maps and scores against ONNX Runtime's on the same folder (relative L2
   error), and each form's score against the FP32 reference folder on ONNX Runtime.
2. Speed, batch 1: backbone alone, transformer alone (on that form's own features) and end to
   end, every (folder, runtime) variant interleaved with ONNX Runtime on the reference folder, so
   the other processes on a shared machine hit them alike. Medians of wall time and of this
   process's CPU time (one thread: CPU time is what the work costs, wall time adds the waits for
   a core when the machine is busy).
A folder OpenVINO cannot compile is reported with its error and left out of the timing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from adtr_edge.bench import scripts
from adtr_edge.bench.timing import interleaved_wall_cpu
from adtr_edge.metadata import ANOMALY_MAP, FEATURES, IMAGES, SCORE
from adtr_edge.runtime.loading import load_backend

PARTS = ("backbone", "transformer", "end to end")


class OpenVinoGraphs:
    """The two graphs of one folder compiled by OpenVINO's CPU plugin (``static``: batch fixed at 1)."""

    def __init__(self, folder: Path, threads: int, static: bool):
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        self.requests = {}
        for graph, name in (("backbone", IMAGES), ("transformer", FEATURES)):
            model = core.read_model(str(folder / f"{graph}.onnx"))
            if static:
                shape = model.input(name).get_partial_shape()
                model.reshape({name: [1] + [d.get_length() for d in list(shape)[1:]]})
            self.requests[graph] = core.compile_model(model, "CPU", config).create_infer_request()

    def backbone(self, images: np.ndarray) -> np.ndarray:
        request = self.requests["backbone"]
        request.infer({IMAGES: images})
        return request.get_tensor(FEATURES).data.copy()

    def transformer(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        request = self.requests["transformer"]
        request.infer({FEATURES: features})
        return request.get_tensor(ANOMALY_MAP).data.copy(), request.get_tensor(SCORE).data.reshape(-1).copy()


class OrtGraphs:
    """The project's ONNX Runtime backend on one folder, seen as the same two calls."""

    def __init__(self, folder: Path, threads: int):
        self.backend = load_backend(folder, "onnxruntime", intra_op_threads=threads).activate()

    def backbone(self, images: np.ndarray) -> np.ndarray:
        return self.backend._run_backbone(images)

    def transformer(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.backend._run_transformer(features)


def rel(a: np.ndarray, b: np.ndarray) -> float:
    """Relative L2 error of ``a`` against ``b``."""
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / max(np.linalg.norm(np.asarray(b, np.float64)), 1e-30))


def parity_frames(data: str | None, count: int, size: tuple[int, int]) -> tuple[np.ndarray, str]:
    if data:
        from adtr_edge.data.datasets import load_batch, load_dataset
        from adtr_edge.preprocessing import PreprocessSpec

        test = load_dataset(data, "test")
        idx = np.linspace(0, len(test) - 1, min(count, len(test))).round().astype(int)
        images, _ = load_batch(test, list(dict.fromkeys(idx.tolist())), PreprocessSpec(*size))
        return images, f"{len(images)} test images of {data}"
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (count, *size, 3), dtype=np.uint8), f"{count} random frames"


def agreement(runners: dict, ref_name: str, frames: np.ndarray) -> dict:
    """Per variant: relative error against ONNX Runtime on the same folder, and score vs FP32."""
    outputs = {}
    for name, r in runners.items():
        feats, maps, scores = [], [], []
        for i in range(len(frames)):
            f = r.backbone(frames[i:i + 1])
            m, s = r.transformer(f)
            feats.append(f)
            maps.append(m)
            scores.append(s)
        outputs[name] = (np.concatenate(feats), np.concatenate(maps), np.concatenate(scores))
    table = {}
    for name, (f, m, s) in outputs.items():
        label, runtime = name.split(" / ")
        same = outputs[f"{label} / onnxruntime"]
        row = {"score_rel_vs_fp32": rel(s, outputs[ref_name][2])}
        if runtime != "onnxruntime":
            row.update(features_rel=rel(f, same[0]), map_rel=rel(m, same[1]), score_rel=rel(s, same[2]),
                       score_max_abs=float(np.abs(s - same[2]).max()))
        table[name] = row
    return table


def speed(runners: dict, ref_name: str, frame: np.ndarray, rounds: int, iters: int) -> dict:
    results = {}
    for part in PARTS:
        calls = {}
        for name, r in runners.items():
            feats = r.backbone(frame)
            calls[name] = {"backbone": lambda r=r: r.backbone(frame),
                           "transformer": lambda r=r, f=feats: r.transformer(f),
                           "end to end": lambda r=r: r.transformer(r.backbone(frame))}[part]
        # two warm-up calls each: OpenVINO and ONNX Runtime both allocate on the first calls
        wall, cpu = interleaved_wall_cpu(calls, rounds, iters, warmup=2)
        results[part] = {n: {"wall_ms": float(np.median(wall[n])), "cpu_ms": float(np.median(cpu[n]))} for n in calls}
        print(f"{part}: timed", flush=True)
    return results


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", help="LABEL=FOLDER, each an export or quantize folder")
    ap.add_argument("--reference", type=Path, required=True, help="the FP32 export folder (ONNX Runtime on it is the 1.00x)")
    ap.add_argument("--data", default=None, help="dataset whose test images are used for the agreement check")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--runtimes", default="onnxruntime,openvino,openvino-static",
                    help="which to run (ONNX Runtime always runs: it is the reference)")
    scripts.add_common_args(ap)
    args, threads = scripts.parse_and_start(ap, argv)
    import onnxruntime as ort

    wanted = {r.strip() for r in args.runtimes.split(",") if r.strip()}
    unknown = wanted - {"onnxruntime", "openvino", "openvino-static"}
    if unknown:
        sys.exit(f"--runtimes {args.runtimes!r}: choose from onnxruntime, openvino, openvino-static")
    modes = tuple(m for m in ((False, "openvino"), (True, "openvino static")) if m[1].replace(" ", "-") in wanted)
    if modes:
        import openvino as ov

        print(f"openvino {ov.__version__}, ", end="")
    print(f"onnxruntime {ort.__version__}, {threads} thread(s), batch 1\n")
    folders = {"fp32": args.reference}
    for item in args.folders:
        label, sep, path = item.partition("=")
        if not sep or not label or "/" in label:
            sys.exit(f"{item!r}: give each folder as LABEL=FOLDER")
        folders[label] = Path(path)
    ref_name = "fp32 / onnxruntime"
    runners, failed = {}, {}
    for label, folder in folders.items():
        runners[f"{label} / onnxruntime"] = OrtGraphs(folder, threads)
        for static, runtime in modes:
            try:
                runners[f"{label} / {runtime}"] = OpenVinoGraphs(folder, threads, static)
            except RuntimeError as e:  # OpenVINO's compile errors are RuntimeErrors with a multi-line trace
                lines = [x for x in str(e).splitlines() if x.strip()]
                failed[f"{label} / {runtime}"] = lines[-1] if lines else repr(e)
    for name, why in failed.items():
        print(f"{name}: OpenVINO cannot compile it: {why}")

    spec_size = runners[ref_name].backend.meta.input_size
    frames, what = parity_frames(args.data, args.images, tuple(spec_size))
    agree = agreement(runners, ref_name, frames)
    print(f"\nAgreement on {what} (relative L2 error):\n")
    print("| variant | features vs ONNX Runtime, same folder | map vs ONNX Runtime | score vs ONNX Runtime (max abs) | score vs FP32 ONNX Runtime |")
    print("|---|---|---|---|---|")
    for name, row in agree.items():
        same = (f"{row['features_rel']:.2e} | {row['map_rel']:.2e} | {row['score_rel']:.2e} ({row['score_max_abs']:.3g})"
                if "features_rel" in row else "(itself) | | ")
        print(f"| {name} | {same} | {row['score_rel_vs_fp32']:.2e} |")

    times = speed(runners, ref_name, frames[:1], args.rounds, args.iters)
    print(f"\nSpeed, batch 1, {threads} thread(s), median ms wall (CPU time) and speed vs {ref_name} (wall / CPU):\n")
    print("| variant | " + " | ".join(PARTS) + " |")
    print("|---|" + "---|" * len(PARTS))
    for name in runners:
        cells = []
        for part in PARTS:
            t, base = times[part][name], times[part][ref_name]
            cells.append(f"{t['wall_ms']:.1f} ({t['cpu_ms']:.1f}) = {base['wall_ms'] / t['wall_ms']:.2f}x / {base['cpu_ms'] / t['cpu_ms']:.2f}x")
        print(f"| {name} | " + " | ".join(cells) + " |")
    return scripts.finish(args, {"command": " ".join(["python", *argv]), "threads": threads, "folders": {k: str(v) for k, v in folders.items()},
                                 "failed": failed, "agreement": agree, "agreement_frames": what, "speed": times})


if __name__ == "__main__":
    sys.exit(main(sys.argv))
