"""The GPU benchmark: PyTorch CUDA (fp32, fp16/bf16 autocast), ONNX Runtime CUDA, TensorRT engines,
and cuda-python host<->device copies, on the default model. Each part runs only where its library
and a GPU answer, and is otherwise recorded as skipped with the reason.

    python benchmarks/gpu.py --out runs/gpu-bench [--batch 1,4,8] [--iters 30] [--budget-s 420]

Finishes within --budget-s (default 7 minutes; parts that would start after it are skipped) and
writes <out>/results.json. Host latency (wall clock, copies included) and device time (CUDA events)
are reported separately. No CUDA graphs anywhere: these are the plain enqueue costs.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from adtr_edge.bench import BenchSettings, Target, bench_target, camera_frame, scripts, summarize
from adtr_edge.config import ModelConfig
from adtr_edge.fileio import write_json_atomic
from adtr_edge.metadata import BACKBONE, TRANSFORMER
from adtr_edge.preprocessing import PreprocessSpec, prepare_batch


def skipped(reason: str) -> dict:
    print(f"  skipped: {reason}", flush=True)
    return {"status": "skipped", "reason": reason}


def torch_cuda(ckpt: Path, batches, iters: int) -> dict:
    try:
        import torch
    except ImportError as e:
        return skipped(f"torch does not import ({e})")
    if not torch.cuda.is_available():
        return skipped(f"torch {torch.__version__}: no CUDA device (torch.cuda.is_available() is False)")
    from adtr_edge.train.checkpoint import load_checkpoint

    model, _ = load_checkpoint(ckpt, device="cuda")
    graph = model.transformer_graph()
    spec = PreprocessSpec(height=model.cfg.input_size[0], width=model.cfg.input_size[1])
    modes = {"fp32": None, "fp16 autocast": torch.float16}
    if torch.cuda.is_bf16_supported():
        modes["bf16 autocast"] = torch.bfloat16
    out = {"status": "ok", "device": torch.cuda.get_device_name(0), "modes": {}}
    for mode, dtype in modes.items():
        res = {}
        for b in batches:
            host = torch.from_numpy(prepare_batch([camera_frame()] * b, spec)).pin_memory()
            ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
            samples = {"host_total": [], BACKBONE + "_gpu": [], TRANSFORMER + "_gpu": []}
            for i in range(iters + 5):
                t0 = time.perf_counter()
                with torch.inference_mode(), torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                    x = host.to("cuda", non_blocking=True)
                    ev[0].record()
                    feats = model.backbone(x)
                    ev[1].record()
                    ev[2].record()
                    amap, score = graph(feats)
                    ev[3].record()
                    amap.float().cpu(), score.float().cpu()
                torch.cuda.synchronize()
                if i >= 5:  # warm-up: cuDNN autotuning, allocator growth
                    samples["host_total"].append((time.perf_counter() - t0) * 1e3)
                    samples[BACKBONE + "_gpu"].append(ev[0].elapsed_time(ev[1]))
                    samples[TRANSFORMER + "_gpu"].append(ev[2].elapsed_time(ev[3]))
            st = {k: summarize(v) for k, v in samples.items()}
            res[str(b)] = {"ms": st, "throughput_ips": round(b * 1e3 / st["host_total"]["mean"], 2)}
            print(f"  torch {mode} batch {b}: host {st['host_total']['mean']:.2f} ms, backbone gpu "
                  f"{st[BACKBONE + '_gpu']['mean']:.2f} ms, transformer gpu {st[TRANSFORMER + '_gpu']['mean']:.2f} ms", flush=True)
        out["modes"][mode] = res
    out["max_memory_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def ort_cuda(export: Path, batches, iters: int) -> dict:
    try:
        import onnxruntime as ort
    except ImportError as e:
        return skipped(f"onnxruntime does not import ({e})")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return skipped(f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: "
                       f"{', '.join(ort.get_available_providers())}; install onnxruntime-gpu)")
    from adtr_edge.runtime.loading import load_backend

    backend = load_backend(export, "onnxruntime", providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    settings = BenchSettings(batches=tuple(batches), warmup=5, iters=iters)
    target = Target(export, "onnx", "onnxruntime", "fp32")
    backend.activate()
    if "CUDAExecutionProvider" not in backend.providers:
        return skipped(f"CUDAExecutionProvider did not initialise (session providers {backend.providers})")
    backend.deactivate()
    res = bench_target(target, settings)  # default providers: CUDA first where present
    return dict(res, status="ok")


def tensorrt_engines(export: Path, out: Path, batches, iters: int, deadline: float) -> dict:
    from adtr_edge.runtime.loading import tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        return skipped(why)
    from adtr_edge.engine.builder import BuildOptions, build_engines
    from adtr_edge.engine.manifest import Profile

    results = {"status": "ok", "engines": {}}
    for precision in ("fp16", "fp32"):
        if time.monotonic() > deadline:
            results["engines"][precision] = skipped("time budget spent")
            continue
        t0 = time.monotonic()
        report = build_engines(export, out / "engines", name=f"default-{precision}",
                               options=BuildOptions(precision=precision, profile=Profile(1, 1, max(batches))), log=lambda m: None)
        build_s = time.monotonic() - t0
        target = Target(report.folder, "tensorrt", "tensorrt", precision)
        res = bench_target(target, BenchSettings(batches=tuple(batches), warmup=10, iters=iters))
        res["build_s"] = round(build_s, 1)
        results["engines"][precision] = res
        for b in res["batches"]:
            if b.get("status") == "ok":
                st = b["stages_ms"]
                print(f"  tensorrt {precision} batch {b['batch']}: host total {st['total']['mean']:.2f} ms, backbone gpu "
                      f"{st['backbone_gpu']['mean']:.2f} ms, transformer gpu {st['transformer_gpu']['mean']:.2f} ms, "
                      f"{b['throughput_ips']:.0f} img/s", flush=True)
    return results


def cuda_copies(batches, iters: int) -> dict:
    from adtr_edge.cuda import gpu_available, make_cuda_runtime

    ok, why = gpu_available()
    if not ok:
        return skipped(why)
    cu = make_cuda_runtime()  # cuda-python, else pycuda (JetPack images may have only pycuda)
    stream = cu.create_stream()
    start, mid, end = cu.create_event(), cu.create_event(), cu.create_event()
    out = {"status": "ok", "device": cu.device_info().name, "batches": {}}
    try:
        for b in batches:
            host, hptr = cu.pinned_array((b, 256, 256, 3), np.uint8)
            back, bptr = cu.pinned_array((b, 1, 256, 256), np.float32)
            dev_in, dev_out = cu.malloc(host.nbytes), cu.malloc(back.nbytes)
            host[:] = 7
            samples = {"h2d_images_gpu": [], "d2h_map_gpu": [], "round_trip_host": []}
            for i in range(iters + 3):
                t0 = time.perf_counter()
                cu.record(start, stream)
                cu.copy_to_device(dev_in, host.ctypes.data, host.nbytes, stream)
                cu.record(mid, stream)
                cu.copy_to_host(back.ctypes.data, dev_out, back.nbytes, stream)
                cu.record(end, stream)
                cu.synchronize(stream)
                if i >= 3:
                    samples["round_trip_host"].append((time.perf_counter() - t0) * 1e3)
                    samples["h2d_images_gpu"].append(cu.elapsed_ms(start, mid))
                    samples["d2h_map_gpu"].append(cu.elapsed_ms(mid, end))
            st = {k: summarize(v) for k, v in samples.items()}
            out["batches"][str(b)] = {"bytes_h2d": host.nbytes, "bytes_d2h": back.nbytes, "ms": st}
            print(f"  copies batch {b}: H2D {host.nbytes / 2**20:.1f} MiB {st['h2d_images_gpu']['mean']:.3f} ms, "
                  f"D2H {back.nbytes / 2**20:.1f} MiB {st['d2h_map_gpu']['mean']:.3f} ms", flush=True)
            for p in (dev_in, dev_out):
                cu.free(p)
            for p in (hptr, bptr):
                cu.free_host(p)
    finally:
        for e in (start, mid, end):
            cu.destroy_event(e)
        cu.destroy_stream(stream)
    return out


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--batch", default="1,4,8")
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--work", type=Path, default=scripts.DEFAULT_WORK)
    args = ap.parse_args(argv[1:])
    scripts.start(argv)
    started = time.monotonic()
    deadline = started + args.budget_s
    batches = [int(x) for x in args.batch.split(",")]
    ckpt, export = scripts.make_export(ModelConfig(), args.work)
    results = {"command": " ".join(["python", *argv]), "export": str(export), "batches": batches, "parts": {}}
    parts = {
        "cuda_python_copies": lambda: cuda_copies(batches, args.iters),
        "torch_cuda": lambda: torch_cuda(ckpt, batches, args.iters),
        "onnxruntime_cuda": lambda: ort_cuda(export, batches, args.iters),
        "tensorrt": lambda: tensorrt_engines(export, args.out, batches, args.iters, deadline),
    }
    for name, fn in parts.items():
        print(f"{name}:", flush=True)
        if time.monotonic() > deadline:
            results["parts"][name] = skipped(f"time budget of {args.budget_s:.0f} s spent")
            continue
        try:
            results["parts"][name] = fn()
        except Exception as e:  # one failing part must not lose the others' numbers
            traceback.print_exc()
            results["parts"][name] = {"status": "failed", "reason": f"{e.__class__.__name__}: {e}"}
        write_json_atomic(args.out / "results.json", results)  # keep what we have if a later part hangs
    results["wall_s"] = round(time.monotonic() - started, 1)
    write_json_atomic(args.out / "results.json", results)
    print(f"wrote {args.out / 'results.json'} ({results['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
