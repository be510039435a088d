"""ONNX Runtime vs PyTorch eager, INT8 Q/DQ vs FP32, FLOPs and achieved FLOP/s vs the GEMM peak.

    python benchmarks/speed.py [--batch 1,8] [--rounds 5] [--iters 5] [--threads N] [--json FILE]

Builds (once, cached under runs/bench-models/) the default model: Lite0 at 256x256, stages 1,2,3,
4+4 transformer layers, ImageNet backbone weights, untrained transformer (speed does not depend on
training), exports it, and quantises it to Q/DQ INT8 when adtr_edge.int8.quantize exists.
Every comparison is interleaved (A, B, A, B, ...) so machine noise hits both sides alike; the
ratios use medians.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from adtr_edge.bench import camera_frame, count_graph_flops, interleaved, measure_gemm_peak, scripts
from adtr_edge.config import ModelConfig
from adtr_edge.metadata import BACKBONE, GRAPHS, TRANSFORMER
from adtr_edge.preprocessing import PreprocessSpec, prepare_batch


def torch_runners(ckpt: Path, images: np.ndarray, threads: int):
    import torch

    from adtr_edge.train.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    model, _ = load_checkpoint(ckpt)
    graph = model.transformer_graph()
    x = torch.from_numpy(images)
    with torch.inference_mode():
        feats = model.backbone(x)

    def run(fn):
        def call():
            with torch.inference_mode():
                return fn()
        return call

    return {BACKBONE: run(lambda: model.backbone(x)), TRANSFORMER: run(lambda: graph(feats)),
            "end to end": run(lambda: graph(model.backbone(x)))}


def ort_runners(folder: Path, images: np.ndarray, threads: int):
    sb = scripts.ort_session(folder / "backbone.onnx", threads)
    st = scripts.ort_session(folder / "transformer.onnx", threads)
    feats = sb.run(None, {"images": images})[0]
    return {BACKBONE: lambda: sb.run(None, {"images": images}),
            TRANSFORMER: lambda: st.run(None, {"features": feats}),
            "end to end": lambda: st.run(None, {"features": sb.run(None, {"images": images})[0]})}


def median(x):
    return float(np.median(x))


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--iters", type=int, default=5)
    scripts.add_common_args(ap)
    args, threads = scripts.parse_and_start(ap, argv)
    cfg = ModelConfig()
    ckpt, export = scripts.make_export(cfg, args.work)
    int8 = scripts.make_int8(export, args.work)
    print(f"model: {cfg.backbone} {cfg.input_size[0]}x{cfg.input_size[1]}, stages {cfg.stages}, "
          f"{cfg.num_encoder_layers}+{cfg.num_decoder_layers} layers, d_model {cfg.d_model}; threads {threads}")
    print(f"export: {export}" + (f"; int8 Q/DQ: {int8}" if int8 else "; int8: adtr_edge.int8.quantize not present, skipped"))
    peak_before = measure_gemm_peak(1024, threads=threads)
    flops = {"fp32": {g: count_graph_flops(export / f"{g}.onnx").total for g in GRAPHS}}
    if int8:
        flops["int8"] = {g: count_graph_flops(int8 / f"{g}.onnx").total for g in GRAPHS}
    results = {"config": cfg.to_dict(), "threads": threads, "flops": flops, "batches": {}}
    spec = PreprocessSpec(height=cfg.input_size[0], width=cfg.input_size[1])
    for b in (int(x) for x in args.batch.split(",")):
        images = prepare_batch([camera_frame()] * b, spec)
        variants = {}
        for part, fn in ort_runners(export, images, threads).items():
            variants[f"onnxruntime fp32 / {part}"] = fn
        for part, fn in torch_runners(ckpt, images, threads).items():
            variants[f"torch eager fp32 / {part}"] = fn
        if int8:
            for part, fn in ort_runners(int8, images, threads).items():
                variants[f"onnxruntime int8 / {part}"] = fn
        print(f"\nbatch {b}: {args.rounds} rounds x {args.iters} iterations per variant, interleaved", flush=True)
        samples = interleaved(variants, args.rounds, args.iters, warmup=2)
        print(scripts.STATS_HEADER)
        for name, s in samples.items():
            print(scripts.stats_row(name, s, b))
        ratios = {}
        for part in (BACKBONE, TRANSFORMER, "end to end"):
            ort_ms = median(samples[f"onnxruntime fp32 / {part}"])
            ratios[f"torch / onnxruntime, {part}"] = median(samples[f"torch eager fp32 / {part}"]) / ort_ms
            if int8:
                ratios[f"fp32 / int8 (onnxruntime), {part}"] = ort_ms / median(samples[f"onnxruntime int8 / {part}"])
        print("\n| ratio of medians (>1: the second is faster) | value |\n|---|---|")
        for k, v in ratios.items():
            print(f"| {k} | {v:.2f} |")
        achieved = {}
        for prec, folder in (("fp32", export), ("int8", int8)):
            if not folder:
                continue
            for g in GRAPHS:
                ms = median(samples[f"onnxruntime {prec} / {g}"])
                achieved[f"{prec} {g}"] = flops[prec][g] * b / (ms / 1e3) / 1e9
            ms = median(samples[f"onnxruntime {prec} / end to end"])
            achieved[f"{prec} end to end"] = sum(flops[prec].values()) * b / (ms / 1e3) / 1e9
        results["batches"][str(b)] = {"samples_ms": {k: [round(x, 4) for x in v] for k, v in samples.items()},
                                      "median_ms": {k: round(median(v), 4) for k, v in samples.items()},
                                      "ratios": {k: round(v, 4) for k, v in ratios.items()},
                                      "achieved_gflops": {k: round(v, 3) for k, v in achieved.items()}}
        print(f"\n| onnxruntime graph | GFLOPs per frame | achieved GFLOP/s (batch {b}) | of GEMM peak |\n|---|---|---|---|")
        for k, v in achieved.items():
            prec, part = k.split(" ", 1)
            f = sum(flops[prec].values()) if part == "end to end" else flops[prec][part]
            print(f"| {k} | {f / 1e9:.3f} | {v:.1f} | {100 * v / peak_before['gflops']:.0f}% |")
    peak_after = measure_gemm_peak(1024, threads=threads)
    results["gemm_peak"] = {"before": peak_before, "after": peak_after}
    print(f"\nfloat32 GEMM peak (onnxruntime MatMul 1024^3, {threads} threads): {peak_before['gflops']} GFLOP/s before, "
          f"{peak_after['gflops']} after the run (a large gap means the machine was busy)")
    print("FLOPs: 2 x MACs of Conv/MatMul/Gemm counted from the ONNX graphs; element-wise ops, Softmax, LayerNorm, "
          "Resize, pooling ignored. INT8 graphs count the same MACs (done in int8 where quantised).")
    return scripts.finish(args, results)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
