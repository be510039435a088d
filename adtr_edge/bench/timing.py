"""Timing: batches of camera frames through the runtime's one predict path (Detector), stage
statistics, achieved FLOP/s, and the whole run (``run_bench``)."""

from __future__ import annotations

import datetime as _dt
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import AdtrError
from ..metadata import GRAPHS
from ..runtime.backends.base import Backend
from ..runtime.detector import Detector
from .flops import FLOPS_NOTE, TORCH_FLOPS_NOTE
from .machine import PeakRss, _r, gpu_memory_used_mb, machine_info, measure_gemm_peak
from .targets import Target, TorchBackend, graph_flops, open_backend, resolve_targets

SCHEMA = "adtr-edge-bench/1"
DEFAULT_FRAME = (480, 640)  # (H, W) of the synthetic camera frame that preprocessing resizes
STAGES = ("preprocess", "backbone", "transformer", "postprocess", "total")



def summarize(samples_ms: Iterable[float]) -> dict:
    a = np.asarray(list(samples_ms), dtype=np.float64)
    if a.size == 0:
        return {"count": 0, "mean": None, "p50": None, "p95": None, "min": None}
    return {"count": int(a.size), "mean": round(float(a.mean()), 4), "p50": round(float(np.percentile(a, 50)), 4),
            "p95": round(float(np.percentile(a, 95)), 4), "min": round(float(a.min()), 4)}


def camera_frame(frame_size: tuple[int, int] = DEFAULT_FRAME, seed: int = 0) -> np.ndarray:
    """A textured BGR frame of camera size (noise, so the resize touches real data)."""
    h, w = frame_size
    if h < 1 or w < 1:
        raise AdtrError(f"frame size {frame_size}: both sides must be >= 1")
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def time_one_batch(detector: Detector, frames: list[np.ndarray]) -> dict[str, float]:
    """Milliseconds of each stage for one batch of camera frames, plus ``total`` wall time.

    Through the runtime's own path (``Detector``: preprocess -> infer -> postprocess), then what a
    viewer does next: each map resized onto its frame (counted in ``postprocess``)."""
    t0 = time.perf_counter()
    detections = detector(frames)
    t1 = time.perf_counter()
    for d in detections:
        d.map_for_frame()
    t2 = time.perf_counter()
    timings = dict(detections[0].timings)
    timings["postprocess"] = timings.get("postprocess", 0.0) + (t2 - t1) * 1e3
    timings["total"] = (t2 - t0) * 1e3
    return timings


def time_batches(backend: Backend, batch: int, *, warmup: int, iters: int, frame_size=DEFAULT_FRAME) -> dict:
    """Warm up, then time ``iters`` batches of ``batch`` camera frames: per-stage stats and throughput."""
    if batch < 1 or iters < 1 or warmup < 0:
        raise AdtrError(f"batch >= 1, iters >= 1 and warmup >= 0 are required (got {batch}, {iters}, {warmup})")
    frame = camera_frame(frame_size)
    frames = [frame] * batch
    detector = Detector(backend)  # activates the backend (a no-op when it is active); the caller closes it
    for _ in range(warmup):
        time_one_batch(detector, frames)
    samples: dict[str, list[float]] = {}
    for _ in range(iters):
        for k, v in time_one_batch(detector, frames).items():
            samples.setdefault(k, []).append(v)
    total_s = sum(samples["total"]) / 1e3
    stages = {k: summarize(v) for k, v in samples.items()}
    return {"batch": batch, "iters": iters, "warmup": warmup, "stages_ms": stages,
            "per_image_ms": round(stages["total"]["mean"] / batch, 4),
            "throughput_ips": round(batch * iters / total_s, 3) if total_s > 0 else None}


def achieved(flops: dict | None, stages_ms: dict, batch: int, peak_gflops: float | None) -> dict | None:
    """GFLOP/s achieved per graph and end to end (device time where the backend reports it)."""
    if not flops:
        return None
    out = {}
    for g in GRAPHS:
        st = stages_ms.get(f"{g}_gpu") or stages_ms.get(g)
        if st and st["mean"]:
            out[g] = round(flops[g]["total"] * batch / (st["mean"] / 1e3) / 1e9, 3)
    compute_ms = sum((stages_ms.get(f"{g}_gpu") or stages_ms[g])["mean"] for g in GRAPHS)
    out["model"] = round(flops["per_frame"] * batch / (compute_ms / 1e3) / 1e9, 3) if compute_ms else None
    if peak_gflops and out["model"] is not None:
        out["fraction_of_gemm_peak"] = round(out["model"] / peak_gflops, 4)
    return out


