"""The Mahalanobis head's per-location MatMul in INT8 on ONNX Runtime: what it saves, what it costs.

    python benchmarks/int8_head.py CPU_FOLDER --reference FP32_FOLDER --out DIR
        [--data DATASET --split val|test|all] [--weight-bits 7] [--threads 1] [--rounds 15] [--iters 3]

The head whitens each of the 256 locations' residual with its own 176 x 176 matrix
(``head.residual_whiten``, 32 MB of FP32 read per frame, about a fifth of the transformer's time).
This script rewrites that one MatMul of a folder whose head is float (a ``--target cpu`` folder
made before section 11, a ``--graphs backbone`` one, or an FP32 export) with
``adtr_edge.int8.int8_head``, the rewrite ``quantize --target cpu`` now applies (a copy in
``--out``; the folder itself is read only); ``--weight-bits 8`` tries full-range weights, which
AVX2's int16 pair sums can saturate (docs section 4.3).
Then, with ONNX Runtime, one thread, batch 1, interleaved: the transformer alone and end to end,
the rewritten folder against the folder it came from and the FP32 reference (wall and CPU time,
medians); the whitened residual's and the score's relative error against the source folder; and,
with ``--data``, image / pixel AUROC of all three on ``--split``.
Figures: docs/benchmarks.md section 11.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from adtr_edge.bench import scripts
from adtr_edge.bench.timing import interleaved_wall_cpu
from adtr_edge.int8 import int8_head
from adtr_edge.fileio import sha256_file, write_json_atomic
from adtr_edge.runtime.loading import load_backend

WHITEN = "head.residual_whiten"


def build(src: Path, out: Path, weight_bits: int) -> Path:
    """A copy of ``src`` whose transformer has the INT8 head (manifest hashes updated)."""
    import json

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src, out)
    model = onnx.load(str(src / "transformer.onnx"))
    if int8_head.has_int8_head(model):
        raise SystemExit(f"{src}: its head is INT8 already (a --target cpu folder made since section 11); give one with the float head")
    if not int8_head.quantize_whitening(model, weight_bits):
        raise SystemExit(f"{src}: no per-location whitening MatMul in the head (not a Mahalanobis head)")
    onnx.save(model, str(out / "transformer.onnx"))
    manifest = json.loads((out / "manifest.json").read_text())
    sha = sha256_file(out / "transformer.onnx")
    manifest["graphs"]["transformer"].update(sha256=sha, graph_sha256=sha)
    write_json_atomic(out / "manifest.json", manifest)
    return out


def whitened(folder: Path, frames: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """(whitened residual, score) of ``folder`` on ``frames``: the head MatMul's output exposed as a graph output."""
    model = onnx.load(str(folder / "transformer.onnx"))
    outs = [n.output[0] for n in model.graph.node if list(n.input[1:2]) == [WHITEN] or n.name.endswith(int8_head.SUFFIX + "/out")]
    model.graph.output.append(helper.make_tensor_value_info(outs[0], TensorProto.FLOAT, None))
    backbone, head = scripts.ort_session(folder / "backbone.onnx", threads), scripts.ort_session(model, threads)
    res, scores = [], []
    for i in range(len(frames)):
        f = backbone.run(None, {"images": frames[i:i + 1]})[0]
        r = head.run([outs[0], "score"], {"features": f})
        res.append(r[0])
        scores.append(r[1].reshape(-1))
    return np.concatenate(res, axis=1), np.concatenate(scores)


def rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="a --target cpu folder (quantize or quantize-matched)")
    ap.add_argument("--reference", type=Path, required=True, help="the FP32 export folder")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", default=None)
    ap.add_argument("--split", choices=("all", "val", "test"), default="val")
    ap.add_argument("--weight-bits", type=int, default=7, choices=(7, 8))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--iters", type=int, default=3)
    scripts.add_common_args(ap)
    args, threads = scripts.parse_and_start(ap, argv)
    head8 = build(args.folder, args.out / "onnx-int8-cpu-head8", args.weight_bits)
    forms = {"fp32": args.reference, "cpu": args.folder, "cpu + int8 head": head8}
    backends = {k: load_backend(v, "onnxruntime", intra_op_threads=threads).activate() for k, v in forms.items()}
    results: dict = {"command": " ".join(["python", *argv]), "threads": threads, "weight_bits": args.weight_bits}

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (8, *backends["fp32"].meta.input_size, 3), dtype=np.uint8)
    if args.data:
        from adtr_edge.data.datasets import load_batch, load_dataset
        from adtr_edge.preprocessing import PreprocessSpec

        test = load_dataset(args.data, "test")
        frames, _ = load_batch(test, list(range(0, len(test), max(1, len(test) // 16)))[:16], PreprocessSpec(*backends["fp32"].meta.input_size))
    r_src, s_src = whitened(args.folder, frames, threads)
    r_new, s_new = whitened(head8, frames, threads)
    norm_src, norm_new = np.linalg.norm(r_src, axis=-1), np.linalg.norm(r_new, axis=-1)
    results["error"] = {"frames": len(frames), "whitened_residual_rel": rel(r_new, r_src), "location_norm_rel": rel(norm_new, norm_src),
                        "score_rel": rel(s_new, s_src)}
    print("error of the INT8 head against the FP32 head on the same backbone:", results["error"], flush=True)

    frame = frames[:1]
    parts = {}
    for part in ("transformer", "end to end"):
        calls = {}
        for k, b in backends.items():
            feats = b.run_backbone(frame)
            calls[k] = (lambda b=b, f=feats: b._run_transformer(f)) if part == "transformer" else (lambda b=b: b.infer(frame))
        wall, cpu = interleaved_wall_cpu(calls, args.rounds, args.iters, warmup=2)
        parts[part] = {k: {"wall_ms": float(np.median(wall[k])), "cpu_ms": float(np.median(cpu[k]))} for k in calls}
    results["speed"] = parts
    print("\n| form | transformer ms wall (CPU) | end to end ms wall (CPU) | speed vs FP32 end to end (wall / CPU) |\n|---|---|---|---|")
    for k in forms:
        t, e, base = parts["transformer"][k], parts["end to end"][k], parts["end to end"]["fp32"]
        print(f"| {k} | {t['wall_ms']:.1f} ({t['cpu_ms']:.1f}) | {e['wall_ms']:.1f} ({e['cpu_ms']:.1f}) | "
              f"{base['wall_ms'] / e['wall_ms']:.2f}x / {base['cpu_ms'] / e['cpu_ms']:.2f}x |")

    if args.data:
        from adtr_edge.data.datasets import validation_split
        from adtr_edge.evaluation.evaluate import backend_predictor, report_for, score_imageset
        from adtr_edge.preprocessing import PreprocessSpec

        test = load_dataset(args.data, "test")
        if args.split != "all":
            val_part, test_part = validation_split(test)
            test = test.subset(val_part if args.split == "val" else test_part)
        spec = PreprocessSpec(*backends["fp32"].meta.input_size)
        acc = {}
        for k, b in backends.items():
            r = report_for(score_imageset(backend_predictor(b), test, spec, progress=False), None)
            acc[k] = {x: r[x] for x in ("image_auroc", "pixel_auroc", "aupro")}
            print(k, acc[k], flush=True)
        results["accuracy"] = {"split": args.split, "images": len(test), **acc}
        ref = acc["fp32"]
        print(f"\n| form ({args.split}, {len(test)} images) | image AUROC | pixel AUROC | AUPRO | cost vs FP32 (points) |\n|---|---|---|---|---|")
        for k, r in acc.items():
            print(f"| {k} | {r['image_auroc']:.4f} | {r['pixel_auroc']:.4f} | {r['aupro']:.4f} | "
                  f"{(r['image_auroc'] - ref['image_auroc']) * 100:+.2f} / {(r['pixel_auroc'] - ref['pixel_auroc']) * 100:+.2f} |")
    return scripts.finish(args, results)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