def interleaved(variants: dict[str, Callable[[], object]], rounds: int, iters: int, warmup: int = 1) -> dict[str, list[float]]:
    """Time several callables A, B, C, A, B, C, ... so that machine noise (other processes, clock
    changes) hits every variant alike; returns the milliseconds of each call per variant."""
    return interleaved_wall_cpu(variants, rounds, iters, warmup)[0]


def interleaved_wall_cpu(variants: dict[str, Callable[[], object]], rounds: int, iters: int,
                         warmup: int = 1) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """``interleaved``, with this process's CPU time of each call as well: (wall ms, CPU ms) per
    variant. On one thread CPU time is what the work costs; wall time adds the waits for a core
    when other processes share the machine."""
    if rounds < 1 or iters < 1:
        raise AdtrError(f"rounds and iters must be >= 1, got {rounds}, {iters}")
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    wall: dict[str, list[float]] = {name: [] for name in variants}
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            for _ in range(iters):
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                cpu[name].append((time.process_time() - c0) * 1e3)
                wall[name].append((time.perf_counter() - t0) * 1e3)
    return wall, cpu


@dataclass
class BenchSettings:
    batches: tuple[int, ...] = (1, 4, 8)
    warmup: int = 3
    iters: int = 20
    threads: int | None = None
    frame_size: tuple[int, int] = DEFAULT_FRAME
    gemm_n: int = 1024

    def validate(self) -> None:
        if not self.batches or min(self.batches) < 1:
            raise AdtrError(f"--batch {','.join(map(str, self.batches))}: batch sizes must be >= 1")
        if self.iters < 1:
            raise AdtrError(f"--iters {self.iters}: must be >= 1")
        if self.warmup < 0:
            raise AdtrError(f"--warmup {self.warmup}: must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise AdtrError(f"--threads {self.threads}: must be >= 1")


def bench_target(target: Target, settings: BenchSettings, peak_gflops: float | None = None,
                 log: Callable[[str], None] | None = None) -> dict:
    """One target at every batch size; a skipped entry (with its reason) when it cannot run here."""
    entry = {"model_dir": str(target.path), "kind": target.kind, "backend": target.backend, "precision": target.precision,
             "label": target.label}
    if not target.available:
        return dict(entry, status="skipped", reason=target.reason)
    entry["flops"] = graph_flops(target)
    gpu_before = gpu_memory_used_mb()
    with PeakRss() as mem:
        backend = open_backend(target, settings.threads)
        try:
            backend.activate()
            entry["providers"] = list(getattr(backend, "providers", []) or [])
            if entry["flops"] is None and isinstance(backend, TorchBackend):
                counted = backend.count_flops()
                entry["flops"] = {g: {"total": counted[g], "note": TORCH_FLOPS_NOTE} for g in GRAPHS}
                entry["flops"]["per_frame"] = sum(counted.values())
            gpu_active = gpu_memory_used_mb()
            results = []
            max_batch = getattr(backend, "max_batch", None)
            for b in settings.batches:
                if max_batch is not None and b > max_batch:
                    results.append({"batch": b, "status": "skipped", "reason": f"engine profile max batch is {max_batch}"})
                    continue
                if log:
                    log(f"{target.label}: batch {b}, {settings.warmup} warm-up + {settings.iters} timed")
                r = time_batches(backend, b, warmup=settings.warmup, iters=settings.iters, frame_size=settings.frame_size)
                r["status"] = "ok"
                r["achieved_gflops"] = achieved(entry["flops"], r["stages_ms"], b, peak_gflops)
                results.append(r)
        finally:
            backend.deactivate()
    entry["batches"] = results
    entry["memory"] = mem.to_dict()
    if gpu_before is not None:
        entry["memory"]["gpu_used_before_mb"] = _r(gpu_before)
        entry["memory"]["gpu_used_active_mb"] = _r(gpu_active)
    entry["status"] = "ok"
    return entry


def run_bench(model_dirs: Sequence[str | Path], backend: str = "all", settings: BenchSettings | None = None,
              log: Callable[[str], None] | None = None, command: str | None = None) -> dict:
    """The whole benchmark: GEMM peak, then every target at every batch size. Returns the report dict."""
    settings = settings or BenchSettings()
    settings.validate()
    targets = resolve_targets(model_dirs, backend)
    peak = measure_gemm_peak(settings.gemm_n, threads=settings.threads)
    if log:
        log(f"float32 GEMM peak: {peak['gflops']} GFLOP/s ({peak['engine']}, n={peak['n']})")
    runs = [bench_target(t, settings, peak["gflops"], log) for t in targets]
    return {
        "schema": SCHEMA,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": command or " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": machine_info(),
        "settings": {"batches": list(settings.batches), "warmup": settings.warmup, "iters": settings.iters,
                     "threads": settings.threads, "frame_size": list(settings.frame_size)},
        "gemm_peak": peak,
        "flops_note": FLOPS_NOTE,
        "runs": runs,
    }


